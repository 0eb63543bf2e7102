"""Where a supporter's data could still be, read raw: the broker's files and a database dump.

The erasure tests do not trust what a consumer sees (compaction hides nothing from a
consumer that is not also gone from disk, and a deleted row can live on in a dump): they
read the bytes the broker keeps on disk and the text ``pg_dump`` writes, as an attacker
with a copy of either would (docs/privacy.md, "Erasure").
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from devstack.databases import database_dsn
from devstack.layout import TEST
from devstack.postgres import BIN
from devstack.processes import poll

PG_DUMP = BIN / "pg_dump"

# Every file of a partition that can hold records: the live segments, a segment the
# cleaner is writing or swapping in, and a segment renamed for deletion but still on disk
# for file.delete.delay.ms.
_SEGMENT_SUFFIXES = (".log", ".log.cleaned", ".log.swap", ".log.deleted")


def topic_data_contains(
    kafka_data_dir: Path, topic_prefix: str, needles: Iterable[bytes]
) -> dict[str, bytes]:
    """``{segment file: a needle it contains}`` over every partition of every topic whose
    name starts with ``topic_prefix`` (dead letter queues included), on the broker's disk.

    Partition directories are ``<topic>-<n>`` (or ``<topic>-<n>.<id>-delete`` while a
    deleted topic waits to be removed: included).  Records are read as the broker stores
    them: our producers do not compress, so a value is its bytes in the file.  An empty
    answer means none of the needles is anywhere on disk for these topics.
    """
    wanted = [needle for needle in needles if needle]
    found: dict[str, bytes] = {}
    if not topic_prefix:
        raise ValueError("give a topic prefix: scanning every topic of a shared broker is not a test")
    for partition in sorted(kafka_data_dir.iterdir()):
        if not partition.is_dir() or not partition.name.startswith(topic_prefix):
            continue
        for segment in sorted(partition.iterdir()):
            if not segment.name.endswith(_SEGMENT_SUFFIXES):
                continue
            try:
                content = segment.read_bytes()
            except FileNotFoundError:
                continue  # the cleaner deleted it while we listed: it holds nothing now
            for needle in wanted:
                if needle in content:
                    found[str(segment)] = needle
                    break
    return found


def pg_dump_contains(dsn: str, database: str, needles: Iterable[bytes]) -> dict[bytes, str]:
    """``{needle: the first dump line holding it}`` for each needle ``pg_dump`` of
    ``database`` (on ``dsn``'s server, every schema) contains, as bytes or as the hex that
    bytea columns are dumped in.  An empty answer means the dump reveals none of them."""
    if not PG_DUMP.exists():
        pytest.skip(f"{PG_DUMP} is missing (Debian's postgresql-15; make test installs it)")
    dump = subprocess.run(
        [str(PG_DUMP), "--no-owner", "--no-privileges", f"--dbname={database_dsn(dsn, database)}"],
        capture_output=True,
        check=True,
        timeout=120,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    ).stdout
    found: dict[bytes, str] = {}
    lines = dump.splitlines()
    for needle in needles:
        forms = (needle, needle.hex().encode())
        for line in lines:
            if any(form in line for form in forms):
                found[needle] = line.decode(errors="replace")
                break
    return found


def broker_data_dir(infra: Any, topic_prefix: str | None = None) -> Path:
    """The data directory of the tests' broker, to read its segment files.

    ``CLAMEUR_TEST_KAFKA_DATA_DIR`` names it for a broker given by ``CLAMEUR_TEST_KAFKA``
    (or a shared test broker started from another checkout); the local test stack's is
    under ``.cache/test``.  Skips where the files are out of reach (a broker in a
    container).  With ``topic_prefix`` (topics created already), the directory must come to hold
    their partitions: a stale ``.cache/test`` of a broker no longer running would make
    every "nothing on disk" vacuous.
    """
    named = os.environ.get("CLAMEUR_TEST_KAFKA_DATA_DIR")
    if named:
        found = Path(named)
    elif infra.kafka == f"127.0.0.1:{TEST.kafka_port}" and (TEST.kafka_data / "logs").is_dir():
        found = TEST.kafka_data / "logs"
    else:
        pytest.skip("the broker's files are not on this machine: set CLAMEUR_TEST_KAFKA_DATA_DIR")
    # The broker makes a new topic's directories a moment after it answers CreateTopics.
    if topic_prefix and not poll(
        lambda: any(path.name.startswith(topic_prefix) for path in found.iterdir()), timeout=15, every=0.2
    ):
        pytest.skip(
            f"{found} holds no partition of this test's topics: the broker answering on {infra.kafka}"
            " keeps its files elsewhere (started from another checkout?): set CLAMEUR_TEST_KAFKA_DATA_DIR"
        )
    return found
