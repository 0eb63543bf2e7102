"""A day of campaigning in a few minutes, on the running stack (`make up`, then `make demo`).

Creates the real cases of the seed pages (Amnesty's Write for Rights and All Out),
simulates widgets from 30 countries with a surge, crosses milestones, declares one
victory, then prints what happened: counts per case and per country, emails sent,
rejected requests by reason, and where to look in Prometheus.  Each run uses case ids
of its own, so it can be run again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx

from bench.common import by_label, parse_metrics
from devstack.layout import DEV

COUNTRIES = [
    "FR",
    "FR",
    "FR",
    "FR",
    "FR",
    "FR",
    "BE",
    "BE",
    "CH",
    "CA",
    "CA",
    "MA",
    "MA",
    "SN",
    "CI",
    "CM",
    "DE",
    "GB",
    "GB",
    "US",
    "US",
    "ES",
    "IT",
    "NL",
    "PT",
    "IE",
    "SE",
    "NO",
    "DK",
    "PL",
    "BR",
    "AR",
    "MX",
    "TW",
    "JP",
    "AU",
    "KE",
    "BI",
    "SS",
    "IR",
]
FIRST_NAMES = [
    "Camille",
    "Nadia",
    "Yanis",
    "Léa",
    "Omar",
    "Inès",
    "Hugo",
    "Fatou",
    "Lucas",
    "Amina",
    "Chloé",
    "Mehdi",
    "Zoé",
    "Karim",
    "Jeanne",
    "Samir",
]
LAST_NAMES = [
    "Martin",
    "Benali",
    "Dubois",
    "Diallo",
    "Leroy",
    "Haddad",
    "Moreau",
    "Traoré",
    "Fournier",
    "Cherki",
    "Girard",
    "Mendy",
]


# Documentation addresses (RFC 5737) standing in for supporters' own: only ever sent as
# an X-Forwarded-For value to intake on loopback, never connected to.
SUPPORTER_IPS = [f"{net}.{host}" for net in ("192.0.2", "198.51.100", "203.0.113") for host in range(2, 256)]


@dataclass(frozen=True)
class SeedCase:
    slug: str
    title: dict[str, str]
    target: str
    goal: int
    milestones: tuple[int, ...]
    share: float
    """The part of the day's supporters who act for this case."""


CASES = (
    SeedCase(
        "nawal-benaissa",
        {"fr": "Nawal Benaissa : stop au harcèlement", "en": "Nawal Benaissa: stop the harassment"},
        "Ministère de l'Intérieur du Maroc",
        20_000,
        (1_000, 2_500, 5_000),
        0.40,
    ),
    SeedCase(
        "sengwer",
        {
            "fr": "Les Sengwers : protégez leurs terres ancestrales",
            "en": "The Sengwer: protect their ancestral land",
        },
        "President of Kenya",
        10_000,
        (1_000, 2_000),
        0.20,
    ),
    SeedCase(
        "atena-daemi",
        {"fr": "Atena Daemi doit être libérée", "en": "Free Atena Daemi"},
        "Head of the Judiciary, Iran",
        10_000,
        (1_000,),
        0.15,
    ),
    SeedCase(
        "germain-rukuki",
        {"fr": "Libérez Germain Rukuki", "en": "Free Germain Rukuki"},
        "Président de la République du Burundi",
        10_000,
        (500, 1_000),
        0.13,
    ),
    SeedCase(
        "magai-matiop-ngong",
        {
            "fr": "Magai Matiop Ngong : annulez sa condamnation à mort",
            "en": "Magai Matiop Ngong: quash his death sentence",
        },
        "President Salva Kiir",
        5_000,
        (500, 1_000),
        0.12,
    ),
)
VICTORY_CASE = "magai-matiop-ngong"
VICTORY = {
    "headline": {"fr": "Magai est libre !", "en": "Magai is free!"},
    "message": {
        "fr": "Sa condamnation à mort a été annulée et il a été libéré. Merci de lui avoir sauvé la vie.",
        "en": "His death sentence was quashed and he has been released. Thank you for saving his life.",
    },
}


@dataclass
class Outcome:
    statuses: Counter[int]
    counted: dict[str, set[tuple[str, str]]]
    """Per case, the distinct (email, action) pairs intake accepted: what tally must count."""


def _supporter(rng: random.Random, n: int, run: str) -> dict[str, object]:
    return {
        "first_name": rng.choice(FIRST_NAMES),
        "last_name": rng.choice(LAST_NAMES),
        "email": f"supporter{n}.{run}@example.org",
        "country": rng.choice(COUNTRIES),
        "locale": "fr" if rng.random() < 0.6 else "en",
        "consent": {"updates": rng.random() < 0.25},
        "source": {"widget": "demo", "page_url": "https://www.amnesty.fr/ecrire-pour-les-droits"},
    }


