"""Widget keys bound to origins (no services)."""

from __future__ import annotations

from intake.widgets import WidgetKeys

SITE = "https://free-nawal.example"
OTHER = "https://other.example"
KEYS = {"pk_nawal": [SITE, "https://www.free-nawal.example/"], "pk_press": ["https://press.example"]}


def test_a_browser_needs_a_key_listing_its_origin() -> None:
    widgets = WidgetKeys(KEYS, required=False)
    allowed = widgets.judge("pk_nawal", SITE)
    assert allowed.allowed
    assert allowed.cors_origin == SITE
    assert widgets.judge("pk_nawal", "https://www.free-nawal.example").allowed
    assert not widgets.judge("pk_nawal", OTHER).allowed
    assert not widgets.judge("pk_press", SITE).allowed
    assert not widgets.judge(None, SITE).allowed
    assert not widgets.judge("pk_unknown", SITE).allowed


def test_servers_need_a_key_only_when_required() -> None:
    assert WidgetKeys(KEYS, required=False).judge(None, None).allowed
    assert not WidgetKeys(KEYS, required=True).judge(None, None).allowed
    assert WidgetKeys(KEYS, required=True).judge("pk_press", None).allowed
    assert not WidgetKeys(KEYS, required=False).judge("pk_unknown", None).allowed


def test_preflights_are_judged_by_the_query_key_or_by_every_key() -> None:
    widgets = WidgetKeys(KEYS, required=False)
    assert widgets.judge_preflight(None, "https://press.example").cors_origin == "https://press.example"
    assert widgets.judge_preflight("pk_nawal", SITE).allowed
    assert not widgets.judge_preflight("pk_nawal", "https://press.example").allowed
    assert not widgets.judge_preflight(None, OTHER).allowed
    assert not widgets.judge_preflight(None, None).allowed
