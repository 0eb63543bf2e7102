"""The one SMTP sink (devstack/mailsink.py) does what each of its users needs."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import orjson
import pytest

from devstack.mailsink import Counts, SmtpSink, latest, on_loopback, read_stats
from tests.support import ROOT, free_port, wait_until

MESSAGE = (
    "From: news@clameur.example.org\r\nTo: amina@example.org\r\nSubject: Merci\r\n"
    "Message-ID: <one@clameur.example.org>\r\n\r\nNawal est libre.\r\n"
)


def _send(port: int, *recipients: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("news@clameur.example.org", list(recipients), MESSAGE)


def test_a_test_sink_keeps_messages_and_refuses_as_told() -> None:
    with on_loopback() as sink:
        sink.refuse("ben@example.org", 451, times=1)
        _send(sink.port, "amina@example.org")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            _send(sink.port, "ben@example.org")
        _send(sink.port, "ben@example.org")
        assert sink.count() == 2
        assert sink.refusals == {"ben@example.org": 1}
        assert str(sink.to("amina@example.org")[0].message["Subject"]) == "Merci"


def test_a_sink_can_save_files_count_and_keep_a_sample(tmp_path: Path) -> None:
    counts = Counts()
    sink = SmtpSink(keep=False, folder=tmp_path / "mail", counts=counts, sample=tmp_path / "first.eml")
    with on_loopback(sink):
        _send(sink.port, "amina@example.org", "ben@example.org")
        _send(sink.port, "amina@example.org")
    assert sink.received == []
    assert (counts.messages, counts.recipients, len(counts.distinct_recipients)) == (2, 3, 2)
    assert len(counts.message_ids) == 1, "the same Message-ID twice is one distinct message"
    assert b"Nawal est libre." in (tmp_path / "first.eml").read_bytes()
    rows = latest(tmp_path / "mail")
    assert len(rows) == 2 and rows[0][3] == "Merci"


def test_the_process_writes_its_counts_and_stops_on_sigterm(tmp_path: Path) -> None:
    port, stats = free_port(), tmp_path / "sink.json"
    command = [sys.executable, "-m", "devstack.mailsink", "--port", str(port), "--stats", str(stats)]
    sink = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: read_stats(stats) != {}, timeout=20, what="the sink's first stats")
        _send(port, "amina@example.org")
    finally:
        sink.terminate()
        assert sink.wait(timeout=20) == 0
    assert read_stats(stats)["messages"] == 1


def test_the_process_writes_each_confirmation_link_with_its_arrival(tmp_path: Path) -> None:
    link = "http://127.0.0.1:8003/v1/confirm/" + "Ab3_-x" * 20 + ".sig_Ue-1"
    confirmation = EmailMessage()
    confirmation["From"], confirmation["To"], confirmation["Subject"] = (
        "news@x.org",
        "amina@x.org",
        "Confirmez",
    )
    # Quoted-printable folds the long link with a soft line break, as notify's emails do.
    confirmation.set_content(f"Confirmez votre signature : {link}\n", cte="quoted-printable")
    port, stats, links = free_port(), tmp_path / "sink.json", tmp_path / "links.jsonl"
    command = [sys.executable, "-m", "devstack.mailsink", "--port", str(port), "--stats", str(stats)]
    sink = subprocess.Popen([*command, "--links", str(links)], cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: read_stats(stats) != {}, timeout=20, what="the sink's first stats")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.send_message(confirmation)
        _send(port, "ben@example.org")  # no link: no line
        wait_until(lambda: read_stats(stats).get("messages") == 2, timeout=20, what="both messages counted")
    finally:
        sink.terminate()
        assert sink.wait(timeout=20) == 0
    assert b"=\n" in confirmation.as_bytes(), "the link was folded (the case this test is about)"
    lines = [orjson.loads(line) for line in links.read_bytes().splitlines()]
    assert [(entry["to"], entry["link"]) for entry in lines] == [("amina@x.org", link)]
    first_at = read_stats(stats)["first_at"]
    assert first_at is not None and lines[0]["at"] >= first_at
