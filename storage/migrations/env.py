"""Alembic environment: migrations run on the connection Store.migrate passes in."""

from alembic import context

from storage.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
