"""The petition widget on a campaign page of another origin, in headless Chromium, against
the real intake, tally and notify.  Each test first proves that what it relies on happened
(the case is known, the answer came, the count moved) before it checks the outcome."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import Locator, Page, Response, expect

from clameur.supporters import SupporterKeys
from tests.conftest import TEST_SECRET
from tests.widget.conftest import ADMIN, AXE, Visit, WidgetStack, eventually_true

pytestmark = pytest.mark.slow
SIGNATURES = re.compile(r"/v1/cases/[^/]+/signatures")


def _widget(page: Page, index: int = 0) -> Locator:
    return page.locator(".clameur-petition").nth(index)


def _fill(widget: Locator, first: str, last: str, email: str, country: str = "FR") -> None:
    widget.locator('input[name="first_name"]').fill(first)
    widget.locator('input[name="last_name"]').fill(last)
    widget.locator('input[name="email"]').fill(email)
    widget.locator('select[name="country"]').select_option(country)


def _counter_shows(widget: Locator, total: int) -> Callable[[], bool]:
    # French groups thousands with a narrow no-break space; small totals are plain digits.
    return lambda: widget.locator(".count strong").first.inner_text().strip() == str(total)


def _posted(page: Page, press: Callable[[], None]) -> Response:
    """Do ``press`` (a click, a key); returns intake's answer to the signature it sends."""
    with page.expect_response(
        lambda r: bool(SIGNATURES.search(r.url)) and r.request.method == "POST"
    ) as sent:
        press()
    return sent.value


def _submit(page: Page, widget: Locator) -> int:
    """Press the button; returns the status of intake's answer (the precondition)."""
    return _posted(page, widget.locator('button[type="submit"]').click).status


def _signing_page(
    widget_stack: WidgetStack, visit: Visit, case_id: str, *, lang: str = "fr", after: str = "", **case: Any
) -> tuple[Page, Locator]:
    """A new case (``case`` completes it) and the page of another origin that shows its
    petition in ``lang``, then ``after``; returns the page and the widget."""
    widget_stack.create_case(case_id, **case)
    page = visit.page
    page.goto(widget_stack.petition_page(case_id, lang=lang, after=after))
    return page, _widget(page)


