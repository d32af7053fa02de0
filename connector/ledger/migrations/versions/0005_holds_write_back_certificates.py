"""holds by document id, pending write-backs, certificate expiry

Revision ID: 0005
Revises: 0004

- `holds`: an operator's hold on a document id (and optional version), kept whether or not a run has seen it
  (an identity-vigilance hold before the first run feeds it).
- `write_back_pending`: documents whose `dmp_feed_status` row could not be written; retried by every run until
  it succeeds (`dmp-connector write-back` does it at once).
- `certificates`: the expiry of the certificates the last run loaded, so that `status --check` and the
  Prometheus file report it without loading the certificates (commands that do not send never read them).
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'holds',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('document_id', sa.String(64), nullable=False),
        sa.Column('version', sa.Integer()),  # NULL: every version
        sa.Column('held_at', sa.DateTime(), nullable=False),
        sa.UniqueConstraint('document_id', 'version', name='uq_holds_document_version'),
    )
    op.create_table(
        'write_back_pending',
        sa.Column('document_id', sa.String(64), primary_key=True),
        sa.Column('version', sa.Integer(), primary_key=True),
        sa.Column('since', sa.DateTime(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False, server_default='1'),
        sa.Column('last_error', sa.String(300)),
    )
    op.create_table(
        'certificates',
        sa.Column('purpose', sa.String(16), primary_key=True),  # auth_cli, sign
        sa.Column('not_after', sa.DateTime(), nullable=False),
        sa.Column('checked_at', sa.DateTime(), nullable=False),
    )


def downgrade():
    op.drop_table('certificates')
    op.drop_table('write_back_pending')
    op.drop_table('holds')
