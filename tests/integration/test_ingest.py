"""Ingest against the real Mosquitto and the real Kafka: no message lost."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Producer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.harness import (
    IngestProcess,
    QosOnePublisher,
    committed_offsets,
    delivery_report,
    free_port,
    read_topic,
    running,
    telemetry_messages,
    write_rules,
)
from fleetstream import infra
from ingest._kafka import ensure_topics, kafka_problem
from ingest._settings import IngestSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(unique_name: str) -> str:
    return f"it{unique_name[-8:]}"


@pytest.fixture
def rules(tmp_path: Path, prefix: str) -> Path:
    return write_rules(tmp_path / "rules.toml", prefix)


def _ingest(
    brokers: infra.InfraSettings, tmp_path: Path, rules: Path | None, name: str, **env: str
) -> IngestProcess:
    return IngestProcess(brokers, tmp_path, name, rules, extra_env=env)


class _Car:
    """An MQTT 5 client subscribed to one filter, keeping what it receives."""

    def __init__(self, brokers: infra.InfraSettings, client_id: str, topic_filter: str) -> None:
        self.received: list[mqtt.MQTTMessage] = []
        self.got = threading.Event()
        subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.connect(brokers.host, brokers.mqtt_port)
        self._client.loop_start()
        self._client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        self.received.append(m)
        self.got.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _command_producer(brokers: infra.InfraSettings, topic: str) -> Producer:
    """A producer, once ingest has created the command topic."""
    producer = Producer({"bootstrap.servers": brokers.kafka_bootstrap})
    deadline = time.monotonic() + 30
    while topic not in producer.list_topics(timeout=5).topics:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return producer


def _wait_committed(brokers: infra.InfraSettings, topic: str, at_least: int, why: str) -> None:
    """Wait until ingest's command group committed ``at_least`` offsets of ``topic``."""
    deadline = time.monotonic() + 20
    while committed_offsets(brokers.kafka_bootstrap, topic, topic, 4) < at_least:
        assert time.monotonic() < deadline, why
        time.sleep(0.5)


def _mqttx_payload(car_id: str, ts: int, rng: random.Random) -> bytes:
    """A payload shaped like MQTTX CLI `simulate -sc tesla` (independent random draws)."""
    return orjson.dumps(
        {
            "car_id": car_id,
            "display_name": "Demo's Tesla",
            "model": rng.choice("S3XY"),
            "state": rng.choice(["online", "asleep", "charging"]),
            "latitude": f"{rng.uniform(-90, 90):.4f}",
            "longitude": f"{rng.uniform(-180, 180):.4f}",
            "shift_state": rng.choice("DNRP"),
            "power": rng.randint(-10000, 10000),
            "speed": rng.randint(0, 200),
            "heading": rng.randint(0, 359),
            "elevation": rng.randint(-100, 5000),
            "inside_temp": round(rng.uniform(-20, 50), 1),
            "outside_temp": round(rng.uniform(-20, 50), 1),
            "odometer": rng.randint(0, 1_000_000),
            "est_battery_range_km": round(rng.uniform(0, 1000), 1),
            "battery_level": rng.randint(0, 100),
            "charge_energy_added": round(rng.uniform(0, 100), 2),
            "charger_power": rng.randint(1, 100),
            "tpms_pressure_fl": round(rng.uniform(2, 3.5), 1),
            "tpms_pressure_fr": round(rng.uniform(2, 3.5), 1),
            "tpms_pressure_rl": round(rng.uniform(2, 3.5), 1),
            "tpms_pressure_rr": round(rng.uniform(2, 3.5), 1),
            "timestamp": ts,
        }
    )


