"""Alembic environment: runs on the connection Veil hands it (see ``veil.store.db.migrate``)."""

from alembic import context

from veil.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
