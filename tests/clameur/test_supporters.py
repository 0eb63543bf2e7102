"""One person, one supporter key: the canonical email and the provider table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clameur.supporters import SupporterKeys, canonical_email, load_providers


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("a.b.c@gmail.com", "abc@gmail.com"),
        ("abc+1@gmail.com", "abc@gmail.com"),
        ("abc@googlemail.com", "abc@gmail.com"),
        ("  A.B.C+petitions@GoogleMail.COM\t", "abc@gmail.com"),
        ("camille+news@outlook.fr", "camille@outlook.fr"),
        ("camille.durand@hotmail.com", "camille.durand@hotmail.com"),  # dots matter there
        ("amina+x@icloud.com", "amina@icloud.com"),
        ("amina@me.com", "amina@me.com"),  # another namespace than icloud.com
        ("nawal+tag@proton.me", "nawal@proton.me"),
        ("nawal@pm.me", "nawal@proton.me"),
        ("jo-petitions@yahoo.fr", "jo@yahoo.fr"),
        ("jo+petitions@yahoo.fr", "jo+petitions@yahoo.fr"),  # Yahoo's separator is "-"
        ("a.b+c@fastmail.com", "a.b@fastmail.com"),
        ("Camille.Durand+x@Example.ORG", "camille.durand+x@example.org"),  # unknown provider: as is
        ("q@bücher.example", "q@xn--bcher-kva.example"),
        ("+only-a-tag@gmail.com", "+only-a-tag@gmail.com"),  # nothing before the tag: kept whole
    ],
)
def test_the_canonical_form_of_an_address(typed: str, canonical: str) -> None:
    assert canonical_email(typed) == canonical


def test_unicode_variants_are_one_address() -> None:
    composed, decomposed = "zoé@example.org", "zoe\u0301@example.org"
    assert canonical_email(composed) == canonical_email(decomposed)


def test_the_aliases_of_one_gmail_user_are_one_supporter() -> None:
    keys = SupporterKeys.from_master("a-master-secret")
    aliases = {"a.b.c@gmail.com", "abc+1@gmail.com", "abc@googlemail.com"}
    assert len({keys.of_address(alias) for alias in aliases}) == 1
    assert keys.of_address("abd@gmail.com") != keys.of_address("abc@gmail.com")


def test_supporter_keys_depend_on_the_master_and_are_not_a_plain_hash() -> None:
    one, other = SupporterKeys.from_master("one"), SupporterKeys.from_master("other")
    assert one.of("abc@gmail.com") != other.of("abc@gmail.com")
    assert len(one.of("abc@gmail.com")) == 64


def test_an_invalid_address_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="not a valid email"):
        canonical_email("not an address")


def test_a_domain_listed_twice_in_the_table_is_refused(tmp_path: Path) -> None:
    table = {
        "providers": [
            {"name": "A", "domains": ["a.example"], "ignore_dots": False, "tag_separators": ["+"]},
            {"name": "B", "domains": ["A.example"], "ignore_dots": False, "tag_separators": ["+"]},
        ]
    }
    path = tmp_path / "providers.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError, match="listed twice"):
        load_providers(path)


def test_every_provider_of_the_shipped_table_names_its_source() -> None:
    table = json.loads((Path(__file__).parents[2] / "clameur" / "email_providers.json").read_text())
    assert all(entry.get("source") for entry in table["providers"])
    assert len(load_providers()) >= 20
