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

import orjson
import pytest

from bench.harness import (
    FaultRow,
    IngestProcess,
    KafkaRecord,
    QosOnePublisher,
    read_topic,
    running,
    telemetry_messages,
    write_rules,
)
from fleetstream import infra
from fleetstream.infra import _kafka, _mosquitto
from fleetstream.infra._process import wait_until
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
    # Emitted after the checks, with their outcome: a failed case is not a clean row.
    with row.checked(rows_file):
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
    with row.checked(rows_file):
        assert row.lost == 0, ingest.log()
        # MQTT never redelivers here, and the idempotent producer with no message timeout
        # retries without writing twice: a duplicate means a record was produced again.
        assert row.duplicates == 0, ingest.log()
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


def _classify_duplicates(records: list[KafkaRecord]) -> dict[str, int]:
    """Extra copies by origin, from the ``mqtt_dup`` header ingest wrote.

    A copy ingest received with the MQTT dup flag was redelivered by the broker (ingest's
    PUBACK never reached it); copies without it are separate PUBLISHes: the publisher
    resent a message whose PUBACK it lost, and QoS 1 lets the broker store both.
    """
    copies: dict[tuple[str, int], list[bytes]] = {}
    for r in records:
        value = orjson.loads(r.value)
        copies.setdefault((value["vehicle_id"], value["seq"]), []).append(
            r.headers.get("mqtt_dup", b"?")
        )
    out = {"broker_redelivery": 0, "publisher_resend": 0}
    for flags in copies.values():
        extra = len(flags) - 1
        if extra:
            out["broker_redelivery" if b"1" in flags else "publisher_resend"] += extra
    return out


def _autosave_interval_s(brokers: infra.InfraSettings) -> float:
    config = (_mosquitto.mosquitto_dir(brokers) / "mosquitto.conf").read_text("utf-8")
    for line in config.splitlines():
        if line.startswith("autosave_interval"):
            return float(line.split()[1])
    return 1800.0  # Mosquitto's default


