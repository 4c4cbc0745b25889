"""Pure checks of the infra settings and templates."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from fleetstream.infra import InfraSettings, ServiceStatus

pytestmark = pytest.mark.unit


def test_env_prefix_overrides_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_KAFKA_PORT", "19092")
    monkeypatch.setenv("FLEETSTREAM_MQTT_PASSWORD", "s3cret")
    settings = InfraSettings()
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.mqtt_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_invalid_port_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_MQTT_PORT", "70000")
    with pytest.raises(ValueError, match="mqtt_port"):
        InfraSettings()


@pytest.mark.parametrize("name", ["server.properties", "mosquitto.conf"])
def test_templates_only_use_known_placeholders(name: str) -> None:
    text = (resources.files("fleetstream.infra") / "files" / name).read_text("utf-8")
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    known = {
        "host",
        "kafka_port",
        "controller_port",
        "data_dir",
        "default_partitions",
        "mqtt_port",
        "mqtt_auth_port",
        "password_file",
        "log_file",
        "user",
    }
    assert placeholders <= known
    assert placeholders


def test_broker_throttles_are_raised() -> None:
    text = (resources.files("fleetstream.infra") / "files" / "mosquitto.conf").read_text("utf-8")
    inflight = int(re.search(r"^max_inflight_messages (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    queued = int(re.search(r"^max_queued_messages (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    assert inflight > 20
    assert queued > 1000


@pytest.mark.parametrize(
    ("pid", "healthy", "state"),
    [
        (1, True, "healthy"),
        (None, True, "external"),
        (1, False, "unhealthy"),
        (None, False, "stopped"),
    ],
)
def test_service_state(pid: int | None, healthy: bool, state: str) -> None:
    assert ServiceStatus("kafka", "9092", pid, None, healthy).state == state


def test_checkout_keeps_run_and_cache_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETSTREAM_RUN_DIR", raising=False)
    monkeypatch.delenv("FLEETSTREAM_CACHE_DIR", raising=False)
    settings = InfraSettings()
    root = Path(__file__).resolve().parents[2]
    assert settings.run_dir == root / ".run"
    assert settings.cache_dir == root / ".cache"
