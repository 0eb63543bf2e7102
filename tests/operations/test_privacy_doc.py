"""docs/privacy.md names every place supporters' data can live: each topic, each table.

A topic added to ``Topics.specs()`` or a table added by a migration without a row in
docs/privacy.md (what is kept, why, how long, who reads it, how it is erased) fails here,
so a new copy of personal data cannot ship unwritten.
"""

from __future__ import annotations

import re

from clameur.topics import Topics
from tests.support import ROOT

PRIVACY = ROOT / "docs" / "privacy.md"
FACETS = ("what is kept", "why", "how long", "who can read it", "how it is erased")

_CREATE_TABLE = re.compile(
    r"CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([a-z_]+\.[a-z_]+)", re.I
)


def created_tables() -> set[str]:
    """Every ``schema.table`` a migration of any service creates (``CREATE TABLE``)."""
    return {
        name.lower()
        for migration in ROOT.glob("services/*/migrations/versions/*.py")
        for name in _CREATE_TABLE.findall(migration.read_text())
    }


def topic_names() -> set[str]:
    return {spec.name for spec in Topics().specs()}


def rows(doc: str) -> dict[str, list[str]]:
    """The doc's table rows by the name in their first cell (```name``` → the other cells)."""
    found: dict[str, list[str]] = {}
    for line in doc.splitlines():
        match = re.match(r"\|\s*`([^`]+)`", line)
        if match:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            found[match.group(1)] = cells[1:]
    return found


def unwritten(names: set[str], doc: str) -> list[str]:
    """Names with no row, or a row with an empty facet, in ``doc``."""
    written = rows(doc)
    return sorted(
        name
        for name in names
        if name not in written or len(written[name]) < len(FACETS) or not all(written[name][: len(FACETS)])
    )


def test_the_parsers_see_what_exists() -> None:
    # The check below is only as good as what it compares: make sure it sees the places.
    tables = created_tables()
    assert {"tally.signatures", "tally.counters", "notify.deliveries"} <= tables
    assert {"signatures.v2", "contacts.v1", "contacts.v1.dlq"} <= topic_names()


def test_every_table_and_topic_has_a_full_row() -> None:
    doc = PRIVACY.read_text()
    missing = unwritten(created_tables() | topic_names(), doc)
    assert not missing, f"docs/privacy.md has no full row (kept, why, how long, who, erased) for: {missing}"


def test_a_new_table_or_topic_without_a_row_is_caught() -> None:
    doc = PRIVACY.read_text()
    assert unwritten({"notify.new_addresses", "addresses.v1"}, doc) == [
        "addresses.v1",
        "notify.new_addresses",
    ]
    half_written = doc + "\n| `notify.new_addresses` | emails | | | | |\n"
    assert unwritten({"notify.new_addresses"}, half_written) == ["notify.new_addresses"]


def test_the_tables_this_work_adds_are_written_down() -> None:
    # Added on other branches of issues 13 and 14; named here so the merge cannot lose them.
    expected = {
        "tally.confirmed_supporters",
        "tally.invalidations",
        "notify.contacts",
        "notify.invalidated_supporters",
        "notify.suppressions",
        "notify.case_retention",
    }
    assert unwritten(expected, PRIVACY.read_text()) == []


def test_the_paths_it_names_exist() -> None:
    named = {
        path
        for path in re.findall(r"`([\w./-]+\.py)`", PRIVACY.read_text())
        if path.split("/")[0] in {"clameur", "services", "devstack", "tests"}
    }
    assert named, "the page names the modules it describes"
    assert sorted(path for path in named if not (ROOT / path).exists()) == []
