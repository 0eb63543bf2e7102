"""One master secret, a separate key per purpose (HKDF-SHA256, RFC 5869).

``CLAMEUR_SECRET`` is never used as a key itself: each purpose gets its own key derived
from it, so a key that leaks or must change for one purpose says nothing of the others,
and no value signed for one purpose verifies for another.

| purpose | used by | for |
|---|---|---|
| ``supporter`` | intake, tally, notify | supporter keys: HMAC of the canonical email (the dedupe key) |
| ``token`` | notify | confirmation, rejection and unsubscribe links |
| ``suppression`` | notify | suppression entries: who must never be mailed again, without the address |
| ``contact-at-rest`` | notify | encrypting the emails and first names notify keeps in Postgres |

Only ``token`` may come from other master secrets as well, the rotation list
``CLAMEUR_TOKEN_SECRETS`` (docs/operations.md, "Rotating the token key").  The others
must stay on ``CLAMEUR_SECRET``: supporter keys and suppression hashes are stored and
compared forever, and sealed contacts must still open.
"""

from __future__ import annotations

from enum import StrEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_SALT = b"clameur.keys.v1"


class Purpose(StrEnum):
    SUPPORTER = "supporter"
    TOKEN = "token"  # noqa: S105 - a purpose's name, not a secret
    SUPPRESSION = "suppression"
    CONTACT_AT_REST = "contact-at-rest"


def derive_key(master: str | bytes, purpose: Purpose, length: int = 32) -> bytes:
    """The key of ``purpose``, derived from the master secret (the same inputs, the same key)."""
    secret = master.encode() if isinstance(master, str) else master
    if not secret:
        raise ValueError("the master secret is empty")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=purpose.value.encode()).derive(
        secret
    )