def test_seed_demo_with_default_rules_and_mosquitto_pub(
    brokers: infra.InfraSettings, tmp_path: Path, unique_name: str
) -> None:
    """mosquitto_pub sends MQTTX-style Tesla payloads; all land in my-vehicles keyed per car."""
    ingest = _ingest(brokers, tmp_path, None, f"{unique_name}-ingest")
    rng = random.Random(7)
    cars = [f"5YJ{unique_name[-6:].upper()}{i:08d}" for i in range(10)]
    base_ts = 1_790_000_000_000
    sent: dict[tuple[str, int], bytes] = {}
    with running(ingest.start()):
        for i, car in enumerate(cars):
            lines = []
            for n in range(3):
                ts = base_ts + i * 1000 + n
                payload = _mqttx_payload(car, ts, rng)
                sent[(car, ts)] = payload
                lines.append(payload)
            result = subprocess.run(
                ["mosquitto_pub", "-h", brokers.host, "-p", str(brokers.mqtt_port), "-q", "1", "-l",
                 "-t", f"mqttx/simulate/tesla/mqttx_{car[-4:]}"],
                input=b"\n".join(lines) + b"\n", capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        records = read_topic(
            brokers.kafka_bootstrap, "my-vehicles", expect=0, timeout_s=30, settle_s=3
        )
    mine = [r for r in records if r.key is not None and r.key.decode() in set(cars)]
    got = {(r.key.decode(), r.timestamp): r.value for r in mine if r.key is not None}
    assert got == sent  # keyed per car, payload timestamp as record timestamp, value unchanged
    per_car: dict[bytes | None, set[int]] = {}
    for r in mine:
        per_car.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in per_car.values())


def test_ten_thousand_qos1_messages_arrive_exactly(
    brokers: infra.InfraSettings, tmp_path: Path, rules: Path, prefix: str, unique_name: str
) -> None:
    messages = telemetry_messages(prefix, vehicles=100, seconds=100)
    assert len(messages) == 10_000
    ingest = _ingest(brokers, tmp_path, rules, f"{unique_name}-ingest")
    with running(ingest.start()):
        publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
        publisher.publish((t, p) for t, p, _ in messages)
        publisher.wait_acked(len(messages))
        publisher.close()
        records = read_topic(brokers.kafka_bootstrap, f"{prefix}-telemetry", expect=len(messages))
        metrics = ingest.metrics()
    row = delivery_report("10k_qos1", {k for _, _, k in messages}, records)
    assert row["lost"] == 0
    assert row["unexpected"] == 0
    assert row["duplicates"] == 0  # no crash, so no redelivery
    assert metrics["fleetstream_ingest_acked_total"] == len(messages)
    # Every record keyed by its vehicle and stamped with the event time.
    for r in records[:500]:
        value = orjson.loads(r.value)
        assert r.key == value["vehicle_id"].encode()
        assert r.timestamp == value["ts"]


def test_kafka_command_reaches_the_car_over_mqtt_and_offset_is_committed(
    brokers: infra.InfraSettings, tmp_path: Path, rules: Path, prefix: str, unique_name: str
) -> None:
    car = _Car(brokers, f"{unique_name}-car", f"{prefix}/car-7/commands")
    ingest = _ingest(brokers, tmp_path, rules, f"{unique_name}-ingest")
    with running(ingest.start()):
        producer = _command_producer(brokers, f"{prefix}-commands")
        producer.produce(f"{prefix}-commands", key=b"car-7", value=b'{"command": "lock"}')
        assert producer.flush(10) == 0
        assert car.got.wait(30), ingest.log()
        _wait_committed(
            brokers, f"{prefix}-commands", 1, "offset was not committed after the PUBACK"
        )
    car.close()
    assert [(m.topic, m.payload, m.qos) for m in car.received] == [
        (f"{prefix}/car-7/commands", b'{"command": "lock"}', 1)
    ]


