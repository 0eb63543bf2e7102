"""The body of every service's Alembic ``env.py``: raw-SQL migrations in the service's schema.

Each service keeps its version table in its own schema, so tally and notify can share
one database or live in two.
"""

from __future__ import annotations

import asyncio

from alembic import context, op
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine


def execute_all(statements: list[str]) -> None:
    """Run a migration's statements in order, one ``op.execute`` each (asyncpg prepares
    each statement, and a prepared statement holds one command)."""
    for statement in statements:
        op.execute(statement)


def run() -> None:
    config = context.config
    schema = str(config.attributes["schema"])
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None, "sqlalchemy.url is set by clameur.database.alembic_config"

    def upgrade(connection: Connection) -> None:
        # Two processes migrating at once (a service and a test run) take turns.
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:schema))"), {"schema": schema})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            version_table_schema=schema,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(upgrade)
        finally:
            await engine.dispose()

    asyncio.run(main())
