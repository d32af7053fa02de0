"""documents.dmp_status indexed: the status report counts the DMP entries per status (Approved, Deprecated,
Deleted) from the index, as its other figures

Revision ID: 0008
Revises: 0007
"""
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_documents_dmp_status', 'documents', ['dmp_status'])


def downgrade():
    op.drop_index('ix_documents_dmp_status', table_name='documents')
