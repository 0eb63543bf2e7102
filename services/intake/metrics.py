"""Intake's metrics (names from docs/metrics.md); labels are bounded, never personal."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge

from clameur.events import Action


class Rejection(StrEnum):
    """Why a request was refused: the ``reason`` label of the rejections counter."""

    VALIDATION = "validation"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA = "unsupported_media"
    UNKNOWN_CASE = "unknown_case"
    CLOSED_CASE = "closed_case"
    RATE_LIMIT = "rate_limit"
    HONEYPOT = "honeypot"
    WIDGET_KEY = "widget_key"
    PARTNER_KEY = "partner_key"
    HUMAN_CHECK = "human_check"
    BROKER = "broker"


class IntakeMetrics:
    """Signatures accepted by action and requests refused by reason (every label pre-made,
    so a dashboard sees zeros rather than missing series)."""

    def __init__(self, registry: CollectorRegistry, cases_known: Callable[[], float]) -> None:
        accepted = Counter(
            "clameur_intake_signatures_accepted",
            "Actions acknowledged by the broker (answered 202).",
            ["action"],
            registry=registry,
        )
        rejections = Counter(
            "clameur_intake_rejections", "Requests refused, by reason.", ["reason"], registry=registry
        )
        # Children bound once: a label lookup per request is avoidable work on the hot path.
        self.accepted = {action: accepted.labels(action.value) for action in Action}
        self.rejections = {reason: rejections.labels(reason.value) for reason in Rejection}
        self.cases_known = Gauge(
            "clameur_intake_cases_known", "Cases in intake's in-memory registry.", registry=registry
        )
        self.cases_known.set_function(cases_known)

    def reject(self, reason: Rejection, count: int = 1) -> None:
        self.rejections[reason].inc(count)
