"""`python -m ingest|processing|dashboard|simulator` are the `fleetstream` commands.

They used to ignore their arguments: `--help` started the service, `--check --rules x`
ran the live ingest with the default rules, `--port 8080` served on 8501.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import free_port

pytestmark = pytest.mark.unit

MODULES = [
    ("ingest", "ingest"),
    ("processing", "process"),
    ("dashboard", "dashboard"),
    ("simulator", "simulate"),
]


def _run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m ...`` with brokers nobody listens on, so a started service goes nowhere."""
    env = {
        **os.environ,
        "FLEETSTREAM_MQTT_PORT": "1",
        "FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "FLEETSTREAM_INGEST_METRICS_PORT": "0",
        "FLEETSTREAM_INGEST_STATE_DIR": str(tmp_path / "ingest-state"),
        "FLEETSTREAM_PROCESSING_METRICS_PORT": "0",
        "FLEETSTREAM_PROCESSING_STATE_DIR": str(tmp_path / "processing-state"),
        "FLEETSTREAM_DASHBOARD_PORT": str(free_port()),
    }
    return subprocess.run(
        [sys.executable, "-m", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,  # a service started in place of the help runs until it is killed
        check=False,
    )


@pytest.mark.parametrize(("module", "command"), MODULES)
def test_help_prints_the_command_s_usage_and_starts_nothing(
    tmp_path: Path, module: str, command: str
) -> None:
    result = _run(tmp_path, module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: fleetstream {command} [OPTIONS]"), result.stdout
    assert not (tmp_path / "processing-state").exists()


def test_ingest_check_validates_the_given_rules_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1}"\nadapter = "xml"\n')
    result = _run(tmp_path, "ingest", "--check", "--rules", str(bad))
    assert result.returncode == 2, result.stderr
    assert f"{bad}:5:" in result.stderr


def test_an_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    result = _run(tmp_path, "processing", "--no-such-option")
    assert result.returncode == 2
    assert "No such option: --no-such-option" in result.stderr


def test_dashboard_options_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[tuple[str | None, int | None]] = []

    def serve(host: str | None = None, port: int | None = None) -> int:
        served.append((host, port))
        return 0

    monkeypatch.setattr("dashboard.server.main", serve)
    monkeypatch.setattr(sys, "argv", ["dashboard", "--host", "127.0.0.2", "--port", "8080"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("dashboard", run_name="__main__")
    assert exited.value.code == 0
    assert served == [("127.0.0.2", 8080)]


@pytest.mark.parametrize("code", [0, 2, 70])
def test_ingest_rules_and_exit_code_pass_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int
) -> None:
    # The demo, the benchmarks and the tests judge a service by its exit code.
    started: list[Path | None] = []

    def run(rules_file: Path | None = None) -> int:
        started.append(rules_file)
        return code

    monkeypatch.setattr("ingest.main", run)
    monkeypatch.setattr(sys, "argv", ["ingest", "--rules", str(tmp_path / "x.toml")])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("ingest", run_name="__main__")
    assert exited.value.code == code
    assert started == [tmp_path / "x.toml"]

    # Without arguments: the settings alone, as the demo starts it.
    monkeypatch.setattr(sys, "argv", ["ingest"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("ingest", run_name="__main__")
    assert exited.value.code == code
    assert started[-1] is None