def test_commands_whose_key_makes_no_mqtt_topic_are_quarantined_and_the_loop_goes_on(
    brokers: infra.InfraSettings, tmp_path: Path, rules: Path, prefix: str, unique_name: str
) -> None:
    """A U+0000 key went on the wire; a 70,000-byte key raised and ended the loop silently."""
    car = _Car(brokers, f"{unique_name}-car", f"{prefix}/#")
    ingest = _ingest(brokers, tmp_path, rules, f"{unique_name}-ingest")
    with running(ingest.start()):
        producer = _command_producer(brokers, f"{prefix}-commands")
        # One partition for all three, so the good one comes after the bad ones.
        for key in (b"car\x00x", b"k" * 70_000, b"car-7"):
            producer.produce(f"{prefix}-commands", key=key, value=b"lock", partition=0)
        assert producer.flush(10) == 0
        assert car.got.wait(30), ingest.log()
        bad = read_topic(brokers.kafka_bootstrap, f"{prefix}-commands.quarantine", expect=2)
        _wait_committed(brokers, f"{prefix}-commands", 3, "the commands were not committed")
        health = ingest.health()
    car.close()
    assert [(m.topic, m.payload) for m in car.received] == [(f"{prefix}/car-7/commands", b"lock")]
    assert sorted(r.key or b"" for r in bad) == [b"car\x00x", b"k" * 70_000]
    assert {r.headers["reason"] for r in bad} == {b"bad_key"}
    assert health is not None
    assert health["status"] == "ok"
    assert ingest.crashes() == 0


def test_two_ingest_processes_share_one_subscription(
    brokers: infra.InfraSettings, tmp_path: Path, prefix: str, unique_name: str
) -> None:
    rules = write_rules(tmp_path / "shared.toml", prefix, share_group=f"g{prefix}")
    messages = telemetry_messages(prefix, vehicles=100, seconds=100)
    first = _ingest(brokers, tmp_path, rules, f"{unique_name}-a")
    second = _ingest(brokers, tmp_path, rules, f"{unique_name}-b")
    with running(first.start(), second.start()):
        publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
        publisher.publish(((t, p) for t, p, _ in messages), rate=5000)
        publisher.wait_acked(len(messages))
        publisher.close()
        records = read_topic(brokers.kafka_bootstrap, f"{prefix}-telemetry", expect=len(messages))
        shares = [
            p.metrics()['fleetstream_ingest_received_total{rule="telemetry"}']
            for p in (first, second)
        ]
    row = delivery_report("shared_subscription_x2", {k for _, _, k in messages}, records)
    print(f"messages per process: {shares}")  # noqa: T201
    assert row["lost"] == 0
    assert row["duplicates"] == 0
    assert all(s > 0 for s in shares)
    assert sum(shares) == len(messages)


@pytest.mark.parametrize(
    ("case", "before", "after"),
    [
        # The scale-out step of the packaged rules: the running process keeps its client
        # id and its rule gains a share_group; its resumed session holds the plain filter.
        ("share_group_added", None, "new"),
        # The session holds $share/old/...: beside $share/new/... (or the plain filter),
        # the only member of both got every message twice before the record of filters.
        ("share_group_renamed", "old", "new"),
        ("share_group_removed", "old", None),
    ],
)
def test_a_restart_with_a_changed_share_group_writes_each_message_once(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    prefix: str,
    unique_name: str,
    case: str,
    before: str | None,
    after: str | None,
) -> None:
    messages = telemetry_messages(prefix, vehicles=20, seconds=50)
    name = f"{unique_name}-s"

    def rules(group: str | None, file: str) -> Path:
        return write_rules(tmp_path / file, prefix, share_group=group and f"{group}{prefix}")

    with running(_ingest(brokers, tmp_path, rules(before, "before.toml"), name).start()):
        pass
    restarted = _ingest(brokers, tmp_path, rules(after, "after.toml"), name)
    with running(restarted.start()):
        publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
        publisher.publish(((t, p) for t, p, _ in messages), rate=2000)
        publisher.wait_acked(len(messages))
        publisher.close()
        records = read_topic(
            brokers.kafka_bootstrap, f"{prefix}-telemetry", expect=len(messages), settle_s=3
        )
        received = restarted.metrics()['fleetstream_ingest_received_total{rule="telemetry"}']
    row = delivery_report(case, {k for _, _, k in messages}, records)
    assert row["lost"] == 0
    assert row["duplicates"] == 0
    assert received == len(messages)
    if before is not None:
        assert f"unsubscribed from $share/{before}{prefix}/" in restarted.log_path.read_text()


