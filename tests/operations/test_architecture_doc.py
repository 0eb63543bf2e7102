"""docs/architecture.md stays current: the files it names exist, and every port is in it.

The docstrings and the ADRs cite that page, so a file moved or a Protocol added without
it is a failing test rather than a page that quietly lies.
"""

from __future__ import annotations

import ast
import re

from tests.support import ROOT

ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _named_paths(text: str) -> set[str]:
    return {
        path
        for path in re.findall(r"`([\w./-]+)`", text)
        if "/" in path
        and path.split("/")[0] in {"clameur", "services", "devstack", "tests", "deploy", "docs"}
    }


def _protocols() -> set[str]:
    found = set()
    for source in [*ROOT.glob("clameur/*.py"), *ROOT.glob("services/*/*.py")]:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                (isinstance(base, ast.Name) and base.id == "Protocol")
                or (isinstance(base, ast.Subscript) and getattr(base.value, "id", "") == "Protocol")
                for base in node.bases
            ):
                found.add(node.name)
    return found


def test_every_file_it_names_exists() -> None:
    named = _named_paths(ARCHITECTURE.read_text())
    assert "clameur/consumer.py" in named
    assert not [path for path in sorted(named) if not (ROOT / path).exists()]


def test_every_port_is_in_the_table_of_ports() -> None:
    ports = ARCHITECTURE.read_text().split("## Ports and adapters", 1)[1]
    protocols = _protocols()
    assert "BatchApplier" in protocols
    # A private protocol (a module's own typing aid, such as notify's appliers that also
    # name their group) is not a port between services and adapters.
    public = sorted(name for name in protocols if not name.startswith("_"))
    assert not [name for name in public if f"`{name}`" not in ports]


def test_no_source_cites_a_document_outside_the_repository() -> None:
    citing = [
        str(path.relative_to(ROOT))
        for pattern in ("clameur/**/*.py", "services/**/*.py", "devstack/*.py", "bench/*.py", "docs/**/*.md")
        for path in ROOT.glob(pattern)
        if re.search(r"\b(STYLE|DESIGN)\.md\b", path.read_text())
    ]
    assert not citing, f"cite docs/architecture.md (or the right doc in docs/) instead: {citing}"
