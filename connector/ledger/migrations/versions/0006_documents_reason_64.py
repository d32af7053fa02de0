"""documents.reason: 64 characters, as submissions.error_code

Revision ID: 0006
Revises: 0005

A DMP error code becomes its documents' reason: XDSRepositoryDuplicateUniqueIdInMessage is 39 characters, and on
PostgreSQL settling a submission with it failed (varchar(32)) inside the sending thread, leaving its documents
SUBMITTING. Widening a varchar is a catalogue change on PostgreSQL (no rewrite, no reindex); SQLite does not
enforce VARCHAR lengths, so there is nothing to do there. Longer codes are cut at 64 by the ledger.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('documents', 'reason', type_=sa.String(64), existing_type=sa.String(32))


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('documents', 'reason', type_=sa.String(32), existing_type=sa.String(64),
                        postgresql_using='left(reason, 32)')
