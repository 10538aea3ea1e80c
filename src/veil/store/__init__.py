"""Database tables, engine and migrations (SQLAlchemy 2 + Alembic)."""
