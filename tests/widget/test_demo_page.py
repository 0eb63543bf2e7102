"""The demo page of ``make up``: the widget of each case of the last ``make demo``, on an
origin of its own, under the CSP the README recommends."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect

from devstack.demo_page import command, content_security_policy, render
from tests.support import ROOT, http_status, wait_until
from tests.widget.conftest import Visit, WidgetStack, eventually_true


def test_the_page_has_no_inline_script_or_style_and_one_widget_per_case() -> None:
    page = render("http://127.0.0.1:8001", "pk_dev_demo", ["nawal-benaissa-1a2b", "sengwer-1a2b"]).decode()
    assert page.count('class="clameur-petition"') == 2
    assert 'data-case="sengwer-1a2b"' in page
    assert re.findall(r"<script[^>]*>", page) == ['<script src="http://127.0.0.1:8001/v1/widget.js" async>']
    assert "<style" not in page and "style=" not in page
    csp = content_security_policy("http://127.0.0.1:8001", "http://127.0.0.1:8002")
    assert "script-src http://127.0.0.1:8001;" in csp and "'unsafe-inline'" not in csp
    assert "make demo" in render("http://127.0.0.1:8001", "pk_dev_demo", []).decode()


@pytest.mark.slow
def test_a_person_signs_on_the_demo_page_and_watches_the_counter(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str], tmp_path: Path
) -> None:
    ids = [new_id("nawal-benaissa"), new_id("sengwer")]
    for case_id in ids:
        widget_stack.create_case(case_id)
    cases = tmp_path / "demo-cases.json"
    cases.write_text(json.dumps(ids))
    port = widget_stack.demo_page_port
    server = subprocess.Popen(
        command(
            port=port,
            intake=widget_stack.intake,
            tally=widget_stack.tally,
            widget_key=widget_stack.widget_key,
            cases_file=cases,
        ),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/") == 200, timeout=15, what="the demo page")
        page = visit.page
        page.goto(f"http://127.0.0.1:{port}/")
        widgets = page.locator(".clameur-petition")
        expect(widgets).to_have_count(2)
        second = widgets.nth(1)
        expect(second.locator("form")).to_be_visible()
        second.locator('input[name="first_name"]').fill("Fatou")
        second.locator('input[name="last_name"]').fill("Traoré")
        second.locator('input[name="email"]').fill("fatou.traore@example.org")
        second.locator('button[type="submit"]').click()
        expect(second.locator(".done")).to_be_visible()
        eventually_true(
            lambda: second.locator(".count strong").inner_text() == "1", within=3, what="the counter to move"
        )
        visit.shoot("1-demo-page")
        visit.phone()
        visit.shoot("2-demo-page-phone")
        assert not visit.console_errors, visit.console_errors
    finally:
        server.terminate()
        server.wait(timeout=10)