def _axe(page: Page) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.x A/AA violations on the page (shadow roots included)."""
    page.evaluate(AXE.read_text())  # evaluated by the driver: the page's CSP does not apply
    result = page.evaluate(
        "async () => (await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']}})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target)}))"
    )
    assert isinstance(result, list)
    return result


def _only_clameur_and_no_csp_error(visit: Visit, stack: WidgetStack) -> None:
    assert visit.request_origins <= {stack.host.origin, stack.intake, stack.tally}, visit.request_origins
    assert not visit.console_errors, visit.console_errors


def test_a_supporter_signs_and_the_counter_moves_within_two_seconds(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    counter = f'<div class="clameur-counter" data-case="{case_id}"></div>'
    page, widget = _signing_page(widget_stack, visit, case_id, after=counter)
    expect(widget.locator("h2")).to_have_text("Nawal Benaissa : stop au harcèlement")
    expect(widget.locator(".count")).to_have_text("0 signature")
    expect(widget.locator(".next")).to_have_text(re.compile(r"Prochain objectif : 1\s000"))
    visit.shoot("1-form")

    _fill(widget, "Camille", "Durand", "camille.durand@example.org")
    visit.shoot("2-filled")
    assert _submit(page, widget) == 202
    expect(widget.locator(".done h3")).to_have_text("Merci, votre signature est enregistrée !")
    took = eventually_true(_counter_shows(widget, 1), within=2.0, what="the widget's counter to show 1")
    alone = page.locator(".clameur-counter")
    expect(alone.locator(".count")).to_have_text("1 signature")
    assert widget_stack.total(case_id) == 1
    visit.shoot("3-thanks")
    print(f"counter moved {took:.2f} s after the 202")
    _only_clameur_and_no_csp_error(visit, widget_stack)

    visit.phone()
    page.reload()
    expect(_widget(page).locator('input[name="email"]')).to_be_visible()
    expect(_widget(page).locator(".count strong")).to_have_text("1")
    visit.shoot("4-phone-form")


def test_on_a_confirmation_case_the_supporter_is_asked_to_check_their_inbox(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("atena")
    page, widget = _signing_page(widget_stack, visit, case_id, lang="en", confirmation="email")
    _fill(widget, "Camille", "Durand", f"camille.{case_id}@example.org")
    answer = _posted(page, widget.locator('button[type="submit"]').click)
    assert answer.status == 202 and answer.json()["status"] == "pending_confirmation"
    expect(widget.locator(".done h3")).to_have_text("Almost done: check your inbox")
    expect(widget.locator(".done")).to_contain_text("Click its link to confirm your signature.")
    visit.shoot("1-check-your-inbox")
    # Not counted until confirmed: the public document says one awaits confirmation.
    eventually_true(
        lambda: widget_stack.case(case_id)["pending"] == 1, within=10, what="tally to store it pending"
    )
    assert widget_stack.total(case_id) == 0
    expect(widget.locator(".count")).to_have_text("0 signatures")


def test_the_same_supporter_twice_is_thanked_twice_and_counted_once(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("sengwer")
    page, widget = _signing_page(widget_stack, visit, case_id, lang="en")
    _fill(widget, "Nadia", "Benali", "nadia.benali@example.org")
    assert _submit(page, widget) == 202
    eventually_true(_counter_shows(widget, 1), within=5, what="the first signature counted")

    page.reload()
    _fill(_widget(page), "Nadia", "Benali", "  Nadia.Benali@Example.org ")
    assert _submit(page, _widget(page)) == 202, "a duplicate is accepted: the widget cannot tell"
    expect(_widget(page).locator(".done h3")).to_have_text("Thank you, your signature is saved!")
    visit.shoot("1-thanked-again")
    # Another supporter after the duplicate: once they are counted, so was the duplicate
    # (one case, one partition, in order).
    page.reload()
    _fill(_widget(page), "Omar", "Haddad", "omar.haddad@example.org", country="MA")
    assert _submit(page, _widget(page)) == 202
    eventually_true(_counter_shows(_widget(page), 2), within=5, what="the next supporter counted")
    assert widget_stack.total(case_id) == 2
    expect(_widget(page).locator(".count")).to_have_text("2 signatures")
    visit.shoot("2-counted-once")


def test_a_refused_field_shows_its_message_next_to_it(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("atena")
    page, widget = _signing_page(widget_stack, visit, case_id, lang="en")
    # Passes the widget's own checks, refused by intake: a name may not hold a web address.
    _fill(widget, "Camille www.example.com", "Durand", "camille@example.org")
    assert _submit(page, widget) == 422
    first_name = widget.locator('input[name="first_name"]')
    expect(first_name).to_have_attribute("aria-invalid", "true")
    expect(first_name).to_have_attribute("aria-describedby", "e-first_name")
    expect(widget.locator("#e-first_name")).to_have_text("Must not contain a web address.")
    expect(first_name).to_be_focused()
    expect(widget.locator("#e-last_name")).to_be_empty()
    expect(widget.locator(".status")).to_contain_text("Some fields need fixing")
    expect(widget.locator('input[name="email"]')).to_have_value("camille@example.org")
    visit.shoot("1-error-next-to-field")

    # The widget's own checks, in French, before anything is sent.
    page.goto(widget_stack.petition_page(case_id))
    widget = _widget(page)
    widget.locator('button[type="submit"]').click()
    expect(widget.locator("#e-email")).to_have_text(re.compile("adresse e-mail valide"))
    visit.shoot("2-empty-form-fr")
    visit.phone()
    visit.shoot("3-empty-form-fr-phone")
    assert widget_stack.total(case_id) == 0


def test_a_victory_replaces_the_form_with_its_headline(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("magai")
    page, widget = _signing_page(widget_stack, visit, case_id)
    expect(widget.locator("form")).to_be_visible()
    widget_stack.declare_victory(case_id)
    # The live stream tells the open page; no reload.
    expect(widget.locator(".ended h3")).to_have_text("Victoire ! Nawal Benaissa est libre !", timeout=10_000)
    expect(widget.locator("form")).to_have_count(0)
    expect(widget.locator(".ended")).to_contain_text("Plus besoin d\u2019agir")
    visit.shoot("1-victory")
    visit.phone()
    visit.shoot("2-victory-phone")
    # A page opened after the victory never shows the form.
    page.reload()
    expect(_widget(page).locator(".ended h3")).to_be_visible()
    expect(_widget(page).locator("form")).to_have_count(0)


def test_a_closed_case_says_so_and_shows_no_form(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("closed")
    _, widget = _signing_page(widget_stack, visit, case_id)
    expect(widget.locator("form")).to_be_visible()
    _fill(widget, "Amina", "Diallo", "amina.diallo@example.org")
    closed = httpx.post(f"{widget_stack.tally}/v1/admin/cases/{case_id}/close", headers=ADMIN, timeout=10)
    assert closed.status_code == 200, closed.text
    # Whichever comes first, the live stream or intake's 410, the form gives way.
    expect(widget.locator(".ended.closed")).to_have_text(
        "Cette pétition est close : elle ne reçoit plus de signatures.", timeout=10_000
    )
    expect(widget.locator("form")).to_have_count(0)
    visit.shoot("1-closed")


def test_consent_is_stored_as_it_was_ticked(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("germain")
    widget_stack.create_case(case_id)
    page = visit.page
    url = widget_stack.petition_page(case_id)
    keys = SupporterKeys.from_master(TEST_SECRET)
    unticked, ticked = f"lea.{case_id}@example.org", f"hugo.{case_id}@example.org"

    page.goto(url)
    widget = _widget(page)
    expect(widget.locator('input[name="consent"]')).not_to_be_checked()
    _fill(widget, "Léa", "Moreau", unticked)
    assert _submit(page, widget) == 202

    page.goto(url)
    widget = _widget(page)
    _fill(widget, "Hugo", "Girard", ticked)
    widget.locator('input[name="consent"]').check()
    visit.shoot("1-consent-ticked")
    assert _submit(page, widget) == 202

    def subscribed() -> set[str]:
        rows = widget_stack.fetch_rows(
            "SELECT supporter_key FROM notify.subscriptions WHERE case_id = $1 AND wants_updates", case_id
        )
        return {row["supporter_key"] for row in rows}

    # Notify reads signatures in order: once the second is stored, the first was read.
    eventually_true(
        lambda: keys.of_address(ticked) in subscribed(), within=20, what="notify to store the ticked"
    )
    eventually_true(lambda: widget_stack.total(case_id) == 2, within=10, what="both signatures counted")
    assert keys.of_address(unticked) not in subscribed()
    # Only the ticked supporter's contact (sealed: notify keeps no address in clear) is kept.
    stored = widget_stack.fetch_rows(
        "SELECT supporter_key FROM notify.contacts WHERE supporter_key = ANY($1::text[])",
        [keys.of_address(unticked), keys.of_address(ticked)],
    )
    assert [row["supporter_key"] for row in stored] == [keys.of_address(ticked)]


def test_keyboard_only_signing(widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]) -> None:
    case_id = new_id("nawal")
    page, widget = _signing_page(widget_stack, visit, case_id, lang="en", actions=["signature", "letter"])
    expect(widget.locator("form")).to_be_visible()
    first_name = widget.locator('input[name="first_name"]')
    page.keyboard.press("Tab")
    expect(first_name).to_be_focused()
    outline = first_name.evaluate(
        "el => getComputedStyle(el).outlineStyle + ' ' + getComputedStyle(el).outlineWidth"
    )
    assert outline == "solid 3px", f"focus must be visible, got {outline}"
    visit.shoot("1-focus-visible")
    page.keyboard.type("Inès")
    page.keyboard.press("Tab")
    page.keyboard.type("Diallo")
    page.keyboard.press("Tab")
    page.keyboard.type("ines.diallo@example.org")
    page.keyboard.press("Tab")
    expect(widget.locator('select[name="country"]')).to_be_focused()
    page.keyboard.type("Belgique")  # a closed select follows typed letters
    page.keyboard.press("Tab")
    expect(widget.locator('select[name="action"]')).to_be_focused()
    page.keyboard.press("Tab")
    expect(widget.locator('input[name="consent"]')).to_be_focused()
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    expect(widget.locator('button[type="submit"]')).to_be_focused()
    visit.shoot("2-keyboard-filled")
    answer = _posted(page, lambda: page.keyboard.press("Enter"))
    assert answer.status == 202
    body = json.loads(answer.request.post_data or "{}")
    assert body["country"] == "BE"
    assert body["consent"] == {"updates": True}
    assert body["action"] == "signature"
    assert body["locale"] == "en"
    assert "website" not in body, "the honeypot is out of the tab order"
    done = widget.locator(".done h3")
    expect(done).to_be_focused()
    visit.shoot("3-keyboard-thanks")


def test_axe_finds_no_violation_in_any_state(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    counter = f'<div class="clameur-counter" data-case="{case_id}"></div>'
    page, widget = _signing_page(widget_stack, visit, case_id, after=counter, actions=["signature", "letter"])
    expect(widget.locator("form")).to_be_visible()
    assert _axe(page) == [], "the form"

    widget.locator('button[type="submit"]').click()
    expect(widget.locator("#e-first_name")).not_to_be_empty()
    assert _axe(page) == [], "the form with its errors"

    _fill(widget, "Zoé", "Leroy", "zoe.leroy@example.org")
    assert _submit(page, widget) == 202
    expect(widget.locator(".done")).to_be_visible()
    assert _axe(page) == [], "the thank-you"

    widget_stack.declare_victory(case_id)
    expect(widget.locator(".ended")).to_be_visible(timeout=10_000)
    assert _axe(page) == [], "the victory"
    visit.phone()
    assert _axe(page) == [], "the victory on a phone"


def test_the_network_down_is_said_and_what_was_typed_is_kept(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    page, widget = _signing_page(widget_stack, visit, case_id)
    _fill(widget, "Karim", "Cherki", "karim.cherki@example.org")
    visit.context.set_offline(True)
    widget.locator('button[type="submit"]').click()
    expect(widget.locator(".status")).to_contain_text("Pas de connexion")
    expect(widget.locator('input[name="email"]')).to_have_value("karim.cherki@example.org")
    visit.shoot("1-offline")
    visit.context.set_offline(False)
    assert _submit(page, widget) == 202
    eventually_true(lambda: widget_stack.total(case_id) == 1, within=10, what="the resent signature counted")
    visit.console_errors.clear()  # the browser logs the failed fetch itself


def test_a_busy_intake_is_retried_after_retry_after_with_one_key(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    page, widget = _signing_page(widget_stack, visit, case_id, lang="en")
    keys: list[str] = []

    def first_busy(route: Any) -> None:
        keys.append(route.request.headers.get("idempotency-key", ""))
        if len(keys) == 1:
            # As intake answers when the broker is slow: 503 and Retry-After.
            route.fulfill(
                status=503,
                headers={
                    "Retry-After": "1",
                    "Access-Control-Allow-Origin": widget_stack.host.origin,
                    "Access-Control-Expose-Headers": "Retry-After",
                    "Content-Type": "application/problem+json",
                },
                body='{"status": 503, "detail": "busy"}',
            )
        else:
            route.continue_()

    page.route(SIGNATURES, first_busy)
    _fill(widget, "Samir", "Mendy", "samir.mendy@example.org")
    widget.locator('button[type="submit"]').click()
    expect(widget.locator(".status")).to_contain_text("trying again in")
    visit.shoot("1-busy-retrying")
    expect(widget.locator(".done h3")).to_be_visible(timeout=10_000)
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0], keys
    eventually_true(lambda: widget_stack.total(case_id) == 1, within=10, what="the retried signature counted")


def test_several_widgets_and_the_versioned_script_under_sri(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    first, second = new_id("nawal"), new_id("atena")
    widget_stack.create_case(first)
    widget_stack.create_case(second, title={"fr": "Atena Daemi doit être libérée", "en": "Free Atena Daemi"})
    manifest = httpx.get(f"{widget_stack.intake}/v1/widget.json", timeout=5).json()
    body = (
        widget_stack.petition(first)
        + widget_stack.petition(second, lang="en")
        + f'<div class="clameur-counter" data-case="{second}"></div>'
    )
    html = widget_stack.page_html(body).replace(
        f'<script src="{widget_stack.intake}/v1/widget.js" async></script>',
        f'<script src="{manifest["url"]}" integrity="{manifest["integrity"]}" crossorigin="anonymous" async>'
        "</script>",
    )
    page = visit.page
    page.goto(widget_stack.host.add(html))
    expect(_widget(page, 0).locator("h2")).to_have_text("Nawal Benaissa : stop au harcèlement")
    expect(_widget(page, 1).locator("h2")).to_have_text("Free Atena Daemi")
    expect(page.locator(".clameur-counter .count")).to_have_text("0 signature")
    _fill(_widget(page, 1), "Jeanne", "Fournier", "jeanne.fournier@example.org", country="BE")
    assert _submit(page, _widget(page, 1)) == 202
    eventually_true(
        _counter_shows(page.locator(".clameur-counter"), 1), within=5, what="the lone counter to move"
    )
    expect(_widget(page, 0).locator(".count strong")).to_have_text("0")
    visit.shoot("1-two-widgets-and-a-counter")
    _only_clameur_and_no_csp_error(visit, widget_stack)


TURNSTILE = "https://challenges.cloudflare.com/turnstile/v0/api.js?render=explicit"
# Stands in for Cloudflare's script (no internet in tests): renders nothing, passes at once.
FAKE_TURNSTILE = """
window.turnstile = { render: function (element, options) {
  element.setAttribute("data-rendered-with", options.sitekey);
  setTimeout(function () { options.callback("token-from-turnstile"); }, 0);
} };
"""


def test_with_a_site_key_the_turnstile_token_is_sent(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    widget_stack.create_case(case_id)
    page = visit.page
    page.route(TURNSTILE, lambda route: route.fulfill(content_type="text/javascript", body=FAKE_TURNSTILE))
    csp = widget_stack.host.csp.replace("script-src ", "script-src https://challenges.cloudflare.com ")
    petition = widget_stack.petition(case_id, turnstile="1x00000000000000000000AA")
    page.goto(widget_stack.host.add(widget_stack.page_html(petition), csp=csp))
    widget = _widget(page)
    expect(widget.locator('[data-rendered-with="1x00000000000000000000AA"]')).to_have_count(1)
    _fill(widget, "Hugo", "Martin", "hugo.martin@example.org")
    answer = _posted(page, widget.locator('button[type="submit"]').click)
    assert answer.status == 202
    assert json.loads(answer.request.post_data or "{}")["turnstile_token"] == "token-from-turnstile"


def test_without_the_live_stream_the_counter_polls(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    widget_stack.create_case(case_id)
    page = visit.page
    streams: list[str] = []

    def refuse(route: Any) -> None:
        streams.append(route.request.url)
        route.abort()

    # As behind a proxy that will not stream: every /live request fails.
    page.route(re.compile(r"/v1/cases/[^/]+/live$"), refuse)
    page.goto(widget_stack.petition_page(case_id, lang="en"))
    widget = _widget(page)
    expect(widget.locator(".count strong")).to_have_text("0")
    _fill(widget, "Lucas", "Fournier", "lucas.fournier@example.org")
    assert _submit(page, widget) == 202
    eventually_true(lambda: widget_stack.total(case_id) == 1, within=10, what="tally to count it")
    assert streams, "the widget tried the live stream first"
    # Stream failed twice (EventSource retries once by itself), then a poll every 5 s.
    eventually_true(_counter_shows(widget, 1), within=15, what="a poll to bring the new count")
    visit.console_errors.clear()  # the browser logs the refused stream itself


def test_a_reader_in_a_language_the_case_does_not_speak_can_sign(
    widget_stack: WidgetStack, visit: Visit, new_id: Callable[..., str]
) -> None:
    case_id = new_id("germain")
    title = {"fr": "Libérez Germain Rukuki"}
    page, widget = _signing_page(widget_stack, visit, case_id, lang="en", title=title)
    expect(widget.locator("h2")).to_have_text("Libérez Germain Rukuki")
    expect(widget.locator("label[for=f-email]")).to_contain_text("Email address")
    _fill(widget, "Chloé", "Girard", "chloe.girard@example.org")
    answer = _posted(page, widget.locator('button[type="submit"]').click)
    assert answer.status == 202, answer.text()
    assert "locale" not in json.loads(answer.request.post_data or "{}")
