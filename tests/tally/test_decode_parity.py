"""Tally's fast decoder and the event model agree on what is a signature and what is poison.

``tally.counting.decode_countable`` checks records against a msgspec copy of schema 2 of
``SignatureAccepted`` (to avoid building models per record) and falls back to the model
for what the copy refuses; these cases keep the copy and the model from drifting apart.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from tally.counting import _SIGNATURE_FIELDS, decode_countable

from clameur.events import SignatureAccepted, decode_signature, decode_signature_log_event

VALID: dict[str, Any] = orjson.loads(
    SignatureAccepted(
        case_id="nawal-benaissa",
        country="FR",
        locale="fr",
        supporter_key="ab" * 32,
        email_domain="example.org",
        awaits_confirmation=True,
    ).to_json()
)


def _without(field: str) -> dict[str, Any]:
    return {key: value for key, value in VALID.items() if key != field}


def _without_schema() -> dict[str, Any]:
    return _without("schema")


VARIANTS: dict[str, dict[str, Any]] = {
    "valid": VALID,
    "extra field": {**VALID, "future_field": 1},
    "minimal": {
        k: VALID[k] for k in ("type", "case_id", "country", "locale", "supporter_key", "email_domain")
    },
    "letter": {**VALID, "action": "letter"},
    "unknown action": {**VALID, "action": "petition"},
    "naive received_at": {**VALID, "received_at": "2026-11-20T10:00:00"},
    "received_at not a date": {**VALID, "received_at": "yesterday"},
    "signature_id not a uuid": {**VALID, "signature_id": "42"},
    "wrong type": {**VALID, "type": "MilestoneReached"},
    "case_id a number": {**VALID, "case_id": 7},
    "consent not an object": {**VALID, "consent": "yes"},
    "source with extra": {**VALID, "source": {"widget": "w", "campaign": "x"}},
    "email_domain null": {**VALID, "email_domain": None},
    "awaits_confirmation as a string": {**VALID, "awaits_confirmation": "yes"},
    "schema 1": {**VALID, "schema": 1},
    "schema as a string": {**VALID, "schema": "2"},
    "schema_version instead of schema": {**_without_schema(), "schema_version": 2},
    "a confirmation": {"type": "SignatureConfirmed", "case_id": "nawal-benaissa", "supporter_key": "ab"},
    "received_at as a number": {**VALID, "received_at": 1_795_000_000},
    "received_at with an offset": {**VALID, "received_at": "2026-11-20T11:00:00+01:00"},
    "signature_id without hyphens": {**VALID, "signature_id": VALID["signature_id"].replace("-", "")},
    "event_id null": {**VALID, "event_id": None},
    "updates as a string": {**VALID, "consent": {"updates": "true"}},
    "page_url null": {**VALID, "source": {"page_url": None}},
    "locale a number": {**VALID, "locale": 5},
    **{f"without {field}": _without(field) for field in VALID},
}


def _model_accepts(raw: bytes) -> bool:
    try:
        return isinstance(decode_signature_log_event(raw), SignatureAccepted)
    except ValidationError:
        return False


def _fast_decoder_accepts_schema(raw: bytes) -> bool:
    try:
        decode_countable(raw)
    except ValueError as error:
        # Tally's own checks beyond the schema (slug, country, key length) are not parity.
        return not isinstance(error, ValidationError) and _model_accepts(raw)
    return True


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_fast_decoder_and_the_model_agree(name: str) -> None:
    raw = orjson.dumps(VARIANTS[name])
    assert _fast_decoder_accepts_schema(raw) == _model_accepts(raw)


def test_the_fast_decoder_reads_the_same_values_as_the_model() -> None:
    raw = orjson.dumps(VALID)
    fast, model = decode_countable(raw), decode_signature(raw)
    assert (fast.case_id, fast.supporter_key, fast.action, fast.country, fast.locale) == (
        model.case_id,
        model.supporter_key,
        model.action,
        model.country,
        model.locale,
    )
    assert fast.signature_id == model.signature_id
    assert fast.received_at == model.received_at


def test_a_schema_2_signature_takes_the_fast_path() -> None:
    # The drain's speed depends on it: the model decodes it too, but three times slower.
    fields = _SIGNATURE_FIELDS.decode(orjson.dumps(VALID))
    assert fields.awaits_confirmation is True
    assert fields.email_domain == "example.org"


def test_not_json_is_poison_to_both() -> None:
    with pytest.raises(ValueError):
        decode_countable(b"{not json")
    assert not _model_accepts(b"{not json")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("country", "FR\n"),
        ("country", "fr"),
        ("case_id", "nawal-benaissa\n"),
        ("case_id", "Nawal"),
        ("supporter_key", ""),
        ("supporter_key", "a" * 129),
        ("locale", ""),
    ],
)
def test_tally_refuses_what_would_make_a_counter_wrong(field: str, value: str) -> None:
    # Valid to the event's schema, but a counter keyed by it would be wrong forever.
    raw = orjson.dumps({**VALID, field: value})
    assert _model_accepts(raw)
    with pytest.raises(ValueError, match=field):
        decode_countable(raw)


def test_defaults_of_the_model_fill_what_the_record_leaves_out() -> None:
    signature = decode_countable(orjson.dumps(VARIANTS["minimal"]))
    assert signature.action == "signature"
    assert signature.received_at.tzinfo is not None
    assert signature.signature_id.version == 4
