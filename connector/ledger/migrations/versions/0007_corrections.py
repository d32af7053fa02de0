"""Corrections: each document version's DMP entry and status; replacements and withdrawals journaled

Revision ID: 0007
Revises: 0006

documents: the entryUUID the version has in the DMP (the registry's, as ITI-18 gave it, else the one we minted),
its availability status there (Approved, Deprecated, Deleted), the masking codes and the CDA versionNumber it was
fed with (a masking change or an unmask is a replacement with new codes and a higher versionNumber).
submission_documents: what each journaled entry does (FEED, REPLACE, WITHDRAW) and, for a replacement, the entry
it replaces, so that a resend rebuilds the very same request. submissions: the transaction (ITI-41, ITI-57) and the
operator's or the store's reason of a withdrawal (EXI 09/10).
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('documents') as batch:
        batch.add_column(sa.Column('dmp_entry_uuid', sa.String(64)))
        batch.add_column(sa.Column('dmp_status', sa.String(16)))
        batch.add_column(sa.Column('masking', sa.String(100)))
        batch.add_column(sa.Column('cda_version', sa.Integer()))
    with op.batch_alter_table('submission_documents') as batch:
        batch.add_column(sa.Column('action', sa.String(16), nullable=False, server_default='FEED'))
        batch.add_column(sa.Column('cda_version', sa.Integer()))
        batch.add_column(sa.Column('masking', sa.String(100)))
        batch.add_column(sa.Column('replaces_version', sa.Integer()))
        batch.add_column(sa.Column('replaces_unique_id', sa.String(64)))
        batch.add_column(sa.Column('replaces_entry_uuid', sa.String(64)))
    with op.batch_alter_table('submissions') as batch:
        batch.add_column(sa.Column('kind', sa.String(16), nullable=False, server_default='ITI-41'))
        batch.add_column(sa.Column('note', sa.String(1000)))
    # What was fed before this revision is in the DMP as we sent it: Approved, under the ids we minted.
    op.execute("UPDATE documents SET dmp_status = 'Approved' WHERE state = 'FED'")
    op.execute("UPDATE documents SET dmp_entry_uuid = (SELECT sd.entry_uuid FROM submission_documents sd "
               "WHERE sd.submission_id = documents.submission_id AND sd.document_id = documents.document_id "
               "AND sd.version = documents.version) WHERE state = 'FED'")


def downgrade():
    with op.batch_alter_table('submissions') as batch:
        batch.drop_column('note')
        batch.drop_column('kind')
    with op.batch_alter_table('submission_documents') as batch:
        for column in ('replaces_entry_uuid', 'replaces_unique_id', 'replaces_version', 'masking', 'cda_version',
                       'action'):
            batch.drop_column(column)
    with op.batch_alter_table('documents') as batch:
        for column in ('cda_version', 'masking', 'dmp_status', 'dmp_entry_uuid'):
            batch.drop_column(column)
