"""Synthetic ``SignatureAccepted`` records, built fast enough to load a million of them.

The records are the JSON of :class:`clameur.events.SignatureAccepted` schema 2, as intake
publishes it on signatures.v2: no name, email or postal code, the ``email_domain``, and
``awaits_confirmation`` (False unless asked for).  They are checked by :func:`check_record`
and built as plain dicts with orjson: building a pydantic model per record would take
longer than tally takes to count it.  :func:`consenting_contacts` gives the matching
``Contact`` records of contacts.v1 (what notify needs to write to those supporters).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import uuid
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from clameur.events import Contact, SignatureAccepted

COUNTRIES = (
    "FR", "GB", "DE", "ES", "IT", "BE", "NL", "CH", "PT", "IE", "SE", "NO", "DK", "FI", "PL",
    "AT", "CZ", "GR", "MA", "DZ", "TN", "SN", "CI", "CM", "CA", "US", "BR", "MX", "JP", "AU",
)  # fmt: skip
FIRST_NAMES = ("Camille", "Léa", "Youssef", "Amina", "Jean", "Chloé", "Mohamed", "Sarah", "Hugo", "Inès")
LAST_NAMES = ("Durand", "Martin", "Benali", "Diallo", "Dubois", "Nguyen", "Müller", "García", "Traoré")
DOMAINS = ("gmail.com", "outlook.com", "yahoo.fr", "orange.fr", "gmx.de", "proton.me")
# Mostly signatures, a few letters and postcards (the campaign's mix).
ACTIONS = ("signature",) * 95 + ("letter",) * 3 + ("postcard",) * 2


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def signature_record(
    rng: random.Random,
    *,
    case_id: str,
    supporter_key: str,
    action: str,
    country: str,
    locale: str,
    received_at: str,
    email_domain: str = "gmail.com",
    updates: bool = False,
    awaits_confirmation: bool = False,
) -> bytes:
    """One ``SignatureAccepted`` (schema 2) as JSON bytes; ``updates``: consent to news."""
    return orjson.dumps(
        {
            "event_id": _uuid(rng),
            "type": "SignatureAccepted",
            "schema": 2,
            "occurred_at": received_at,
            "signature_id": _uuid(rng),
            "case_id": case_id,
            "action": action,
            "country": country,
            "locale": locale,
            "supporter_key": supporter_key,
            "email_domain": email_domain,
            "consent": {"updates": updates},
            "awaits_confirmation": awaits_confirmation,
            "source": {"widget": "bench", "page_url": None, "partner": None},
            "received_at": received_at,
        }
    )


def contact_record(
    *, supporter_key: str, email: str, first_name: str, locale: str, recorded_at: str
) -> bytes:
    """One ``Contact`` of contacts.v1 as JSON bytes (its record's key: the supporter key)."""
    return orjson.dumps(
        {
            "supporter_key": supporter_key,
            "email": email,
            "first_name": first_name,
            "locale": locale,
            "recorded_at": recorded_at,
        }
    )


def check_record(raw: bytes) -> SignatureAccepted:
    """Parse one record with the real model: the synthetic JSON must stay a valid event."""
    return SignatureAccepted.model_validate_json(raw)


def check_contact(raw: bytes) -> Contact:
    """Parse one contact with the real model."""
    return Contact.model_validate_json(raw)


@dataclass
class TallyLoad:
    """The tally bench's records: ``events`` in all, ``duplicate_share`` of them repeats of
    an earlier (case, supporter, action), ``hot_share`` on one hot case, the rest spread over
    ``other_cases`` cases, 30 countries.

    Iterate :meth:`records` once; afterwards ``distinct_by_case`` holds what exact counters
    must say (the number of distinct (case, supporter_key, action) per case).
    """

    run_id: str
    events: int
    duplicate_share: float = 0.10
    hot_share: float = 0.80
    other_cases: int = 19
    seed: int = 20_240_601
    distinct_by_case: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0

    @property
    def hot_case(self) -> str:
        return f"bench-hot-{self.run_id}"

    @property
    def cases(self) -> list[str]:
        return [self.hot_case] + [f"bench-case{n:02d}-{self.run_id}" for n in range(1, self.other_cases + 1)]

    @property
    def distinct(self) -> int:
        return sum(self.distinct_by_case.values())

    def _supporter_key(self, index: int) -> str:
        return hashlib.sha256(f"{self.run_id}:{index}".encode()).hexdigest()

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` records, keyed by case id like intake's."""
        rng = random.Random(self.seed)
        cases = self.cases
        keys = [case.encode() for case in cases]
        # Per distinct supporter action: its case, action and country (small arrays, not objects).
        case_of = array("B")
        action_of = array("B")
        country_of = array("B")
        actions = sorted(set(ACTIONS))
        action_index = {action: n for n, action in enumerate(actions)}
        received_at = datetime.now(UTC).isoformat()
        self.distinct_by_case.clear()
        self.duplicates = 0
        for _ in range(self.events):
            if case_of and rng.random() < self.duplicate_share:
                # A resubmission: the same supporter, case and action, a new event.
                index = rng.randrange(len(case_of))
                self.duplicates += 1
            else:
                index = len(case_of)
                case = 0 if rng.random() < self.hot_share else rng.randrange(1, len(cases))
                case_of.append(case)
                action_of.append(action_index[rng.choice(ACTIONS)])
                country_of.append(rng.randrange(len(COUNTRIES)))
                self.distinct_by_case[cases[case]] += 1
            case = case_of[index]
            yield (
                keys[case],
                signature_record(
                    rng,
                    case_id=cases[case],
                    supporter_key=self._supporter_key(index),
                    action=actions[action_of[index]],
                    country=COUNTRIES[country_of[index]],
                    locale="fr" if index % 2 else "en",
                    received_at=received_at,
                    email_domain=DOMAINS[index % len(DOMAINS)],
                ),
            )


def _consenting(*, run_id: str, count: int, secret: bytes) -> Iterator[tuple[int, str, str]]:
    """``(n, email, supporter_key)`` of the consenting supporters (the key: HMAC of the email)."""
    keyed = hmac.new(secret, digestmod=hashlib.sha256)
    for n in range(count):
        email = f"s{n}.{run_id}@bench.invalid"
        mac = keyed.copy()
        mac.update(email.encode())
        yield n, email, mac.hexdigest()


def consenting_supporters(
    *,
    case_id: str,
    run_id: str,
    count: int,
    secret: bytes,
    signed_ago: timedelta = timedelta(minutes=1),
    awaits_confirmation: bool = False,
) -> Iterator[tuple[bytes, bytes]]:
    """``count`` distinct supporters of ``case_id`` who consented to updates (notify's list).

    Emails are ``s<n>.<run>@bench.invalid`` (a reserved domain: nothing can ever be
    delivered there); the supporter key is the HMAC of the email with ``secret``, like
    intake's; half sign in French, half in English.  The signatures carry no address:
    :func:`consenting_contacts` (same arguments) gives their contacts.
    """
    rng = random.Random(7)
    received_at = (datetime.now(UTC) - signed_ago).isoformat()
    key = case_id.encode()
    for n, _email, supporter_key in _consenting(run_id=run_id, count=count, secret=secret):
        yield (
            key,
            signature_record(
                rng,
                case_id=case_id,
                supporter_key=supporter_key,
                action="signature",
                country=COUNTRIES[n % len(COUNTRIES)],
                locale="fr" if n % 2 else "en",
                received_at=received_at,
                email_domain="bench.invalid",
                updates=True,
                awaits_confirmation=awaits_confirmation,
            ),
        )


def consenting_contacts(
    *, run_id: str, count: int, secret: bytes, signed_ago: timedelta = timedelta(minutes=1)
) -> Iterator[tuple[bytes, bytes]]:
    """The contacts.v1 records ``(supporter key, Contact)`` of :func:`consenting_supporters`."""
    rng = random.Random(8)
    recorded_at = (datetime.now(UTC) - signed_ago).isoformat()
    for n, email, supporter_key in _consenting(run_id=run_id, count=count, secret=secret):
        yield (
            supporter_key.encode(),
            contact_record(
                supporter_key=supporter_key,
                email=email,
                first_name=rng.choice(FIRST_NAMES),
                locale="fr" if n % 2 else "en",
                recorded_at=recorded_at,
            ),
        )
