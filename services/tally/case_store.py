"""Cases in Postgres: every change and the events it announces, in one transaction.

The whole new :class:`CaseState` goes to the outbox for ``cases.v1`` (key: case id), and
the change's events (``VictoryDeclared``, ``CaseClosed``) for ``case-events.v1``.  A
change locks the case row (``FOR UPDATE``), so two operators' changes are applied one
after the other and versions never repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from clameur.events import CaseState, Event
from clameur.topics import Topics
from tally.outbox import Connection, stage


class UnknownCase(LookupError):
    """No case has this id (HTTP 404)."""


class DuplicateCase(Exception):
    """A case with this id exists already (HTTP 409)."""


Change = Callable[[CaseState, int, datetime], tuple[CaseState, list[Event]]]
"""From the current state, the case's total and the time: the next state and its events."""


class CaseStore(Protocol):
    """Where cases live; every write also stages its events for the outbox relay."""

    async def create(self, state: CaseState) -> None:
        """Store a new case; :class:`DuplicateCase` if the id is taken."""
        ...

    async def change(self, case_id: str, change: Change) -> CaseState:
        """Apply ``change`` to the current state under a lock; :class:`UnknownCase` if absent.

        Whatever ``change`` raises propagates and nothing is written.
        """
        ...


_COLUMNS = (
    "id, title, status, goal, milestones, actions, locales, default_locale, target, victory, "
    "version, updated_at, confirmation, small_count_threshold, retention_days"
)


def state_of(row: asyncpg.Record) -> CaseState:
    """The :class:`CaseState` a ``tally.cases`` row holds."""
    return CaseState(
        case_id=row["id"],
        version=row["version"],
        title=row["title"],
        status=row["status"],
        goal=row["goal"],
        milestones=tuple(row["milestones"]),
        actions=tuple(row["actions"]),
        locales=tuple(row["locales"]),
        default_locale=row["default_locale"],
        target=row["target"],
        victory=row["victory"],
        confirmation=row["confirmation"],
        small_count_threshold=row["small_count_threshold"],
        retention_days=row["retention_days"],
        updated_at=row["updated_at"],
        occurred_at=row["updated_at"],
    )


def _columns(state: CaseState) -> list[Any]:
    return [
        state.title,
        state.status.value,
        state.goal,
        list(state.milestones),
        [action.value for action in state.actions],
        list(state.locales),
        state.default_locale,
        state.target,
        state.victory.model_dump(mode="json") if state.victory is not None else None,
        state.version,
        state.updated_at,
        state.confirmation,
        state.small_count_threshold,
        state.retention_days,
    ]


class PostgresCaseStore:
    """:class:`CaseStore` over ``tally.cases`` and ``tally.outbox``.

    ``on_outbox_written`` is called after each commit (to wake the relay).
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        topics: Topics,
        *,
        on_outbox_written: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._topics = topics
        self._on_outbox_written = on_outbox_written

    async def create(self, state: CaseState) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            created = await connection.fetchval(
                """
                INSERT INTO tally.cases (title, status, goal, milestones, actions, locales, default_locale,
                                         target, victory, version, updated_at, confirmation,
                                         small_count_threshold, retention_days, created_at, id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $11, $15)
                ON CONFLICT (id) DO NOTHING
                RETURNING id
                """,
                *_columns(state),
                state.case_id,
            )
            if created is None:
                raise DuplicateCase(state.case_id)
            await self._publish(connection, state, [])
        self._written()

    async def change(self, case_id: str, change: Change) -> CaseState:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                f"SELECT {_COLUMNS} FROM tally.cases WHERE id = $1 FOR UPDATE",  # noqa: S608 - constant
                case_id,
            )
            if row is None:
                raise UnknownCase(case_id)
            total = await connection.fetchval(
                "SELECT count FROM tally.counters WHERE case_id = $1 AND dimension = 'total' AND key = ''",
                case_id,
            )
            state, events = change(state_of(row), int(total or 0), datetime.now(UTC))
            await connection.execute(
                """
                UPDATE tally.cases SET title = $1, status = $2, goal = $3, milestones = $4, actions = $5,
                    locales = $6, default_locale = $7, target = $8, victory = $9, version = $10,
                    updated_at = $11, confirmation = $12, small_count_threshold = $13, retention_days = $14
                WHERE id = $15
                """,
                *_columns(state),
                case_id,
            )
            await self._publish(connection, state, events)
        self._written()
        return state

    async def _publish(self, connection: Connection, state: CaseState, events: list[Event]) -> None:
        await stage(connection, self._topics.cases, state.case_id, state)
        for event in events:
            await stage(connection, self._topics.case_events, state.case_id, event)

    def _written(self) -> None:
        if self._on_outbox_written is not None:
            self._on_outbox_written()
