"""`fleetstream ingest --check` validates the rules file the service would load."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetstream.cli import app

pytestmark = pytest.mark.unit

RULES = '[[mqtt_to_kafka]]\nname="from-env"\nmqtt="a/+"\ntopic="t"\nkey="{1}"\n'


def test_check_reads_the_rules_file_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    monkeypatch.setenv("FLEETSTREAM_INGEST_RULES_FILE", str(rules))
    result = CliRunner().invoke(app, ["ingest", "--check"])
    assert result.exit_code == 0, result.output
    assert "mqtt->kafka from-env: a/+" in result.output
    assert f"rules: {rules}" in result.output
    assert "fleet-telemetry" not in result.output  # not the packaged rules


def test_check_rejects_a_broken_rules_file_from_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[[mqtt_to_kafka]]\nmqtt="a/+"\ntopic="bad topic!"\nkey="{1}"\n')
    monkeypatch.setenv("FLEETSTREAM_INGEST_RULES_FILE", str(broken))
    result = CliRunner().invoke(app, ["ingest", "--check"])
    assert result.exit_code == 2
    assert "not a valid Kafka topic name" in result.output


def test_rules_option_wins_over_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETSTREAM_INGEST_RULES_FILE", str(tmp_path / "missing.toml"))
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    result = CliRunner().invoke(app, ["ingest", "--check", "--rules", str(rules)])
    assert result.exit_code == 0, result.output
    assert "from-env" in result.output
