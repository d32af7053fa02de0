"""status report indexes

Revision ID: 0002
Revises: 0001

Covering and expression indexes for `dmp-connector status`: every figure is a GROUP BY that reads an index,
so the report stays under a second on a ledger of a million documents.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_documents_report', 'documents', ['finess_geo', 'type_code', 'state', 'reason', 'first_seen_at'])
    op.create_index('ix_documents_state_updated', 'documents', ['state', 'updated_at', 'first_attempt_at'])
    # The plain column after the expression lets SQLite (< 3.41) treat the expression index as covering.
    op.create_index('ix_documents_seen_day', 'documents',
                    [sa.text('date(first_seen_at)'), 'state', 'reason', 'first_seen_at'])
    op.create_index('ix_documents_fed_day', 'documents', [sa.text('date(fed_at)'), 'fed_at'])


def downgrade():
    for name in ('ix_documents_fed_day', 'ix_documents_seen_day', 'ix_documents_state_updated', 'ix_documents_report'):
        op.drop_index(name, table_name='documents')
