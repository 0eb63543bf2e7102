"""Notify's metrics, named exactly as docs/metrics.md promises.  No PII in any label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NotifyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.supporters_recorded = Counter(
            "clameur_notify_supporters_recorded",
            "Consenting signatures recorded in notify's supporter list.",
            registry=registry,
        )
        self.attempts = Counter(
            "clameur_notify_email_attempts", "SMTP send attempts.", ["kind"], registry=registry
        )
        self.sent = Counter(
            "clameur_notify_emails_sent", "Emails the SMTP server accepted.", ["kind"], registry=registry
        )
        self.failed = Counter(
            "clameur_notify_emails_failed",
            "Failed attempts: temporary (retried) or permanent (given up).",
            ["kind", "reason"],
            registry=registry,
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
        self.unsubscribes = Counter(
            "clameur_notify_unsubscribes", "Unsubscriptions.", ["scope"], registry=registry
        )
        self.confirmation_links = Counter(
            "clameur_notify_confirmation_links",
            "Confirm and reject links acted on (events published), by action.",
            ["action"],
            registry=registry,
        )
        for action in ("confirm", "reject"):
            self.confirmation_links.labels(action)
        self._erasure_metrics(registry)
        for kind in ("milestone", "victory", "confirmation", "reminder"):
            self.attempts.labels(kind)
            self.sent.labels(kind)
            for reason in ("temporary", "permanent"):
                self.failed.labels(kind, reason)
        for scope in ("all", "case"):
            self.unsubscribes.labels(scope)

    def _erasure_metrics(self, registry: CollectorRegistry) -> None:
        self.erasures = Counter(
            "clameur_notify_erasures",
            "Supporters forgotten (contact tombstoned, rows deleted), by why.",
            ["reason"],
            registry=registry,
        )
        self.retention_erased = Counter(
            "clameur_notify_retention_erased",
            "Supporters the retention job forgot, by why.",
            ["reason"],
            registry=registry,
        )
        for reason in ("erased", "rejected", "unsubscribed", "retention", "expired"):
            self.erasures.labels(reason)
        for reason in ("case_ended", "unconfirmed"):
            self.retention_erased.labels(reason)