def test_wrong_mqtt_password_is_one_clear_error(
    brokers: infra.InfraSettings, tmp_path: Path, rules: Path
) -> None:
    env = {
        **os.environ,
        "FLEETSTREAM_MQTT_PORT": str(brokers.mqtt_auth_port),
        "FLEETSTREAM_MQTT_USERNAME": brokers.mqtt_username,
        "FLEETSTREAM_MQTT_PASSWORD": "wrong",
        "FLEETSTREAM_INGEST_RULES_FILE": str(rules),
        "FLEETSTREAM_INGEST_METRICS_PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "refused the connection" in errors[0]
    assert "Traceback" not in result.stderr


def test_broken_rules_file_is_rejected_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1}"\nadapter = "xml"\n')
    result = subprocess.run(
        [sys.executable, "-m", "fleetstream", "ingest", "--rules", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{bad}:5:" in result.stderr
    assert "adapter" in result.stderr


def test_producer_that_confirms_nothing_while_kafka_answers_is_replaced(
    brokers: infra.InfraSettings, tmp_path: Path, rules: Path, prefix: str, unique_name: str
) -> None:
    """Kafka up and leading every partition, yet nothing confirmed: a new producer.

    The stuck producer seen in CI could not be reproduced on demand, so the test creates
    its visible state for real: a 6 s ``linger.ms`` keeps records queued in the producer
    while Kafka answers. With a 2 s limit ingest must replace the producer once (the
    second wait is twice as long, and by then the new producer has delivered), hold every
    PUBACK until Kafka confirmed, and lose nothing, QoS 0 included.
    """
    topic = f"{prefix}-telemetry"
    messages = telemetry_messages(prefix, vehicles=20, seconds=50)
    qos0, qos1 = messages[:100], messages[100:]
    ingest = _ingest(
        brokers,
        tmp_path,
        rules,
        f"{unique_name}-ingest",
        FLEETSTREAM_INGEST_PRODUCER_RESTART_S="2",
        FLEETSTREAM_KAFKA_LINGER_MS="6000",
    )
    with running(ingest.start()):
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{unique_name}-q0")
        sender.connect(brokers.host, brokers.mqtt_port)
        sender.loop_start()
        for t, p, _ in qos0:
            sender.publish(t, p, qos=0).wait_for_publish(5)
        publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
        publisher.publish((t, p) for t, p, _ in qos1)
        publisher.wait_acked(len(qos1))
        acked_before_restart = []
        deadline = time.monotonic() + 30
        while ingest.metrics()["fleetstream_ingest_kafka_producer_restarts_total"] < 1:
            assert time.monotonic() < deadline, ingest.log()
            acked_before_restart.append(ingest.metrics()["fleetstream_ingest_acked_total"])
            time.sleep(0.2)
        records = read_topic(brokers.kafka_bootstrap, topic, expect=len(messages))
        deadline = time.monotonic() + 30
        while ingest.metrics()["fleetstream_ingest_acked_total"] < len(qos1):
            assert time.monotonic() < deadline, ingest.log()
            time.sleep(0.2)
        time.sleep(3)  # would a needless second replacement follow?
        metrics = ingest.metrics()
        sender.loop_stop()
        sender.disconnect()
        publisher.close()
    row = delivery_report("producer_restart", {k for _, _, k in messages}, records)
    assert row["lost"] == 0
    assert row["unexpected"] == 0
    assert row["duplicates"] == 0  # the replaced producer had sent nothing
    assert acked_before_restart, "the producer was replaced before the messages arrived"
    assert max(acked_before_restart) == 0  # no PUBACK before Kafka confirmed
    assert metrics["fleetstream_ingest_acked_total"] == len(qos1)
    assert metrics["fleetstream_ingest_kafka_producer_restarts_total"] == 1
    assert f"new Kafka producer, producing {len(qos1)} unconfirmed messages again" in ingest.log()
    assert ingest.crashes() == 0


def test_kafka_problem_asks_a_fresh_client(brokers: infra.InfraSettings, unique_name: str) -> None:
    settings = IngestSettings(kafka_bootstrap_servers=brokers.kafka_bootstrap)
    ensure_topics(settings, {f"{unique_name}-t"})
    assert kafka_problem(settings, {f"{unique_name}-t", f"{unique_name}-absent"}) is None
    nobody = IngestSettings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    problem = kafka_problem(nobody, {f"{unique_name}-t"}, timeout_s=1.0)
    assert problem is not None
    assert problem.startswith("no metadata")


def test_poison_messages_are_quarantined_without_losing_the_connection(
    brokers: infra.InfraSettings, tmp_path: Path, prefix: str, unique_name: str
) -> None:
    """Each of these once ended ingest's MQTT connection, and came back after every reconnect."""
    rules = tmp_path / "poison.toml"
    rules.write_text(
        f"""
[[mqtt_to_kafka]]
name = "telemetry"
mqtt = "{prefix}/+/telemetry"
topic = "{prefix}-telemetry"
key = "{{vehicle_id}}"
timestamp = "sent:s"
quarantine_topic = "{prefix}-q"

[[mqtt_to_kafka]]
name = "routed"
mqtt = "{prefix}/+/routed"
topic = "{prefix}-r-{{1}}"
key = "{{vehicle_id}}"
quarantine_topic = "{prefix}-q"
""",
        "utf-8",
    )
    (topic, payload, _), *_ = telemetry_messages(prefix, vehicles=1, seconds=1)

    def with_sent(sent: bytes) -> bytes:
        return payload[:-1] + b',"sent":' + sent + b"}"

    def props(*pairs: tuple[str, str]) -> Properties:
        p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        p.UserProperty = list(pairs)
        return p

    sends = [
        (topic, with_sent(b"1700000000"), None),
        (topic, with_sent(b"1e308"), None),  # OverflowError in route()
        (topic, with_sent(b"1700000001"), props(("a", "x" * 40_000), ("b", "y" * 40_000))),
        (topic, with_sent(b"1700000002"), props(("k", "\ufeffv"))),  # paho rejects it
        (f"{prefix}/{'c' * 600}/routed", with_sent(b"1700000003"), None),  # _INVALID_ARG
        (topic, with_sent(b"1700000004"), None),
    ]
    ingest = _ingest(brokers, tmp_path, rules, f"{unique_name}-ingest")
    with running(ingest.start()):
        sender = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{unique_name}-pub", protocol=mqtt.MQTTv5
        )
        sender.connect(brokers.host, brokers.mqtt_port)
        sender.loop_start()
        for t, p, pr in sends:
            sender.publish(t, p, qos=1, properties=pr).wait_for_publish(10)
        good = read_topic(brokers.kafka_bootstrap, f"{prefix}-telemetry", expect=2)
        bad = read_topic(brokers.kafka_bootstrap, f"{prefix}-q", expect=4)
        deadline = time.monotonic() + 20
        while ingest.metrics()["fleetstream_ingest_acked_total"] < len(sends):
            assert time.monotonic() < deadline, ingest.log()
            time.sleep(0.2)
        metrics = ingest.metrics()
        sender.loop_stop()
        sender.disconnect()
    assert sorted(r.timestamp for r in good) == [1_700_000_000_000, 1_700_000_004_000]
    reasons = sorted(r.headers["reason"].decode() for r in bad)
    assert reasons == ["bad_properties", "bad_timestamp", "bad_topic", "oversize"], ingest.log()
    assert all(r.value.startswith(payload[:-1]) for r in bad)
    assert metrics["fleetstream_ingest_mqtt_reconnects_total"] == 1, ingest.log()
    assert ingest.crashes() == 0


def test_rules_with_overlapping_filters_write_each_message_once_per_rule(
    brokers: infra.InfraSettings, tmp_path: Path, prefix: str, unique_name: str
) -> None:
    # Mosquitto sends one copy of a message per matching subscription of a client: two
    # rules whose filters both match a topic made every rule write it twice.
    rules = tmp_path / "overlap.toml"
    rules.write_text(
        f"""
[[mqtt_to_kafka]]
name = "telemetry"
mqtt = "{prefix}/+/telemetry"
adapter = "v1"
topic = "{prefix}-telemetry"
key = "{{vehicle_id}}"
timestamp = "ts:ms"

[[mqtt_to_kafka]]
name = "everything"
mqtt = "{prefix}/#"
adapter = "v1"
topic = "{prefix}-all"
key = "{{vehicle_id}}"
timestamp = "ts:ms"
value = "raw"
"""
    )
    messages = telemetry_messages(prefix, vehicles=20, seconds=25)
    sent = {k for _, _, k in messages}
    ingest = _ingest(brokers, tmp_path, rules, unique_name)
    with running(ingest.start()):
        publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
        publisher.publish(((t, p) for t, p, _ in messages), rate=2000)
        publisher.wait_acked(len(messages))
        publisher.close()
        rows = [
            delivery_report(
                f"overlap_{topic}",
                sent,
                read_topic(brokers.kafka_bootstrap, f"{prefix}-{topic}", len(messages), settle_s=3),
            )
            for topic in ("telemetry", "all")
        ]
        received = [
            ingest.metrics()[f'fleetstream_ingest_received_total{{rule="{name}"}}']
            for name in ("telemetry", "everything")
        ]
    assert [(r["lost"], r["duplicates"]) for r in rows] == [(0, 0), (0, 0)]
    assert received == [len(messages), len(messages)]


def test_a_qos0_flood_kafka_has_not_confirmed_is_capped_and_counted_without_blocking(
    brokers: infra.InfraSettings, tmp_path: Path, rules: Path, prefix: str, unique_name: str
) -> None:
    """QoS 0 beyond the backlog cap is dropped and counted; QoS 1 still gets through.

    A 10 s ``linger.ms`` keeps records queued while Kafka answers, as an outage would.
    Before the cap, a full queue made ingest wait for room inside the event loop: no
    message read, no PINGREQ, no PUBACK, for as long as Kafka was away.
    """
    cap = 2000
    messages = telemetry_messages(prefix, vehicles=50, seconds=126)
    qos0, qos1 = messages[:6000], messages[6000:]
    ingest = _ingest(
        brokers,
        tmp_path,
        rules,
        f"{unique_name}-ingest",
        FLEETSTREAM_INGEST_QOS0_MAX_QUEUED=str(cap),
        FLEETSTREAM_KAFKA_LINGER_MS="10000",
        FLEETSTREAM_INGEST_PRODUCER_RESTART_S="120",
    )
    with running(ingest.start()):
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{unique_name}-q0")
        sender.connect(brokers.host, brokers.mqtt_port)
        sender.loop_start()
        for t, p, _ in qos0:
            sender.publish(t, p, qos=0).wait_for_publish(5)
        received = 'fleetstream_ingest_received_total{rule="telemetry"}'
        deadline = time.monotonic() + 8  # inside the linger: nothing confirmed yet
        while ingest.metrics()[received] < len(qos0):
            assert time.monotonic() < deadline, "ingest stopped reading MQTT"
            time.sleep(0.1)
        publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
        publisher.publish((t, p) for t, p, _ in qos1)
        during = ingest.metrics()
        publisher.wait_acked(len(qos1), timeout_s=60)
        records = read_topic(
            brokers.kafka_bootstrap, f"{prefix}-telemetry", expect=cap + len(qos1), settle_s=3
        )
        after = ingest.metrics()
        sender.loop_stop()
        sender.disconnect()
        publisher.close()
    assert during['fleetstream_ingest_produced_total{rule="telemetry"}'] == 0
    dropped = after['fleetstream_ingest_dropped_total{rule="telemetry"}']
    assert dropped == len(qos0) - cap
    row = delivery_report("qos0_capped", {k for _, _, k in messages}, records)
    assert row["lost"] == dropped  # exactly the counted QoS 0 drops
    in_kafka = {(v["vehicle_id"], v["seq"]) for v in (orjson.loads(r.value) for r in records)}
    assert {k for _, _, k in qos1} <= in_kafka
    assert row["duplicates"] == 0
    assert after["fleetstream_ingest_acked_total"] == len(qos1)
    assert after["fleetstream_ingest_mqtt_reconnects_total"] == 1
    assert f"dropped 1 QoS 0 messages (the latest on {prefix}/" in ingest.log()
    assert ingest.crashes() == 0