async def _sign(
    client: httpx.AsyncClient,
    case_id: str,
    body: dict[str, object],
    outcome: Outcome,
    ip: str,
    *,
    retries: int = 4,
) -> None:
    """One widget's POST, from the supporter's address (as a load balancer reports it).

    Like a widget, it waits ``Retry-After`` and tries again on 429 and 503.
    """
    for attempt in range(retries + 1):
        response = await client.post(
            f"/v1/cases/{case_id}/signatures", json=body, headers={"X-Forwarded-For": ip}
        )
        if response.status_code in (429, 503) and attempt < retries:
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        outcome.statuses[response.status_code] += 1
        if response.status_code == 202:
            key = (str(body["email"]).strip().lower(), str(body.get("action", "signature")))
            outcome.counted.setdefault(case_id, set()).add(key)
        return


async def _campaign(intake: str, cases: dict[str, str], supporters: int, run: str, seed: int) -> Outcome:
    """Supporters arrive slowly, then a surge (a TV mention), then it calms down."""
    rng = random.Random(seed)
    outcome = Outcome(Counter(), {})
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=intake, limits=limits, timeout=15) as client:
        semaphore = asyncio.Semaphore(64)
        phases = ((0.15, 300.0, "morning"), (0.70, 2000.0, "surge"), (0.15, 400.0, "evening"))
        seeds = list(CASES)
        weights = [case.share for case in seeds]
        n = 0
        pending: set[asyncio.Task[None]] = set()
        for part, rate, name in phases:
            count = int(supporters * part)
            started = time.monotonic()
            print(f"  {name}: {count} supporters at up to {rate:.0f}/s", flush=True)
            for i in range(count):
                n += 1
                case = rng.choices(seeds, weights)[0]
                body = _supporter(rng, n, run)
                ip = rng.choice(SUPPORTER_IPS)
                actions = ["signature"]
                roll = rng.random()
                if roll < 0.04:
                    actions.append("letter")
                elif roll < 0.06:
                    actions.append("postcard")
                if rng.random() < 0.10:  # the same supporter presses "Sign" again
                    actions.append("signature")
                for action in actions:
                    await semaphore.acquire()
                    task = asyncio.create_task(
                        _sign(client, cases[case.slug], {**body, "action": action}, outcome, ip)
                    )
                    task.add_done_callback(lambda _t: semaphore.release())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                ahead = (i + 1) / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
        # What a widget sees when things go wrong, so the rejection counters have something to show.
        bad: list[tuple[dict[str, object], str]] = [
            (
                {"first_name": "Bot", "last_name": "X", "email": "not-an-email", "country": "FR"},
                cases["nawal-benaissa"],
            ),
            (
                {"first_name": "A\nB", "last_name": "X", "email": "a@example.org", "country": "FR"},
                cases["sengwer"],
            ),
            (
                {"first_name": "A", "last_name": "X", "email": "a@example.org", "country": "XX"},
                cases["sengwer"],
            ),
            (
                {"first_name": "A", "last_name": "X", "email": "a@example.org", "country": "FR"},
                f"no-such-case-{run}",
            ),
        ]
        for body, case_id in bad:
            await _sign(client, case_id, body, outcome, "192.0.2.1")
        # A bot hammering from one address runs into the per-address limit (429).
        bot = {"first_name": "Spam", "last_name": "Bot", "country": "FR", "consent": {"updates": False}}
        await asyncio.gather(
            *(
                _sign(
                    client,
                    cases["sengwer"],
                    {**bot, "email": f"bot{k}.{run}@example.net"},
                    outcome,
                    "192.0.2.66",
                    retries=0,
                )
                for k in range(80)
            )
        )
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--supporters", type=int, default=12_000, help="supporters in the day (default 12,000)"
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    token = os.environ.get("CLAMEUR_ADMIN_TOKEN", "dev-admin-token")
    intake, tally_url, notify = (
        f"http://127.0.0.1:{port}" for port in (DEV.intake_port, DEV.tally_port, DEV.notify_port)
    )
    admin = {"Authorization": f"Bearer {token}"}
    run = uuid.uuid4().hex[:4]
    for url in (intake, tally_url, notify):
        try:
            httpx.get(f"{url}/readyz", timeout=3).raise_for_status()
        except httpx.HTTPError:
            print(f"{url} is not ready: start the stack with `make up` first.", file=sys.stderr)
            return 1

    scale = args.supporters / 12_000
    print(f"Demo run {run}: creating the cases")
    cases: dict[str, str] = {}
    for case in CASES:
        case_id = f"{case.slug}-{run}"
        body = {
            "id": case_id,
            "title": case.title,
            "goal": max(1, int(case.goal * scale)),
            "milestones": sorted({max(1, int(m * scale)) for m in case.milestones}),
            "actions": ["signature", "letter", "postcard"],
            "default_locale": "fr",
            "target": case.target,
            # The simulated supporters have no inbox to confirm from: their signatures count
            # at once (a person signing on the demo page of an email case would confirm).
            "confirmation": "none",
        }
        response = httpx.post(f"{tally_url}/v1/admin/cases", json=body, headers=admin, timeout=10)
        if response.status_code != 201:
            print(f"could not create {case_id}: {response.status_code} {response.text}", file=sys.stderr)
            return 1
        cases[case.slug] = case_id
        print(f"  {case_id}: {case.title['en']} (milestones {body['milestones']})")

    # The demo page (`make up` prints its address) shows these cases' widgets.
    DEV.demo_cases.parent.mkdir(parents=True, exist_ok=True)
    DEV.demo_cases.write_text(json.dumps(list(cases.values())))
    print(f"  their widgets: http://127.0.0.1:{DEV.demo_page_port}")

    def intake_knows_all() -> bool:
        probes = [httpx.get(f"{tally_url}/v1/cases/{case_id}", timeout=5) for case_id in cases.values()]
        return all(p.status_code == 200 for p in probes)

    deadline = time.monotonic() + 15
    while not intake_knows_all() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # intake follows cases.v1; give it a moment to hear of the new cases

    metrics_before = httpx.get(f"{notify}/metrics", timeout=5).text
    print(f"\nThe campaign day: {args.supporters} supporters")
    started = time.monotonic()
    result = asyncio.run(
        _campaign(intake, cases, args.supporters, run, args.seed or random.randrange(1 << 30))
    )
    elapsed = time.monotonic() - started
    print(
        f"  {sum(result.statuses.values())} requests in {elapsed:.1f} s; "
        f"answers by status: {dict(sorted(result.statuses.items()))}"
    )

    print(f"\nVictory for {cases[VICTORY_CASE]}")
    response = httpx.post(
        f"{tally_url}/v1/admin/cases/{cases[VICTORY_CASE]}/victory", json=VICTORY, headers=admin, timeout=10
    )
    print(f"  declared: {response.status_code}")
    time.sleep(3)
    after = httpx.post(
        f"{intake}/v1/cases/{cases[VICTORY_CASE]}/signatures",
        json={
            "first_name": "Late",
            "last_name": "Supporter",
            "email": f"late.{run}@example.org",
            "country": "FR",
        },
        timeout=10,
    )
    print(f"  a late signature gets {after.status_code}: {after.json().get('detail', '')}")

    # Wait until tally has counted every distinct action intake accepted, exactly.
    print("\nCounting")
    expected = {slug: len(result.counted.get(case_id, ())) for slug, case_id in cases.items()}
    deadline = time.monotonic() + 120
    totals: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline:
        totals = {
            slug: httpx.get(f"{tally_url}/v1/cases/{case_id}", timeout=5).json()
            for slug, case_id in cases.items()
        }
        if all(int(str(totals[slug]["total"])) == expected[slug] for slug in cases):
            break
        time.sleep(1)
    for slug, view in totals.items():
        by_country: dict[str, int] = dict(view["by_country"])  # type: ignore[call-overload]
        top = sorted(by_country.items(), key=lambda kv: -kv[1])[:5]
        countries = ", ".join(f"{code} {count:,}" for code, count in top)
        total = int(str(view["total"]))
        print(f"  {cases[slug]:<28} {view['status']:<6} total {total:>7,}   by action {view['by_action']}")
        print(f"  {'':<28} top countries: {countries}")

    time.sleep(5)  # let notify send the last emails
    metrics_after = httpx.get(f"{notify}/metrics", timeout=5).text
    sent_before = by_label(parse_metrics(metrics_before), "clameur_notify_emails_sent_total", "kind")
    sent_after = by_label(parse_metrics(metrics_after), "clameur_notify_emails_sent_total", "kind")
    sent = {kind: int(sent_after[kind] - sent_before.get(kind, 0.0)) for kind in sent_after}
    rejections = by_label(
        parse_metrics(httpx.get(f"{intake}/metrics", timeout=5).text),
        "clameur_intake_rejections_total",
        "reason",
    )
    print(f"\nEmails sent in this run, by kind: {sent or 'none yet'}")
    print(f"  read them: make mail   (files in {DEV.mail_dir})")
    print(
        "Requests rejected by intake since it started, by reason: "
        f"{ {reason: int(count) for reason, count in rejections.items()} }"
    )
    print(
        "\nIn Prometheus (http://127.0.0.1:9090/graph):\n"
        "  sum by (action) (rate(clameur_intake_signatures_accepted_total[1m]))\n"
        "  sum by (reason) (rate(clameur_intake_rejections_total[5m]))\n"
        "  histogram_quantile(0.99, sum by (le) (rate(clameur_tally_accept_to_counted_seconds_bucket[1m])))\n"
        "  clameur_tally_consumer_lag_records\n"
        "  clameur_notify_deliveries_pending"
    )
    exact = all(int(str(totals[slug]["total"])) == expected[slug] for slug in cases)
    print(f"\nEvery accepted action counted exactly once: {'yes' if exact else 'NO'} (expected {expected})")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
