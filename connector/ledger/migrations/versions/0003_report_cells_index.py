"""status report: one index for all the figures

Revision ID: 0003
Revises: 0002

`dmp-connector status` reads its figures (states, reasons, sites, types, days, feeds per day) in ONE ordered
pass over ix_documents_cells instead of three passes over ix_documents_report, ix_documents_seen_day and
ix_documents_fed_day. The first two are then read by nothing and are dropped (every index slows every write);
ix_documents_fed_day stays for `status --since` (feeds since a date).
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

CELLS = [sa.text('date(first_seen_at)'), 'state', 'reason', 'finess_geo', 'type_code', sa.text('date(fed_at)'),
         'first_seen_at', 'fed_at']


def upgrade():
    op.create_index('ix_documents_cells', 'documents', CELLS)
    op.drop_index('ix_documents_report', table_name='documents')
    op.drop_index('ix_documents_seen_day', table_name='documents')


def downgrade():
    op.create_index('ix_documents_seen_day', 'documents',
                    [sa.text('date(first_seen_at)'), 'state', 'reason', 'first_seen_at'])
    op.create_index('ix_documents_report', 'documents', ['finess_geo', 'type_code', 'state', 'reason', 'first_seen_at'])
    op.drop_index('ix_documents_cells', table_name='documents')
