"""Tally's settings: batch bounds, the relay's pace, the read cache, on top of the shared pieces."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from clameur.settings import ConfirmationSettings

CrashPoint = Literal["before_db_commit", "after_db_commit"]


class TallySettings(ConfirmationSettings):
    """Everything tally reads from ``CLAMEUR_*`` at start."""

    tally_port: int = 8002
    tally_group_id: str = Field(default="tally", description="consumer group of signatures.v2")
    tally_batch_max_records: int = Field(default=5000, ge=1, description="records per batch, at most")
    tally_batch_max_wait_s: float = Field(
        default=0.25, gt=0, description="how long a batch waits to fill once it has a record"
    )
    tally_batches_in_flight: int = Field(
        default=2,
        ge=1,
        le=4,
        description=(
            "batches in the database at once: the next is staged while the previous commits "
            "(they still commit in order); 1 applies them one after the other"
        ),
    )
    tally_relay_poll_s: float = Field(
        default=0.2, gt=0, le=0.2, description="the outbox relay looks for new rows at least this often"
    )
    tally_read_cache_s: float = Field(
        default=0.5, ge=0, description="public reads of one case share a database read for this long"
    )
    tally_cache_max_age_s: int = Field(default=2, ge=0, description="Cache-Control max-age of public reads")
    tally_live_interval_s: float = Field(
        default=0.5, gt=0, description="a live (SSE) stream looks for a new count this often"
    )
    # Admission control (clameur.admission): each lane apart, so a crowd on the live
    # streams never makes the counts time out, nor the other way round.  0: unbounded.
    tally_reads_max_in_flight: int = Field(default=256, ge=0, description="public count reads in flight")
    tally_live_max_streams: int = Field(default=2000, ge=0, description="open live (SSE) streams per process")
    tally_publish: bool = Field(
        default=True,
        description=(
            "false for `make rebuild`: outbox rows are written but never published, so a rebuild "
            "announces no milestone again on the live topics"
        ),
    )
    tally_expiry_grace_s: float = Field(
        default=24 * 3600,
        ge=0,
        description="the expiry job drops pending signatures this long after they can no longer count",
    )
    tally_expiry_interval_s: float = Field(default=60, gt=0, description="how often the expiry job runs")
    tally_crash_at: CrashPoint | None = Field(
        default=None,
        description=(
            "test only: SIGKILL this process in the first batch with signatures, just before "
            "(before_db_commit) or just after (after_db_commit) the database commit"
        ),
    )

    @model_validator(mode="after")
    def _crash_only_in_tests(self) -> Self:
        if self.tally_crash_at is not None and self.env != "test":
            raise ValueError("CLAMEUR_TALLY_CRASH_AT is honoured only with CLAMEUR_ENV=test")
        return self
