"""Postgres: connection pools and schema migrations (Alembic, one schema per service)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from alembic import command
from alembic.config import Config

SERVICES_ROOT = Path(__file__).resolve().parent.parent / "services"


async def _init_connection(connection: asyncpg.Connection[Any]) -> None:
    # jsonb columns come and go as Python objects, encoded by orjson.
    await connection.set_type_codec(
        "jsonb",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool[Any]:
    """A pool whose connections encode and decode jsonb as Python objects."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30
    )
    assert pool is not None
    return pool


def sqlalchemy_url(dsn: str) -> str:
    """The asyncpg-driver URL Alembic needs, from a plain ``postgresql://`` DSN."""
    for scheme in ("postgresql://", "postgres://"):
        if dsn.startswith(scheme):
            return "postgresql+asyncpg://" + dsn[len(scheme) :]
    return dsn


def alembic_config(service: str, dsn: str) -> Config:
    """Alembic configuration for one service's migrations (``services/<svc>/migrations``)."""
    config = Config()
    config.set_main_option("script_location", str(SERVICES_ROOT / service / "migrations"))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    config.attributes["schema"] = service
    return config


def migrate(service: str, dsn: str) -> None:
    """Bring ``service``'s schema to the newest migration (idempotent)."""
    command.upgrade(alembic_config(service, dsn), "head")


async def migrate_async(service: str, dsn: str) -> None:
    # Alembic's async env runs its own event loop, so keep it off the caller's.
    await asyncio.to_thread(migrate, service, dsn)
