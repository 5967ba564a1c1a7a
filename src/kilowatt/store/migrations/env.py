"""Alembic environment: runs migrations on the connection the store hands over.

The store opens the connection (and, on PostgreSQL, takes an advisory lock) itself, so
several processes opening one database at once apply each migration exactly once.
"""

from __future__ import annotations

from alembic import context

from kilowatt.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
