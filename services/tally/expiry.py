"""Unconfirmed signatures expire: the pending rows older than the expiry are dropped.

A confirmation counts only pending rows received within the expiry before it (by event
times, :mod:`tally.counter_store`), so dropping older rows changes no count a replay
would make: the job only frees what can never count, and lowers the cases' ``pending``.
It waits ``grace`` longer than the expiry, for confirmations still on their way through
the log (a row a lagging confirmation may yet count is not dropped).  Each run is its own
transaction: the rows and the ``pending`` counters move together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tally.metrics import TallyMetrics

logger = logging.getLogger(__name__)

# Counter rows are updated in key order, like the batches do, so the two do not deadlock.
_EXPIRE = """
WITH dropped AS (
    DELETE FROM tally.signatures WHERE state = 'pending' AND received_at < $1
    RETURNING case_id
), by_case AS (
    SELECT case_id, count(*) AS signatures FROM dropped GROUP BY case_id
), lowered AS (
    UPDATE tally.counters AS c SET count = c.count - b.signatures, updated_at = now()
    FROM (SELECT * FROM by_case ORDER BY case_id) AS b
    WHERE c.case_id = b.case_id AND c.dimension = 'pending' AND c.key = ''
)
SELECT case_id, signatures FROM by_case
"""


async def expire_pending(pool: asyncpg.Pool[Any], received_before: datetime) -> dict[str, int]:
    """Drop pending signatures received before ``received_before``; returns how many per case."""
    async with pool.acquire() as connection, connection.transaction():
        rows = await connection.fetch(_EXPIRE, received_before)
    return {row["case_id"]: row["signatures"] for row in rows}


@dataclass(frozen=True)
class PendingExpiry:
    """Runs :func:`expire_pending` every ``interval_s`` with the cutoff now - expiry - grace."""

    pool: asyncpg.Pool[Any]
    metrics: TallyMetrics
    _: KW_ONLY
    expiry: timedelta
    grace: timedelta
    interval_s: float
    _stopping: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    async def run_once(self, now: datetime | None = None) -> int:
        """One run; returns how many pending signatures it dropped."""
        cutoff = (now or datetime.now(UTC)) - self.expiry - self.grace
        dropped = sum((await expire_pending(self.pool, cutoff)).values())
        self.metrics.pending_expired.inc(dropped)
        if dropped:
            logger.info("pending signatures expired", extra={"dropped": dropped})
        return dropped

    async def run(self) -> None:
        """Until :meth:`stop`; a failed run (Postgres away) is logged and tried again later."""
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except (OSError, asyncpg.PostgresError) as error:
                logger.warning("expiry run failed; trying again later", extra={"error": type(error).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)

    def stop(self) -> None:
        self._stopping.set()
