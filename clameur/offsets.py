"""Where a consumer keeps each partition's next offset: in its own database, beside its effect.

Tally and notify store the offsets in the transaction that applies a batch (the
``BatchApplier`` contract in :mod:`clameur.consumer`), so Postgres, not Kafka, says where
to resume.  One table per service schema; notify's also keys by consumer group, because
two of its consumers read the same topic.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

    Executor = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any] | asyncpg.Pool[Any]


@dataclass(frozen=True)
class OffsetTable:
    """``table`` has ``(topic, partition, next_offset)``, plus ``group_id`` when ``group_id`` is set.

    The primary key is ``([group_id,] topic, partition)``.
    """

    table: str
    group_id: str | None = None

    def _scope(self, first_param: int) -> tuple[str, str, list[Any]]:
        """Extra columns, the matching ``$n`` placeholders and their values."""
        if self.group_id is None:
            return "", "", []
        return "group_id, ", f"${first_param}, ", [self.group_id]

    async def read(
        self, executor: Executor, topic: str, partitions: Collection[int] | None = None
    ) -> dict[int, int]:
        """The next offset to read per partition stored (of ``partitions``, or all when None)."""
        where = "" if self.group_id is None else " AND group_id = $3"
        rows = await executor.fetch(
            f"SELECT partition, next_offset FROM {self.table}"  # noqa: S608 - table is ours, not input
            f" WHERE topic = $1 AND ($2::int[] IS NULL OR partition = ANY($2::int[])){where}",
            topic,
            None if partitions is None else list(partitions),
            *self._scope(3)[2],
        )
        return {row["partition"]: row["next_offset"] for row in rows}

    async def store(self, executor: Executor, topic: str, next_offsets: Mapping[int, int]) -> None:
        """Upsert the next offsets, in partition order (a fixed lock order between writers).

        An offset never moves backwards: a late replay of an older batch cannot rewind us.
        """
        if not next_offsets:
            return
        partitions = sorted(next_offsets)
        columns, placeholder, scope = self._scope(4)
        await executor.execute(
            f"""
            INSERT INTO {self.table} AS o ({columns}topic, partition, next_offset)
            SELECT {placeholder}$1, partition, next_offset
            FROM unnest($2::int[], $3::bigint[]) WITH ORDINALITY AS p(partition, next_offset, n)
            ORDER BY n
            ON CONFLICT ({columns}topic, partition)
                DO UPDATE SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset)
            """,  # noqa: S608 - table and columns are ours, not input
            topic,
            partitions,
            [next_offsets[partition] for partition in partitions],
            *scope,
        )
