"""The signing desk: one request in, one answer out, in the order that keeps it cheap.

For a widget's signature the checks run from cheapest to dearest, and stop at the first
refusal: widget key and origin (403), client IP rate (429), the case (404/410), the body's
size and type (413/415), the ``Idempotency-Key`` window (replay), the fields (422), the
honeypot (a 202 that publishes nothing), the email domain rate (429), the human check
(403/503), the case's locales and actions (422), then the broker's ack (202, or 503).

Everything the desk needs is passed in (built by the app's lifespan); nothing here holds
a socket of its own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from clameur.buckets import TokenBuckets, retry_after
from clameur.case_registry import CaseRegistry
from clameur.events import CaseState, Contact, SignatureAccepted
from clameur.supporters import SupporterKeys, email_domain
from clameur.web import PROBLEM_JSON, Problem, bearer_token, field_errors, token_matches
from intake.abuse import ClientAddresses, DomainLimits
from intake.cases import refusal
from intake.human_check import HumanCheck
from intake.idempotency import MAX_KEY_LENGTH, IdempotencyWindow, StoredAnswer
from intake.metrics import IntakeMetrics, Rejection
from intake.publisher import BrokerUnavailable, SignaturePublisher
from intake.validation import (
    ACCEPTED,
    PENDING_CONFIRMATION,
    SIGNATURE_MESSAGES,
    Acceptance,
    InvalidSignature,
    Receipt,
    SignatureBatch,
    accept_signature,
    parse_fields,
    parse_form,
)
from intake.widgets import WIDGET_HEADER, WIDGET_QUERY, WidgetKeys, cors_headers, preflight_headers

logger = logging.getLogger(__name__)

JSON = "application/json"
REPLAYED_HEADER = "Idempotent-Replayed"


class Refused(Problem):
    """A problem answer that is also counted in ``clameur_intake_rejections_total``."""

    def __init__(self, reason: Rejection, status: int, detail: str, **kwargs: Any) -> None:
        super().__init__(status, detail, **kwargs)
        self.reason = reason


def stored_problem(problem: Problem) -> StoredAnswer:
    response = problem.response()
    return StoredAnswer(problem.status, bytes(response.body), PROBLEM_JSON, dict(problem.headers or {}))


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == JSON or (media_type.startswith("application/") and media_type.endswith("+json"))


def request_headers(request: Request) -> dict[str, str]:
    """The request's headers by lowercase name, read once (the first of repeated ones wins).

    Starlette's ``Headers.get`` scans and decodes the raw list on every call; the desk
    asks for half a dozen headers per request.
    """
    return {
        name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(request.scope["headers"])
    }


async def read_json_body(request: Request, headers: Mapping[str, str], limit: int) -> bytes:
    """The body, refused with 413 over ``limit`` bytes (announced or streamed) or 415 if not JSON."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(Rejection.TOO_LARGE, 413, f"The body is larger than {limit} bytes.")
    if not _is_json(headers.get("content-type", "")):
        raise Refused(
            Rejection.UNSUPPORTED_MEDIA, 415, "Send the signature as JSON (Content-Type: application/json)."
        )
    chunks = []
    size = 0
    # The real size counts, not the announced one: chunked bodies announce nothing.
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(Rejection.TOO_LARGE, 413, f"The body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


class PartnerKeys:
    """Bearer partner keys to partner names, compared in constant time."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = list(keys.items())

    def partner(self, authorization: str | None) -> str | None:
        """The partner whose key is the ``Authorization: Bearer`` token, or None."""
        presented = bearer_token(authorization)
        found = None
        # Every key is compared, found or not: the time says nothing about which matched.
        for key, name in self._keys:
            if token_matches(presented, key):
                found = name
        return found


@dataclass
class SigningDesk:
    """Turns requests into published signatures; every answer is a :class:`StoredAnswer`."""

    cases: CaseRegistry
    publisher: SignaturePublisher
    keys: SupporterKeys
    metrics: IntakeMetrics
    widgets: WidgetKeys
    addresses: ClientAddresses
    ip_limits: TokenBuckets
    domain_limits: DomainLimits
    partners: PartnerKeys
    idempotency: IdempotencyWindow[StoredAnswer]
    human_check: HumanCheck | None
    clock: Callable[[], datetime]
    max_body_bytes: int
    batch_max_body_bytes: int
    batch_max_items: int
    broker_retry_after: int

    # -- widget signatures -----------------------------------------------------------------

    async def sign(self, case_id: str, request: Request) -> tuple[StoredAnswer, dict[str, str]]:
        """Answer a widget's POST; returns the answer and the CORS headers to add to it."""
        headers = request_headers(request)
        # The query string is parsed only when there is one (widgets send the header).
        widget_key = headers.get(WIDGET_HEADER) or (
            request.query_params.get(WIDGET_QUERY) if request.scope.get("query_string") else None
        )
        verdict = self.widgets.judge(widget_key, headers.get("origin"))
        cors = cors_headers(verdict.cors_origin) if verdict.cors_origin else {}
        try:
            if not verdict.allowed:
                raise Refused(Rejection.WIDGET_KEY, 403, verdict.detail)
            client = request.client
            client_ip = self.addresses.client_ip(
                client.host if client else None, headers.get("x-forwarded-for")
            )
            wait = self.ip_limits.take(client_ip)
            if wait:
                raise self._rate_limited(wait)
            case = self._open_case(case_id)
            body = await read_json_body(request, headers, self.max_body_bytes)
            idempotency_key = self._idempotency_key(headers)
            if idempotency_key is None:
                return await self._sign(case, body, client_ip), cors
            answer, replayed = await self.idempotency.answer(
                ("signature", case_id, idempotency_key), lambda: self._sign(case, body, client_ip)
            )
        except Refused as refused:
            self.metrics.reject(refused.reason)
            return stored_problem(refused), cors
        if replayed:
            cors = {**cors, REPLAYED_HEADER: "true"}
        return answer, cors

    async def _sign(self, case: CaseState, body: bytes, client_ip: str) -> StoredAnswer:
        try:
            form = parse_form(body)
            if form.is_bot:
                # Look like success (the case's status too) so the bot learns nothing; publish nothing.
                self.metrics.reject(Rejection.HONEYPOT)
                return _accepted(uuid.uuid4(), _honeypot_status(case))
            wait = self.domain_limits.take(email_domain(form.canonical_email))
            if wait:
                raise self._rate_limited(wait)
            if self.human_check is not None:
                await self._check_human(form.turnstile_token, client_ip)
            acceptance = accept_signature(form, Receipt(case, self.clock()), self.keys)
            signature = acceptance.signature
            contact = acceptance.contact
            await self._publish((signature,), () if contact is None else (contact,))
        except InvalidSignature as invalid:
            self.metrics.reject(Rejection.VALIDATION)
            return stored_problem(_invalid(invalid.errors))
        except Refused as refused:
            self.metrics.reject(refused.reason)
            return stored_problem(refused)
        self.metrics.accepted[signature.action].inc()
        return _accepted(signature.signature_id, acceptance.status)

    async def _check_human(self, token: str | None, client_ip: str) -> None:
        assert self.human_check is not None
        result = await self.human_check.verify(token, client_ip)
        if result.passed:
            return
        if not result.reachable:
            raise Refused(
                Rejection.HUMAN_CHECK,
                503,
                "The human check cannot be verified right now; please try again in a moment.",
                headers={"Retry-After": str(self.broker_retry_after)},
            )
        raise Refused(
            Rejection.HUMAN_CHECK, 403, "The human check failed; please complete it again and resend."
        )

    async def _publish(self, signatures: Sequence[SignatureAccepted], contacts: Sequence[Contact]) -> None:
        try:
            await self.publisher.publish(signatures, contacts)
        except BrokerUnavailable:
            raise Refused(
                Rejection.BROKER,
                503,
                "Your signature could not be saved just now; please send it again in a moment.",
                headers={"Retry-After": str(self.broker_retry_after)},
            ) from None

    # -- partners' bulk import ---------------------------------------------------------------

    async def sign_batch(self, case_id: str, request: Request) -> StoredAnswer:
        """Answer a partner's bulk import: a result per item, 202 once all accepted are acked."""
        try:
            headers = request_headers(request)
            partner = self.partners.partner(headers.get("authorization"))
            if partner is None:
                raise Refused(
                    Rejection.PARTNER_KEY,
                    401,
                    "A partner key is needed: Authorization: Bearer <partner key>.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            case = self._open_case(case_id)
            body = await read_json_body(request, headers, self.batch_max_body_bytes)
            idempotency_key = self._idempotency_key(headers)
            if idempotency_key is None:
                return await self._sign_batch(case, body, partner)
            answer, _ = await self.idempotency.answer(
                ("batch", case_id, partner, idempotency_key), lambda: self._sign_batch(case, body, partner)
            )
            return answer
        except Refused as refused:
            self.metrics.reject(refused.reason)
            return stored_problem(refused)

    async def _sign_batch(self, case: CaseState, body: bytes, partner: str) -> StoredAnswer:
        try:
            batch = SignatureBatch.model_validate_json(body)
        except ValidationError as exc:
            self.metrics.reject(Rejection.VALIDATION)
            return stored_problem(_invalid(field_errors(exc, messages=SIGNATURE_MESSAGES)))
        if len(batch.signatures) > self.batch_max_items:
            self.metrics.reject(Rejection.VALIDATION)
            return stored_problem(
                _invalid([{"field": "signatures", "message": f"at most {self.batch_max_items} per request"}])
            )
        receipt = Receipt(case, self.clock(), partner=partner)
        results: list[dict[str, Any]] = []
        events: list[SignatureAccepted] = []
        contacts: list[Contact] = []
        for index, raw in enumerate(batch.signatures):
            try:
                acceptance = accept_signature(parse_fields(raw), receipt, self.keys)
            except InvalidSignature as invalid:
                results.append({"index": index, "status": "rejected", "errors": invalid.errors})
                continue
            events.append(acceptance.signature)
            if acceptance.contact is not None:
                contacts.append(acceptance.contact)
            results.append(_item_accepted(index, acceptance))
        rejected = len(results) - len(events)
        if rejected:
            self.metrics.reject(Rejection.VALIDATION, rejected)
        if events:
            try:
                await self._publish(events, contacts)
            except Refused as refused:
                self.metrics.reject(refused.reason, len(events))
                return stored_problem(refused)
            for event in events:
                self.metrics.accepted[event.action].inc()
        logger.info(
            "bulk import", extra={"case_id": case.case_id, "accepted": len(events), "rejected": rejected}
        )
        return StoredAnswer(
            202,
            orjson.dumps({"accepted": len(events), "rejected": rejected, "results": results}),
            JSON,
        )

    # -- CORS preflight ----------------------------------------------------------------------

    def preflight(self, request: Request) -> tuple[int, dict[str, str], StoredAnswer | None]:
        """A preflight's status and headers (204 for an allowed origin, else a 403 problem)."""
        verdict = self.widgets.judge_preflight(
            request.query_params.get(WIDGET_QUERY), request.headers.get("origin")
        )
        if verdict.allowed and verdict.cors_origin:
            return 204, preflight_headers(verdict.cors_origin), None
        self.metrics.reject(Rejection.WIDGET_KEY)
        return 403, {}, stored_problem(Problem(403, verdict.detail))

    # -- shared checks -------------------------------------------------------------------------

    def _open_case(self, case_id: str) -> CaseState:
        if not self.cases.ready.is_set():
            # Until cases.v1 is read, "unknown case" could be a lie: ask to retry instead.
            raise Refused(
                Rejection.BROKER,
                503,
                "Intake is starting and does not know the cases yet; please try again in a moment.",
                headers={"Retry-After": str(self.broker_retry_after)},
            )
        case = self.cases.get(case_id)
        refused = refusal(case_id, case)
        if refused is None:
            assert case is not None
            return case
        if refused.status == 404:
            raise Refused(Rejection.UNKNOWN_CASE, 404, refused.detail)
        extra: dict[str, Any] = {"case_id": case_id, "case_status": refused.case_status}
        if refused.victory_headline is not None:
            extra["headline"] = refused.victory_headline
        raise Refused(Rejection.CLOSED_CASE, 410, refused.detail, **extra)

    def _idempotency_key(self, headers: Mapping[str, str]) -> str | None:
        key = headers.get("idempotency-key")
        if key is None:
            return None
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise Refused(
                Rejection.VALIDATION,
                422,
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
                errors=[{"field": "Idempotency-Key", "message": "invalid header"}],
            )
        return key

    def _rate_limited(self, wait: float) -> Refused:
        return Refused(
            Rejection.RATE_LIMIT,
            429,
            "Too many signatures from here at once; please try again in a moment.",
            headers={"Retry-After": retry_after(wait)},
        )


def _accepted(signature_id: uuid.UUID, status: str) -> StoredAnswer:
    return StoredAnswer(202, orjson.dumps({"signature_id": str(signature_id), "status": status}), JSON)


def _item_accepted(index: int, acceptance: Acceptance) -> dict[str, Any]:
    # "accepted" says the item passed (beside "rejected"); "pending_confirmation" that it
    # will count once its address is confirmed.
    return {
        "index": index,
        "status": acceptance.status,
        "signature_id": str(acceptance.signature.signature_id),
    }


def _honeypot_status(case: CaseState) -> str:
    return PENDING_CONFIRMATION if case.confirmation == "email" else ACCEPTED


def _invalid(errors: list[dict[str, str]]) -> Problem:
    fields = ", ".join(sorted({error["field"] for error in errors}))
    return Problem(422, f"Some fields are missing or invalid: {fields}.", errors=errors)
