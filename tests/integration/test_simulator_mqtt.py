"""`fleetstream simulate --mqtt` publishes to the real Mosquitto; a subscriber reads it all."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetstream import infra
from telemetry.adapters import adapt_tesla
from telemetry.contract import parse

pytestmark = pytest.mark.integration


class _Collector:
    def __init__(self, settings: infra.InfraSettings, topic: str, client_id: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(settings.host, settings.mqtt_port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def wait_for(self, count: int, timeout_s: float) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # catch any extra messages
        self.client.disconnect()
        self.client.loop_stop()
        return list(self.messages)


def _simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetstream", "simulate", *args],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_v1_messages_arrive_complete_and_valid(
    brokers: infra.InfraSettings, unique_name: str
) -> None:
    prefix = f"t{unique_name[-8:]}"
    topic = f"{prefix}/{{vehicle_id}}/telemetry"
    collector = _Collector(brokers, f"{prefix}/+/telemetry", f"{unique_name}-sub")
    result = _simulate(
        "--vehicles", "40", "--duration", "3", "--rate", "2", "--seed", "11", "--qos", "1",
        "--mqtt", f"mqtt://{brokers.host}:{brokers.mqtt_port}", "--topic", topic,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "simulated 240 messages" in result.stdout
    messages = collector.wait_for(240, timeout_s=20)
    records = [parse(bytes(m.payload)) for m in messages]
    assert len(records) == 240
    assert {(r["vehicle_id"], r["seq"]) for r in records} == {
        (f"veh-{i:05d}", s) for i in range(40) for s in range(6)
    }
    for message, record in zip(messages, records, strict=True):
        assert message.topic == f"{prefix}/{record['vehicle_id']}/telemetry"
        assert message.qos == 1
    # Real time: event times span the run, not one instant.
    spread = max(r["ts"] for r in records) - min(r["ts"] for r in records)
    assert 2000 <= spread <= 4000


def test_tesla_format_over_password_listener(
    brokers: infra.InfraSettings, unique_name: str
) -> None:
    collector = _Collector(brokers, "mqttx/simulate/tesla/+", f"{unique_name}-sub")
    password = brokers.mqtt_password.get_secret_value()
    result = _simulate(
        "--vehicles", "5", "--duration", "2", "--format", "tesla",
        "--mqtt", f"mqtt://{brokers.mqtt_username}:{password}@{brokers.host}:{brokers.mqtt_auth_port}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    messages = [
        m
        for m in collector.wait_for(10, timeout_s=15)
        if orjson.loads(m.payload)["car_id"].startswith("5YJSIM")
    ]
    assert len(messages) >= 10
    for message in messages:
        record = adapt_tesla(bytes(message.payload))
        assert message.topic == f"mqttx/simulate/tesla/{record['vehicle_id']}"


def test_wrong_password_is_one_clear_error(brokers: infra.InfraSettings) -> None:
    result = _simulate(
        "--vehicles", "1", "--duration", "1",
        "--mqtt", f"mqtt://{brokers.mqtt_username}:wrong@{brokers.host}:{brokers.mqtt_auth_port}",
    )  # fmt: skip
    assert result.returncode == 1
    assert "refused the connection" in result.stderr
    assert "Traceback" not in result.stderr
