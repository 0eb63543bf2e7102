"""Tally's metrics, named as docs/metrics.md promises (no case id, name or key in a label)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SERVICE = "tally"


class TallyMetrics:
    """Every tally metric, registered on one registry (one per app)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records_consumed = Counter(
            "clameur_tally_records_consumed", "Signature records read from Kafka.", registry=registry
        )
        self.signatures_counted = Counter(
            "clameur_tally_signatures_counted",
            "New signatures added to counters.",
            ["action"],
            registry=registry,
        )
        self.signatures_confirmed = Counter(
            "clameur_tally_signatures_confirmed",
            "Pending signatures counted because their supporter confirmed.",
            registry=registry,
        )
        self.pending_rejected = Counter(
            "clameur_tally_pending_rejected",
            "Pending signatures dropped because their address's owner refused them.",
            registry=registry,
        )
        self.pending_expired = Counter(
            "clameur_tally_pending_expired",
            "Pending signatures dropped by the expiry job (never confirmed in time).",
            registry=registry,
        )
        self.signatures_erased = Counter(
            "clameur_tally_signatures_erased",
            "Signature rows re-keyed with an unlinkable marker (their supporter asked to be forgotten).",
            registry=registry,
        )
        self.signatures_invalidated = Counter(
            "clameur_tally_signatures_invalidated",
            "Counted signatures taken back out of the counts by an invalidation.",
            registry=registry,
        )
        self.signatures_restored = Counter(
            "clameur_tally_signatures_restored",
            "Invalidated signatures given back to the counts by a revocation.",
            registry=registry,
        )
        self.duplicates = Counter(
            "clameur_tally_duplicates", "Records that were already counted.", registry=registry
        )
        self.batches = Counter("clameur_tally_batches", "Batches attempted.", registry=registry)
        self.batch_failures = Counter(
            "clameur_tally_batch_failures",
            "Batches whose transaction failed (retried).",
            registry=registry,
        )
        self.batch_size = Histogram(
            "clameur_tally_batch_size_records",
            "Records per batch.",
            registry=registry,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        )
        self.batch_apply_duration = Histogram(
            "clameur_tally_batch_apply_duration_seconds",
            "One batch's Postgres transaction, including any wait for the batch before it to commit.",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.consumer_lag = Gauge(
            "clameur_tally_consumer_lag_records",
            "High-water mark minus stored offset.",
            ["partition"],
            registry=registry,
        )
        self.accept_to_counted = Histogram(
            "clameur_tally_accept_to_counted_seconds",
            "From the signature's received_at to the commit that counted it.",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )
        self.milestones_emitted = Counter(
            "clameur_tally_milestones_emitted", "Milestone outbox rows written.", registry=registry
        )
        self.outbox_pending = Gauge(
            "clameur_outbox_pending_events", "Outbox rows not yet published.", ["service"], registry=registry
        )
        self.outbox_publish_attempts = Counter(
            "clameur_outbox_publish_attempts", "Outbox publish attempts.", ["service"], registry=registry
        )
        self.outbox_publish_failures = Counter(
            "clameur_outbox_publish_failures", "Outbox publish failures.", ["service"], registry=registry
        )
        # Labelled series appear at zero from the start, so a dashboard has a line to draw.
        self.outbox_pending.labels(SERVICE)
        self.outbox_publish_attempts.labels(SERVICE)
        self.outbox_publish_failures.labels(SERVICE)
