"""The local broker's cleaner: Kafka's default for dev, one second for the test profile."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from devstack.layout import DEV, TEST
from devstack.stack import Stack


def _properties(profile_name: str, tmp_path: Path) -> dict[str, str]:
    profile = {"dev": DEV, "test": TEST}[profile_name]
    broker = Stack(profile, {}).kafka
    # The same broker settings, written under this test's own directory.
    mine = replace(broker, data_dir=tmp_path / "kafka", run_dir=tmp_path / "run", log_dir=tmp_path / "logs")
    mine._write_properties()
    lines = mine.properties.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_the_test_profile_cleans_and_deletes_every_second(tmp_path: Path) -> None:
    properties = _properties("test", tmp_path)
    assert properties["log.cleaner.backoff.ms"] == "1000"
    assert properties["log.retention.check.interval.ms"] == "1000"


def test_dev_keeps_kafkas_defaults(tmp_path: Path) -> None:
    properties = _properties("dev", tmp_path)
    assert "log.cleaner.backoff.ms" not in properties
    assert "log.retention.check.interval.ms" not in properties
