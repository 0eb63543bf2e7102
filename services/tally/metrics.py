"""Tally's metrics, named as docs/metrics.md promises (no case id, name or key in a label)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from clameur.metrics import counter

SERVICE = "tally"


# The unlabelled counters, by attribute: each is exported as ``clameur_tally_<attribute>``.
_COUNTERS = {
    "records_consumed": "Signature records read from Kafka.",
    "signatures_confirmed": "Pending signatures counted because their supporter confirmed.",
    "pending_rejected": "Pending signatures dropped because their address's owner refused them.",
    "pending_expired": "Pending signatures dropped by the expiry job (never confirmed in time).",
    "signatures_erased": (
        "Signature rows re-keyed with an unlinkable marker (their supporter asked to be forgotten)."
    ),
    "signatures_invalidated": "Counted signatures taken back out of the counts by an invalidation.",
    "signatures_restored": "Invalidated signatures given back to the counts by a revocation.",
    "duplicates": "Records that were already counted.",
    "batches": "Batches attempted.",
    "batch_failures": "Batches whose transaction failed (retried).",
    "milestones_emitted": "Milestone outbox rows written.",
}


class TallyMetrics:
    """Every tally metric, registered on one registry (one per app)."""

    records_consumed: Counter
    signatures_confirmed: Counter
    pending_rejected: Counter
    pending_expired: Counter
    signatures_erased: Counter
    signatures_invalidated: Counter
    signatures_restored: Counter
    duplicates: Counter
    batches: Counter
    batch_failures: Counter
    milestones_emitted: Counter

    def __init__(self, registry: CollectorRegistry) -> None:
        for attribute, description in _COUNTERS.items():
            setattr(self, attribute, counter(registry, f"clameur_tally_{attribute}", description))
        self.signatures_counted = Counter(
            "clameur_tally_signatures_counted",
            "New signatures added to counters.",
            ["action"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "clameur_tally_consumer_lag_records",
            "High-water mark minus stored offset.",
            ["partition"],
            registry=registry,
        )
        self._histograms(registry)
        self._outbox(registry)

    def _histograms(self, registry: CollectorRegistry) -> None:
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
        self.accept_to_counted = Histogram(
            "clameur_tally_accept_to_counted_seconds",
            "From the signature's received_at to the commit that counted it.",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )
        self.confirmation_to_counted = Histogram(
            "clameur_tally_confirmation_to_counted_seconds",
            "From a SignatureConfirmed's occurred_at (the click, notify's clock) to the commit that"
            " counted the signatures it confirmed.",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )

    def _outbox(self, registry: CollectorRegistry) -> None:
        self.outbox_pending = Gauge(
            "clameur_outbox_pending_events", "Outbox rows not yet published.", ["service"], registry=registry
        )
        # Labelled series appear at zero from the start, so a dashboard has a line to draw.
        self.outbox_pending.labels(SERVICE)
        self.outbox_publish_attempts = counter(
            registry, "clameur_outbox_publish_attempts", "Outbox publish attempts.", service=(SERVICE,)
        )
        self.outbox_publish_failures = counter(
            registry, "clameur_outbox_publish_failures", "Outbox publish failures.", service=(SERVICE,)
        )
