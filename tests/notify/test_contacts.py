"""Contacts sealed at rest: AES-GCM under the derived key, bound to their row and field."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from notify.contacts import ContactCipher


def test_a_sealed_value_opens_only_with_the_key_in_its_own_row_and_field() -> None:
    cipher = ContactCipher("secret")
    sealed = cipher.seal("key-a", "email", "amina@example.org")
    assert b"amina" not in sealed
    assert cipher.open("key-a", "email", sealed) == "amina@example.org"
    assert cipher.seal("key-a", "email", "amina@example.org") != sealed, "a fresh nonce each time"
    for key, field, other in (("key-b", "email", cipher), ("key-a", "first_name", cipher)):
        with pytest.raises(InvalidTag):
            other.open(key, field, sealed)
    with pytest.raises(InvalidTag):
        ContactCipher("other-secret").open("key-a", "email", sealed)
