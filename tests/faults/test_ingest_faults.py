"""Ingest under faults against the real Mosquitto and Kafka (issue 9).

Each case prints ``FAULT ROW case, sent, in_kafka, lost, duplicates, quarantined,
crashes`` and appends it to ``test-output/faults/rows.jsonl``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.harness import (
    FaultRow,
    IngestProcess,
    QosOnePublisher,
    read_topic,
    running,
    telemetry_messages,
)
from fleetstream import infra
from fleetstream.infra import _kafka, _mosquitto
from tests.faults._fuzz import bad_payloads
from tests.faults._scale import Scale

pytestmark = [pytest.mark.faults, pytest.mark.timeout(1800)]


def _publish_in_background(
    publisher: QosOnePublisher, payloads: list[tuple[str, bytes]], rate: float
) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            publisher.publish(payloads, rate)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            raise

    thread = threading.Thread(target=run, name="publisher")
    thread.start()
    return thread, errors


def test_ingest_kill9_repeatedly_loses_nothing(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    rules: Path,
    prefix: str,
    unique_name: str,
    scale: Scale,
    rows_file: Path,
) -> None:
    began = time.monotonic()
    messages = telemetry_messages(prefix, vehicles=scale.kill_vehicles, seconds=100)
    ingest = IngestProcess(brokers, tmp_path, f"{unique_name}-ingest", rules)
    publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
    payloads = [(t, p) for t, p, _ in messages]
    # Kills spread over the publishing time; later ones may hit the backlog being drained.
    interval = max(1.5, len(messages) / scale.kill_rate / (scale.kills + 1))
    with running(ingest.start()):
        thread, errors = _publish_in_background(publisher, payloads, scale.kill_rate)
        for _ in range(scale.kills):
            time.sleep(interval)
            ingest.kill9()
            ingest.start()
        thread.join()
        assert not errors, errors
        publisher.wait_acked(len(messages), timeout_s=300)
        publisher.close()
        records = read_topic(
            brokers.kafka_bootstrap, f"{prefix}-telemetry", expect=len(messages), timeout_s=300
        )
        ingest.stop()
    row = FaultRow.from_records(
        f"ingest_kill9_x{scale.kills}",
        scale.name,
        {k for _, _, k in messages},
        records,
        crashes=ingest.crashes(),
    )
    row.duration_s = time.monotonic() - began
    row.notes = {"kills": scale.kills, "interval_s": round(interval, 2), "rate": scale.kill_rate}
    row.emit(rows_file)
    assert ingest.starts == scale.kills + 1
    assert row.lost == 0, ingest.log()
    assert row.unexpected == 0
    assert row.crashes == 0, ingest.log()


def _kafka_outage(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    rules: Path,
    prefix: str,
    unique_name: str,
    scale: Scale,
    rows_file: Path,
    mode: str,
) -> None:
    began = time.monotonic()
    proc = _kafka.process(brokers)
    pid = proc.pid()
    assert pid is not None, "the outage cases need the Kafka that `fleetstream infra` started"
    before_s, after_s = 5.0, 10.0
    vehicles = 100
    seconds = round(scale.outage_rate * (before_s + scale.outage_s + after_s) / vehicles)
    messages = telemetry_messages(prefix, vehicles=vehicles, seconds=seconds)
    ingest = IngestProcess(
        brokers,
        tmp_path,
        f"{unique_name}-ingest",
        rules,
        extra_env={"FLEETSTREAM_INGEST_STALL_S": "3"},
    )
    publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
    rss: list[float] = []
    degraded = []
    with running(ingest.start()):
        thread, errors = _publish_in_background(
            publisher, [(t, p) for t, p, _ in messages], scale.outage_rate
        )
        time.sleep(before_s)
        if mode == "stop":
            proc.stop()
        else:
            os.kill(pid, signal.SIGSTOP)
        try:
            outage_end = time.monotonic() + scale.outage_s
            while time.monotonic() < outage_end:
                rss.append(ingest.rss_mb())
                health = ingest.health()
                if health is not None and health["status"] != "ok":
                    degraded.append(health)
                time.sleep(0.5)
        finally:
            if mode == "stop":
                infra.up(brokers)
            else:
                os.kill(pid, signal.SIGCONT)
        thread.join()
        assert not errors, errors
        publisher.wait_acked(len(messages), timeout_s=300)
        publisher.close()
        records = read_topic(
            brokers.kafka_bootstrap, f"{prefix}-telemetry", expect=len(messages), timeout_s=300
        )
        final_health = ingest.health()
        ingest.stop()
    row = FaultRow.from_records(
        f"kafka_{'stopped' if mode == 'stop' else 'sigstop'}_{scale.outage_s:.0f}s",
        scale.name,
        {k for _, _, k in messages},
        records,
        crashes=ingest.crashes(),
    )
    row.duration_s = time.monotonic() - began
    row.notes = {
        "outage_s": scale.outage_s,
        "rate": scale.outage_rate,
        "max_rss_mib": round(max(rss), 1),
        "degraded_samples": len(degraded),
    }
    row.emit(rows_file)
    assert row.lost == 0, ingest.log()
    assert row.unexpected == 0
    assert row.crashes == 0, ingest.log()
    assert degraded, "the outage was never reported on /healthz"
    assert not degraded[-1]["kafka_up"] or degraded[-1]["oldest_unacked_s"] > 3
    assert max(rss) < 150, f"ingest RSS reached {max(rss):.1f} MiB during the outage"
    assert final_health is not None
    assert final_health["status"] == "ok"


def test_kafka_stopped_mid_stream(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    rules: Path,
    prefix: str,
    unique_name: str,
    scale: Scale,
    rows_file: Path,
) -> None:
    _kafka_outage(brokers, tmp_path, rules, prefix, unique_name, scale, rows_file, "stop")


def test_kafka_frozen_sigstop_mid_stream(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    rules: Path,
    prefix: str,
    unique_name: str,
    scale: Scale,
    rows_file: Path,
) -> None:
    _kafka_outage(brokers, tmp_path, rules, prefix, unique_name, scale, rows_file, "freeze")


def test_mosquitto_restarted_mid_stream(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    rules: Path,
    prefix: str,
    unique_name: str,
    scale: Scale,
    rows_file: Path,
) -> None:
    """Graceful restart (persistence on): publisher and ingest both reconnect by themselves."""
    began = time.monotonic()
    mosquitto = _mosquitto.process(brokers)
    assert mosquitto.pid() is not None, "this case needs the Mosquitto `fleetstream infra` started"
    messages = telemetry_messages(prefix, vehicles=100, seconds=scale.mqtt_messages // 100)
    rate = 2000.0
    ingest = IngestProcess(brokers, tmp_path, f"{unique_name}-ingest", rules)
    publisher = QosOnePublisher(brokers, f"{unique_name}-pub", session_expiry_s=900)
    with running(ingest.start()):
        reconnects_before = ingest.metrics()["fleetstream_ingest_mqtt_reconnects_total"]
        thread, errors = _publish_in_background(publisher, [(t, p) for t, p, _ in messages], rate)
        time.sleep(min(3.0, len(messages) / rate / 3))
        assert mosquitto.stop(), "Mosquitto was not running"
        time.sleep(scale.mqtt_down_s)
        infra.up(brokers)
        thread.join()
        assert not errors, errors
        publisher.wait_acked(len(messages), timeout_s=300)
        publisher_connects = publisher.connects
        publisher.close()
        records = read_topic(
            brokers.kafka_bootstrap, f"{prefix}-telemetry", expect=len(messages), timeout_s=300
        )
        metrics = ingest.metrics()
        ingest.stop()
    row = FaultRow.from_records(
        "mosquitto_restart",
        scale.name,
        {k for _, _, k in messages},
        records,
        crashes=ingest.crashes(),
    )
    row.duration_s = time.monotonic() - began
    row.notes = {
        "down_s": scale.mqtt_down_s,
        "rate": rate,
        "publisher_connects": publisher_connects,
        "ingest_reconnects": metrics["fleetstream_ingest_mqtt_reconnects_total"]
        - reconnects_before,
        "redelivered_to_ingest": metrics["fleetstream_ingest_redelivered_total"],
    }
    row.emit(rows_file)
    assert row.lost == 0, ingest.log()
    assert row.unexpected == 0
    assert row.crashes == 0, ingest.log()
    assert publisher_connects >= 2, "the publisher never reconnected: was the broker restarted?"
    assert metrics["fleetstream_ingest_mqtt_reconnects_total"] > reconnects_before


def test_fuzzed_payloads_are_quarantined_valid_ones_delivered(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    rules: Path,
    prefix: str,
    unique_name: str,
    scale: Scale,
    rows_file: Path,
) -> None:
    began = time.monotonic()
    valid = telemetry_messages(prefix, vehicles=scale.fuzz_vehicles, seconds=100)
    bad = bad_payloads(scale.fuzz_bad, [p for _, p, _ in valid[:500]])
    stream: list[tuple[str, bytes]] = []
    every = max(1, len(valid) // len(bad))
    pending = list(bad)
    for i, (topic, payload, _) in enumerate(valid):
        stream.append((topic, payload))
        if i % every == 0 and pending:
            stream.append((topic, pending.pop().payload))
    stream.extend((valid[-1][0], b.payload) for b in pending)
    ingest = IngestProcess(brokers, tmp_path, f"{unique_name}-ingest", rules)
    with running(ingest.start()):
        publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
        publisher.publish(stream, rate=3000)
        publisher.wait_acked(len(stream), timeout_s=300)
        publisher.close()
        good = read_topic(
            brokers.kafka_bootstrap, f"{prefix}-telemetry", expect=len(valid), timeout_s=300
        )
        quarantined = read_topic(
            brokers.kafka_bootstrap,
            f"{prefix}-telemetry.quarantine",
            expect=len(bad),
            timeout_s=300,
        )
        alive = ingest.proc is not None and ingest.proc.poll() is None
        exit_code = ingest.stop()
    got = Counter((r.value, r.headers.get("reason", b"").decode()) for r in quarantined)
    expected = Counter((b.payload, b.reason) for b in bad)
    row = FaultRow.from_records(
        "ingest_fuzz",
        scale.name,
        {k for _, _, k in valid},
        good,
        quarantined=len(quarantined),
        crashes=ingest.crashes(),
    )
    row.duration_s = time.monotonic() - began
    row.notes = {
        "bad": len(bad),
        "kinds": dict(Counter(b.kind for b in bad)),
        "reasons": dict(Counter(b.reason.split(":")[0] for b in bad)),
    }
    row.emit(rows_file)
    assert alive, ingest.log()
    assert exit_code == 0, ingest.log()
    assert row.crashes == 0, ingest.log()
    assert row.lost == 0
    assert row.duplicates == 0
    assert row.unexpected == 0
    # Every bad payload quarantined once, raw bytes kept, with the contract's reason.
    assert got == expected, (got - expected, expected - got)
    assert {b.reason.split(":")[0] for b in bad} >= {
        "not_json",
        "not_object",
        "missing",
        "wrong_type",
        "out_of_range",
        "oversize",
        "bad_value",
    }
    assert all(r.headers.get("detail") and r.headers.get("mqtt_topic") for r in quarantined)
