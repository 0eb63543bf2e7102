"""Each purpose gets its own key from the one master secret."""

from __future__ import annotations

import pytest

from clameur.keys import Purpose, derive_key


def test_the_same_master_and_purpose_give_the_same_key() -> None:
    assert derive_key("master", Purpose.TOKEN) == derive_key(b"master", Purpose.TOKEN)
    assert len(derive_key("master", Purpose.TOKEN)) == 32


def test_every_purpose_has_its_own_key_and_none_is_the_master() -> None:
    keys = {derive_key("master", purpose) for purpose in Purpose}
    assert len(keys) == len(Purpose)
    assert b"master".ljust(32, b"\0") not in keys


def test_another_master_gives_other_keys() -> None:
    assert derive_key("master", Purpose.SUPPORTER) != derive_key("other", Purpose.SUPPORTER)


def test_an_empty_master_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        derive_key("", Purpose.SUPPORTER)
