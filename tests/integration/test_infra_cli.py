"""`fleetstream infra up|status|down` on a second, private stack (own ports and folder)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fleetstream import infra

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetstream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_up_is_idempotent_status_reports_health_down_stops(
    brokers: infra.InfraSettings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "FLEETSTREAM_RUN_DIR": str(tmp_path / "run"),
        # Share the jar cache with the main stack so nothing is downloaded twice.
        "FLEETSTREAM_CACHE_DIR": str(brokers.cache_dir),
        "FLEETSTREAM_KAFKA_PORT": str(_free_port()),
        "FLEETSTREAM_KAFKA_CONTROLLER_PORT": str(_free_port()),
        "FLEETSTREAM_MQTT_PORT": str(_free_port()),
        "FLEETSTREAM_MQTT_AUTH_PORT": str(_free_port()),
        "FLEETSTREAM_KAFKA_HEAP_MB": "256",
    }
    try:
        first = _cli(env, "infra", "up")
        assert first.returncode == 0, first.stderr
        assert "kafka: ready in" in first.stdout

        second = _cli(env, "infra", "up")
        assert second.returncode == 0, second.stderr
        assert "kafka: already running" in second.stdout
        assert "mosquitto: already running" in second.stdout

        status = _cli(env, "infra", "status")
        assert status.returncode == 0, status.stdout
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
        assert rows["kafka"][1] == "healthy"
        assert rows["mosquitto"][1] == "healthy"
        assert rows["kafka"][2].isdigit()
        assert env["FLEETSTREAM_KAFKA_PORT"] in rows["kafka"]
    finally:
        down = _cli(env, "infra", "down")
    assert down.returncode == 0, down.stderr
    assert "kafka" in down.stdout
    assert "mosquitto" in down.stdout

    after = _cli(env, "infra", "status")
    assert after.returncode == 1
    assert "stopped" in after.stdout
