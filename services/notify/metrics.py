"""Notify's metrics, named exactly as docs/metrics.md promises.  No PII in any label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

from clameur.metrics import counter
from notify.ledger import CONFIRMATION_KINDS

KINDS = ("milestone", "victory", *CONFIRMATION_KINDS)
"""What an email is about: the ``kind`` label of the sending metrics."""


class NotifyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.supporters_recorded = counter(
            registry,
            "clameur_notify_supporters_recorded",
            "Consenting signatures recorded in notify's supporter list.",
        )
        self.attempts = counter(registry, "clameur_notify_email_attempts", "SMTP send attempts.", kind=KINDS)
        self.sent = counter(
            registry, "clameur_notify_emails_sent", "Emails the SMTP server accepted.", kind=KINDS
        )
        self.failed = counter(
            registry,
            "clameur_notify_emails_failed",
            "Failed attempts: temporary (retried) or permanent (given up).",
            kind=KINDS,
            reason=("temporary", "permanent"),
        )
        self.send_duration = Histogram(
            "clameur_notify_send_duration_seconds",
            "One SMTP transaction.",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.pending = Gauge(
            "clameur_notify_deliveries_pending",
            "Deliveries not yet sent or given up.",
            registry=registry,
        )
        self.unsubscribes = counter(
            registry, "clameur_notify_unsubscribes", "Unsubscriptions.", scope=("all", "case")
        )
        self.confirmation_links = counter(
            registry,
            "clameur_notify_confirmation_links",
            "Confirm and reject links acted on (events published), by action.",
            action=("confirm", "reject"),
        )
        self.erasures = counter(
            registry,
            "clameur_notify_erasures",
            "Supporters forgotten (contact tombstoned, rows deleted), by why.",
            reason=("erased", "rejected", "unsubscribed", "retention", "expired"),
        )
        self.retention_erased = counter(
            registry,
            "clameur_notify_retention_erased",
            "Supporters the retention job forgot, by why.",
            reason=("case_ended", "unconfirmed"),
        )
