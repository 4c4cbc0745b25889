"""What `fleetstream demo` gives the services it starts (no broker needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleetstream import demo, infra
from ingest import IngestSettings

pytestmark = pytest.mark.unit


class _StartedError(Exception):
    """Stops the demo at its first service."""


def test_the_demo_ingest_session_expires_soon_after_a_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With ingest's 7-day default, a stopped demo's session kept collecting every later
    # fleet/+/telemetry message, and the next demo wrote that backlog into Kafka again.
    seen: dict[str, Any] = {}

    def first_service(name: str, _argv: list[str], _logs: Path, env: dict[str, str]) -> Any:
        seen.update(name=name, env=env)
        raise _StartedError

    monkeypatch.setenv("FLEETSTREAM_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(infra, "up", lambda _settings: infra.StartReport(0.0, 0.0))
    monkeypatch.setattr(demo, "service", first_service)
    monkeypatch.setattr(demo, "_check_ports_free", lambda _ports: None)
    with pytest.raises(_StartedError):
        demo._run_demo(1, 1.0, 0.0, 0)
    assert seen["name"] == "ingest"
    monkeypatch.setattr("os.environ", {**seen["env"]})
    settings = IngestSettings()
    assert settings.mqtt_session_expiry_s == demo.DEMO_SESSION_EXPIRY_S <= 3600
    assert settings.mqtt_client_id == "fleetstream-demo-ingest"


def test_a_busy_service_port_is_refused_before_anything_starts() -> None:
    # The old service answered the health check while the new one died on the port.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"dashboard's port 127.0.0.1:{port} is in use"):
            demo._check_ports_free({"ingest": ("127.0.0.1", 0), "dashboard": ("127.0.0.1", port)})
    demo._check_ports_free({"dashboard": ("127.0.0.1", port)})
    # Any address a service may listen on: "::" was refused as an IPv4 lookup error.
    demo._check_ports_free({"ingest": ("::", port), "dashboard": ("0.0.0.0", port)})  # noqa: S104


def test_a_busy_service_port_is_refused_before_the_brokers_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README: "refused before anything starts"; the check ran after `infra up`.
    started: list[str] = []

    def up(_settings: infra.InfraSettings) -> infra.StartReport:
        started.append("brokers")
        return infra.StartReport(0.0, 0.0)

    def first_service(name: str, *_args: object) -> Any:
        started.append(name)
        raise _StartedError

    monkeypatch.setenv("FLEETSTREAM_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(infra, "up", up)
    monkeypatch.setattr(demo, "service", first_service)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        monkeypatch.setenv("FLEETSTREAM_INGEST_METRICS_PORT", "0")  # not checked
        monkeypatch.setenv("FLEETSTREAM_PROCESSING_METRICS_PORT", "0")
        monkeypatch.setenv("FLEETSTREAM_DASHBOARD_HOST", "127.0.0.1")
        monkeypatch.setenv("FLEETSTREAM_DASHBOARD_PORT", str(port))
        with pytest.raises(RuntimeError, match=f"dashboard's port 127.0.0.1:{port} is in use"):
            demo._run_demo(1, 1.0, 0.0, 0)
    assert started == []


def test_a_service_that_exited_is_named_with_its_log(tmp_path: Path) -> None:
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    crashed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        crashed.wait(30)
        services = {"ingest": running, "processing": crashed}
        assert demo._watch(services, tmp_path) == (
            f"processing exited with 3; see {tmp_path / 'processing.log'}"
        )
        assert demo._watch({"ingest": running}, tmp_path) is None
    finally:
        running.kill()
        running.wait()
