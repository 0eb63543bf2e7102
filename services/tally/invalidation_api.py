"""The operators' invalidations: take signatures back out of a case's counts, in the open.

    POST   /v1/admin/cases/{case_id}/invalidations          dry run (200) or real run (201, 202)
    GET    /v1/admin/cases/{case_id}/invalidations          every applied one, in log order
    GET    /v1/admin/cases/{case_id}/invalidations/{id}     one (404 until applied)
    DELETE /v1/admin/cases/{case_id}/invalidations/{id}     give its signatures back (200, 202)

A real run never changes the counts itself: it writes ``InvalidationRequested`` to the
outbox for signatures.v2, and tally applies it from the log, in the batch transaction
that stores the offsets (:mod:`tally.invalidations`; docs/adr/0005).  The route then
waits, at most ``wait_s``, for that to happen, and answers with what was applied (201);
if it takes longer, 202 with a ``Location`` to GET it.  A revocation goes the same way.

Errors, all problem+json: 401 without the admin token (:class:`clameur.admin.AdminDoor`),
404 unknown case or invalidation, 422 an empty filter (it would take out everything), an
unknown filter field (a typo must not widen the filter), or a field of the wrong type
(named in ``errors``).  Email addresses of the filter are turned into supporter keys at
once and are stored nowhere.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from starlette.responses import JSONResponse

from clameur.admin import ADMIN_TOKEN_NAME, AdminDoor
from clameur.events import InvalidationFilter, InvalidationRequested, InvalidationRevoked, is_case_id
from clameur.settings import ClameurSettings
from clameur.supporters import SupporterKeys
from clameur.web import Problem
from tally import invalidations

_POLL_S = 0.05

_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
_Country = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]
_Values = Field(default=None, min_length=1, max_length=10_000)


class FilterFields(BaseModel):
    """Which counted signatures to take out: every field given must match; a list matches any value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email_domains: list[_Text] | None = _Values
    received_from: AwareDatetime | None = None
    received_until: AwareDatetime | None = None
    widget_keys: list[_Text] | None = _Values
    page_url_prefix: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None
    partners: list[_Text] | None = _Values
    countries: list[_Country] | None = _Values
    emails: list[Annotated[str, StringConstraints(min_length=3, max_length=320)]] | None = _Values

    @field_validator("email_domains")
    @classmethod
    def _lower_domains(cls, domains: list[str] | None) -> list[str] | None:
        # Intake records the domain lowercased: "Bot-Farm.example" is the same domain.
        return [domain.lower() for domain in domains] if domains is not None else None

    @field_validator("countries")
    @classmethod
    def _upper_countries(cls, countries: list[str] | None) -> list[str] | None:
        return [country.upper() for country in countries] if countries is not None else None

    @model_validator(mode="after")
    def _window(self) -> FilterFields:
        if self.received_from and self.received_until and self.received_from >= self.received_until:
            raise ValueError("received_from must be before received_until")
        return self


class InvalidationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
    filter: FilterFields
    dry_run: bool = False


@dataclass(frozen=True)
class InvalidationPorts:
    """What the routes use of a started tally: its pool, where the events go, and the relay's wake."""

    pool: asyncpg.Pool[Any]
    signatures_topic: str
    wake_relay: Callable[[], None]


def event_filter(fields: FilterFields, keys: SupporterKeys) -> InvalidationFilter:
    """The filter as the event carries it: emails as supporter keys; 422 for an address that is not one."""
    supporter_keys: tuple[str, ...] | None = None
    if fields.emails is not None:
        try:
            supporter_keys = tuple(sorted({keys.of_address(email) for email in fields.emails}))
        except ValueError:
            raise Problem(
                422,
                "Some fields are missing or invalid: filter.emails.",
                errors=[{"field": "filter.emails", "message": "holds a value that is not an email address"}],
            ) from None
    return InvalidationFilter(
        email_domains=_tuple(fields.email_domains),
        received_from=fields.received_from,
        received_until=fields.received_until,
        widget_keys=_tuple(fields.widget_keys),
        page_url_prefix=fields.page_url_prefix,
        partners=_tuple(fields.partners),
        countries=_tuple(fields.countries),
        supporter_keys=supporter_keys,
    )


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values is not None else None


def operator_name() -> str:
    """The name of the token that made the request (a dependency, so a per-operator guard can fill it)."""
    return ADMIN_TOKEN_NAME


INVALIDATION_ACTIONS = ("invalidation_created", "invalidation_revoked")
"""The audit's names of what these routes do (``clameur_admin_actions_total``'s ``action``)."""


