"""Our own state: documents, submissions, runs, audit trail (SQLAlchemy + Alembic)."""
