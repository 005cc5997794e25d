"""Alembic's environment for sshexec: always online, on the connection store/migrate.py hands over."""

from alembic import context

connection = context.config.attributes["connection"]
# render_as_batch: SQLite changes a column by copying its table, and Alembic's batch mode does that for us.
context.configure(connection=connection, render_as_batch=True, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
