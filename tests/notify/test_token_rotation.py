"""A rotated token key, end to end through notify: old links keep working until removed.

Notify runs with ``CLAMEUR_TOKEN_SECRETS=[NEWEST, PREVIOUS]``: the original secret
(``CLAMEUR_SECRET``, which signed the first links) has been rotated out of the list.
Supporter keys and suppression hashes stay under ``CLAMEUR_SECRET`` throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from notify.settings import NotifySettings
from notify.suppressions import address_hash, is_suppressed
from notify.tokens import TokenSigner, UnsubscribeRequest
from pydantic import ValidationError

from tests.conftest import TEST_SECRET
from tests.notify.conftest import RunningNotify, scrape
from tests.notify.forgetting import seed_supporter
from tests.support import PRODUCTION, metric

NEWEST = "token-secret-newest-0123456789abcdef0123456789"
PREVIOUS = "token-secret-previous-0123456789abcdef01234567"


@pytest.fixture
def notify_overrides() -> dict[str, Any]:
    return {"token_secrets": [NEWEST, PREVIOUS]}


def test_the_secrets_are_read_from_a_json_list_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAMEUR_TOKEN_SECRETS", orjson.dumps([NEWEST, PREVIOUS]).decode())
    assert NotifySettings().token_masters == (NEWEST, PREVIOUS)
    monkeypatch.delenv("CLAMEUR_TOKEN_SECRETS")
    monkeypatch.setenv("CLAMEUR_SECRET", TEST_SECRET)
    assert NotifySettings().token_masters == (TEST_SECRET,)  # no rotation yet: the master signs


def test_production_refuses_a_short_token_secret() -> None:
    with pytest.raises(ValidationError, match="CLAMEUR_TOKEN_SECRETS: each secret needs at least 32"):
        NotifySettings(
            **{**PRODUCTION, "smtp_url": "smtps://smtp.example.org", "token_secrets": [NEWEST, "short"]}
        )


def _path(secret: str, supporter_key: str, case_id: str) -> str:
    return f"/v1/unsubscribe/{TokenSigner(secret).sign(UnsubscribeRequest(supporter_key, case_id, 'fr'))}"


async def test_a_link_signed_with_a_previous_secret_still_unsubscribes(
    notify: RunningNotify, new_id: Callable[..., str]
) -> None:
    assert notify.settings.token_masters == (NEWEST, PREVIOUS)
    case_id = new_id("nawal")
    email = f"amina.{case_id}@example.org"
    key = await seed_supporter(notify.database, email, "Amina", [case_id])

    answer = await notify.client.post(_path(PREVIOUS, key, case_id))
    assert answer.status_code == 200, answer.text
    # The suppression is keyed under CLAMEUR_SECRET, as before the rotation.
    assert await is_suppressed(notify.database, address_hash(TEST_SECRET, email), case_id)
    assert metric(await scrape(notify.client), "clameur_notify_unsubscribes_total", scope="case") == 1


async def test_a_link_signed_with_a_removed_secret_unsubscribes_nobody(
    notify: RunningNotify, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    email = f"ben.{case_id}@example.org"
    key = await seed_supporter(notify.database, email, "Ben", [case_id])

    removed = await notify.client.post(_path(TEST_SECRET, key, case_id))
    assert removed.status_code == 400, removed.text
    assert not await is_suppressed(notify.database, address_hash(TEST_SECRET, email), case_id)
    # The same request under the newest secret goes through: only the signature differed.
    assert (await notify.client.post(_path(NEWEST, key, case_id))).status_code == 200
    assert await is_suppressed(notify.database, address_hash(TEST_SECRET, email), case_id)