def invalidation_router(
    ports: Callable[[], InvalidationPorts], door: AdminDoor, keys: SupporterKeys, *, wait_s: float = 10.0
) -> APIRouter:
    """The invalidation routes; ``ports()`` gives the running app's pool and relay at each request."""
    router = APIRouter(prefix="/v1/admin/cases", dependencies=[Depends(door.guard())])

    async def known_case(case_id: str) -> InvalidationPorts:
        running = ports()
        if not is_case_id(case_id) or not await invalidations.case_exists(running.pool, case_id):
            raise Problem(404, f"There is no case {case_id!r}.")
        return running

    @router.post("/{case_id}/invalidations")
    async def invalidate(
        case_id: str, body: InvalidationRequest, by: Annotated[str, Depends(operator_name)]
    ) -> JSONResponse:
        return await _invalidate(
            await known_case(case_id), door, case_id, body, event_filter(body.filter, keys), by, wait_s
        )

    @router.get("/{case_id}/invalidations")
    async def listing(case_id: str) -> JSONResponse:
        running = await known_case(case_id)
        return JSONResponse({"invalidations": await invalidations.of_case(running.pool, case_id)})

    @router.get("/{case_id}/invalidations/{invalidation_id}")
    async def one(case_id: str, invalidation_id: UUID) -> JSONResponse:
        running = await known_case(case_id)
        return JSONResponse(await _applied(running, case_id, invalidation_id))

    @router.delete("/{case_id}/invalidations/{invalidation_id}")
    async def revoke(
        case_id: str, invalidation_id: UUID, by: Annotated[str, Depends(operator_name)]
    ) -> JSONResponse:
        return await _revoke(await known_case(case_id), door, case_id, invalidation_id, by, wait_s)

    return router


async def _invalidate(
    running: InvalidationPorts,
    door: AdminDoor,
    case_id: str,
    body: InvalidationRequest,
    invalidation_filter: InvalidationFilter,
    by: str,
    wait_s: float,
) -> JSONResponse:
    """A dry run's numbers now, or the request through the log and its applied numbers."""
    if invalidations.is_empty(invalidation_filter):
        raise Problem(
            422,
            "The filter is empty: it would take out every signature of the case. Name at least one field.",
            errors=[{"field": "filter", "message": "name at least one field"}],
        )
    if body.dry_run:
        matched = await invalidations.dry_run(running.pool, case_id, invalidation_filter)
        return JSONResponse(matched.document())
    event = InvalidationRequested(
        invalidation_id=uuid.uuid4(),
        case_id=case_id,
        reason=body.reason,
        filter=invalidation_filter,
        requested_by=by,
    )
    await invalidations.request(running.pool, running.signatures_topic, event)
    door.record("invalidation_created", str(event.invalidation_id), by=by, case_id=case_id)
    running.wake_relay()
    document = await _within(
        wait_s, lambda: invalidations.applied(running.pool, case_id, event.invalidation_id)
    )
    return _answer(case_id, event.invalidation_id, document, 201)


async def _revoke(
    running: InvalidationPorts, door: AdminDoor, case_id: str, invalidation_id: UUID, by: str, wait_s: float
) -> JSONResponse:
    """The revocation through the log and what it gave back; revoked already: the same answer again."""
    document = await _applied(running, case_id, invalidation_id)
    if document["revoked_at"] is not None:
        return JSONResponse(document)
    event = InvalidationRevoked(invalidation_id=invalidation_id, case_id=case_id, revoked_by=by)
    await invalidations.request(running.pool, running.signatures_topic, event)
    door.record("invalidation_revoked", str(invalidation_id), by=by, case_id=case_id)
    running.wake_relay()

    async def revoked() -> dict[str, Any] | None:
        now = await invalidations.applied(running.pool, case_id, invalidation_id)
        return now if now is not None and now["revoked_at"] is not None else None

    return _answer(case_id, invalidation_id, await _within(wait_s, revoked), 200)


async def _applied(running: InvalidationPorts, case_id: str, invalidation_id: UUID) -> dict[str, Any]:
    document = await invalidations.applied(running.pool, case_id, invalidation_id)
    if document is None:
        raise Problem(
            404,
            f"Case {case_id!r} has no applied invalidation {invalidation_id}; one requested a moment ago "
            "may not be applied yet: try again in a few seconds.",
        )
    return document


async def _within(
    wait_s: float, done: Callable[[], Awaitable[dict[str, Any] | None]]
) -> dict[str, Any] | None:
    """``done()``'s document as soon as it has one, or None after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        document = await done()
        if document is not None or time.monotonic() >= deadline:
            return document
        await asyncio.sleep(_POLL_S)


def _answer(
    case_id: str, invalidation_id: UUID, document: dict[str, Any] | None, status: int
) -> JSONResponse:
    location = f"/v1/admin/cases/{case_id}/invalidations/{invalidation_id}"
    if document is None:
        # Tally has not applied it yet (a long queue of signatures before it): it will.
        return JSONResponse(
            {"id": str(invalidation_id), "status": "requested"},
            status_code=202,
            headers={"Location": location},
        )
    return JSONResponse(document, status_code=status, headers={"Location": location})


def supporter_keys_of(settings: ClameurSettings) -> SupporterKeys:
    """The supporter keys of these settings (for the filter's emails)."""
    return SupporterKeys.from_master(settings.secret.get_secret_value())
