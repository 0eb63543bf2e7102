"""Throwaway databases next to a server's: one per test session, one per bench run."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg


def database_dsn(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` on the same server."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def create_database(dsn: str, name: str) -> str:
    """Create database ``name`` next to ``dsn``'s; returns its DSN.

    ``name`` comes from the caller's own ids (letters, digits, underscores), never from input.
    """
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return database_dsn(dsn, name)


async def drop_database(dsn: str, name: str) -> None:
    """Drop database ``name`` next to ``dsn``'s, disconnecting whoever is still on it."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
