"""Erasure on request: forget a supporter's personal data in notify, by email.

``POST /v1/admin/supporters/erase`` with ``Authorization: Bearer <CLAMEUR_ADMIN_TOKEN>``
and ``{"email": "..."}``.  The key is computed exactly as intake computes it, the
supporter's row, subscriptions, deliveries and unsubscriptions are deleted, and a
tombstone (the key and the time) keeps a replay of ``signatures.v1`` from bringing
them back.  Their signatures stay counted in tally: counts hold no personal data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from clameur.web import Problem, bearer_guard
from notify.ledger import Preferences
from notify.supporters import supporter_key

logger = logging.getLogger(__name__)


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)


class ErasureResult(BaseModel):
    status: str
    had_data: bool


@dataclass(frozen=True)
class ErasureDesk:
    secret: str
    admin_token: str
    preferences: Preferences


def erasure_router(desk: ErasureDesk) -> APIRouter:
    router = APIRouter()

    # A dependency runs before the body is validated: no validation answers to strangers.
    @router.post("/v1/admin/supporters/erase", dependencies=[Depends(bearer_guard(desk.admin_token))])
    async def erase(body: ErasureRequest) -> ErasureResult:
        try:
            key = supporter_key(desk.secret, body.email)
        except ValueError as invalid:
            raise Problem(
                422,
                "The email must be a valid address.",
                errors=[{"field": "email", "message": str(invalid)}],
            ) from None
        had_data = await desk.preferences.erase(key)
        logger.info("supporter erased on request", extra={"had_data": had_data})
        return ErasureResult(status="erased", had_data=had_data)

    return router