def _mosquitto_fault(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    prefix: str,
    unique_name: str,
    scale: Scale,
    rows_file: Path,
    mode: str,
) -> tuple[FaultRow, IngestProcess]:
    """Publish at a steady rate; stop Mosquitto (``graceful`` or ``kill9``) mid-stream.

    Before the broker goes down, ingest is frozen for two seconds so the broker holds a
    backlog queued for ingest's session: that backlog must survive the restart.
    """
    began = time.monotonic()
    mosquitto = _mosquitto.process(brokers)
    assert mosquitto.pid() is not None, "this case needs the Mosquitto `fleetstream infra` started"
    messages = telemetry_messages(prefix, vehicles=100, seconds=scale.mqtt_messages // 100)
    rate = 2000.0
    rules = write_rules(
        tmp_path / "rules.toml", prefix, headers=["mqtt_topic", "qos", "received_at", "dup"]
    )
    ingest = IngestProcess(brokers, tmp_path, f"{unique_name}-ingest", rules)
    publisher = QosOnePublisher(brokers, f"{unique_name}-pub", session_expiry_s=900)
    with running(ingest.start()):
        if mode == "kill9":
            # A long-running ingest's session is in the broker's last autosave; wait for
            # one so this young ingest is in the same position.
            time.sleep(_autosave_interval_s(brokers) + 2)
        reconnects_before = ingest.metrics()["fleetstream_ingest_mqtt_reconnects_total"]
        thread, errors = _publish_in_background(publisher, [(t, p) for t, p, _ in messages], rate)
        time.sleep(min(2.0, len(messages) / rate / 4))
        ingest_acked = ingest.metrics()["fleetstream_ingest_acked_total"]
        assert ingest.proc is not None
        proc = ingest.proc.pid
        os.kill(proc, signal.SIGSTOP)
        try:
            time.sleep(2.0)
            backlog = publisher.acked - ingest_acked  # approximate: ingest acked a few more
            broker_pid = mosquitto.pid()
            assert broker_pid is not None
            if mode == "graceful":
                assert mosquitto.stop(), "Mosquitto was not running"
            else:
                os.kill(broker_pid, signal.SIGKILL)
                assert wait_until(lambda: mosquitto.pid() is None, 10)
        finally:
            os.kill(proc, signal.SIGCONT)
        time.sleep(scale.mqtt_down_s)
        infra.up(brokers)
        thread.join()
        assert not errors, errors
        publisher.wait_acked(len(messages), timeout_s=300)
        publisher_connects = publisher.connects
        publisher.close()
        records = read_topic(
            brokers.kafka_bootstrap,
            f"{prefix}-telemetry",
            expect=len(messages),
            timeout_s=300 if mode == "graceful" else 30,  # kill -9 loses some: no wait
        )
        metrics = ingest.metrics()
        ingest.stop()
    row = FaultRow.from_records(
        "mosquitto_restart" if mode == "graceful" else "mosquitto_kill9_informational",
        scale.name,
        {k for _, _, k in messages},
        records,
        crashes=ingest.crashes(),
    )
    row.duration_s = time.monotonic() - began
    row.notes = {
        "down_s": scale.mqtt_down_s,
        "rate": rate,
        "backlog_at_stop": backlog,
        "publisher_connects": publisher_connects,
        "ingest_reconnects": metrics["fleetstream_ingest_mqtt_reconnects_total"]
        - reconnects_before,
        "redelivered_to_ingest": metrics["fleetstream_ingest_redelivered_total"],
        "duplicates_by_origin": _classify_duplicates(records),
        "sessions_lost": metrics["fleetstream_ingest_mqtt_sessions_lost_total"],
    }
    return row, ingest


def _assert_the_broker_went_down(row: FaultRow) -> None:
    notes = row.notes
    assert notes["publisher_connects"] >= 2, "the publisher never reconnected: restarted?"
    assert notes["ingest_reconnects"] > 0, "ingest never reconnected"
    assert notes["backlog_at_stop"] > 500, "no backlog was queued for ingest: tested nothing"


def test_mosquitto_restarted_mid_stream(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    prefix: str,
    unique_name: str,
    scale: Scale,
    rows_file: Path,
) -> None:
    """Graceful restart (persistence on): publisher and ingest both reconnect by themselves."""
    row, ingest = _mosquitto_fault(
        brokers, tmp_path, prefix, unique_name, scale, rows_file, "graceful"
    )
    with row.checked(rows_file):
        _assert_the_broker_went_down(row)
        assert row.lost == 0, ingest.log()
        assert row.unexpected == 0
        assert row.crashes == 0, ingest.log()


def test_mosquitto_kill9_informational(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    prefix: str,
    unique_name: str,
    scale: Scale,
    rows_file: Path,
) -> None:
    """Informational: ``kill -9`` of Mosquitto with a backlog queued for ingest.

    Mosquitto writes its persistence file every ``autosave_interval`` (30 s) and on a clean
    exit, not per message: QoS 1 messages it acknowledged and queued since the last save
    die with the process. That is a broker limit (docs/faults.md), so ``lost`` is reported,
    not asserted to be 0; it must stay within the unsaved queue (the backlog plus what was
    in flight), and ingest must reconnect by itself and never crash.
    """
    row, ingest = _mosquitto_fault(
        brokers, tmp_path, prefix, unique_name, scale, rows_file, "kill9"
    )
    with row.checked(rows_file):
        _assert_the_broker_went_down(row)
        assert row.unexpected == 0
        assert row.crashes == 0, ingest.log()
        # The session was saved (we waited for an autosave): only the unsaved queue is gone.
        assert row.notes["sessions_lost"] == 0, ingest.log()
        assert row.lost <= row.notes["backlog_at_stop"] + 2000, "lost more than the queue"


def broker_warnings(settings: infra.InfraSettings, last: int = 5) -> list[str]:
    """Mosquitto's last lines about dropped messages or errors (its own losses show there)."""
    log = _mosquitto.log_path(settings)
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line for line in lines if "dropped" in line or "rror" in line][-last:]


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
        not_routed = dict(publisher.not_success)  # e.g. "No matching subscribers"
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
        # What ingest itself counted, for the failure message (one CI run found 1,997
        # of 2,000 in quarantine while ingest had acknowledged every message).
        counted = {
            k: v
            for k, v in ingest.metrics().items()
            if k.startswith(("fleetstream_ingest_received", "fleetstream_ingest_produced",
                             "fleetstream_ingest_quarantined", "fleetstream_ingest_acked",
                             "fleetstream_ingest_unmatched", "fleetstream_ingest_failed",
                             "fleetstream_ingest_redelivered"))
        }  # fmt: skip
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
        "pubacks_not_success": not_routed,
    }
    with row.checked(rows_file):
        assert alive, ingest.log()
        assert exit_code == 0, ingest.log()
        assert row.crashes == 0, ingest.log()
        assert row.lost == 0
        assert row.duplicates == 0
        assert row.unexpected == 0
        # Every bad payload quarantined once, raw bytes kept, with the contract's reason.
        missing = expected - got
        assert got == expected, (
            f"extra {got - expected}; missing {[(p[:300], r) for p, r in missing]}; "
            f"{len(stream)} published, PUBACKs other than success {not_routed}; "
            f"ingest counted {counted}; Mosquitto log: {broker_warnings(brokers)}"
        )
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
