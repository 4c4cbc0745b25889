"""The container stack's files against real running services (no Docker needed).

- The Grafana dashboard only queries metrics that a live ingest, processing and archive
  process (started here with the compose file's settings) actually export.
- The compose Mosquitto config starts a real Mosquitto that accepts MQTT 5 clients.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.harness import (
    IngestProcess,
    ProcessingRun,
    QosOnePublisher,
    free_port,
    produce,
    running,
    telemetry_messages,
    write_rules,
)
from fleetstream import infra
from fleetstream.infra import _mosquitto

from ..deploy_checks import (
    DEPLOY,
    GRAFANA_DASHBOARD,
    command_of,
    dashboard_expressions,
    environment_of,
    exported_metric_names,
    promql_metric_names,
    resolved_compose,
)

pytestmark = pytest.mark.integration

# Series Prometheus itself adds to every target; no service exports them.
PROMETHEUS_BUILTINS = frozenset({"up"})
# Compose settings that only make sense inside the containers (hosts, ports, paths, ids);
# the test harnesses set their own.
CONTAINER_ONLY = frozenset(
    {
        "FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS",
        "FLEETSTREAM_MQTT_HOST",
        "FLEETSTREAM_MQTT_PORT",
        "FLEETSTREAM_MQTT_CLIENT_ID",
        "FLEETSTREAM_INGEST_RULES_FILE",
        "FLEETSTREAM_INGEST_METRICS_HOST",
        "FLEETSTREAM_INGEST_METRICS_PORT",
        "FLEETSTREAM_PROCESSING_CONSUMER_GROUP",
        "FLEETSTREAM_PROCESSING_STATE_DIR",
        "FLEETSTREAM_PROCESSING_MODEL_DIR",
        "FLEETSTREAM_PROCESSING_METRICS_HOST",
        "FLEETSTREAM_PROCESSING_METRICS_PORT",
        "FLEETSTREAM_ARCHIVE_CONSUMER_GROUP",
        "FLEETSTREAM_ARCHIVE_METRICS_HOST",
        "FLEETSTREAM_ARCHIVE_METRICS_PORT",
    }
)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def run_archive(
    brokers: infra.InfraSettings, topic: str, tmp_path: Path, group: str, rows: int
) -> str:
    """Run ``fleetstream archive`` with the compose settings; its /metrics once ``rows`` are filed.

    The topic holds ``rows`` valid records and one invalid one (skipped, counted).
    """
    port = free_port()
    env = {
        **os.environ,
        **compose_env("archive"),
        "FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS": brokers.kafka_bootstrap,
        "FLEETSTREAM_ARCHIVE_TELEMETRY_TOPIC": topic,
        "FLEETSTREAM_ARCHIVE_CONSUMER_GROUP": group,
        "FLEETSTREAM_ARCHIVE_METRICS_PORT": str(port),
        "FLEETSTREAM_ARCHIVE_MAX_AGE_S": "1",  # file the rows now, not in 10 minutes
    }
    command = command_of(resolved_compose()["services"]["archive"])
    out = tmp_path / "archive"
    args = [arg if arg != "/var/lib/fleetstream/archive" else str(out) for arg in command]
    log = tmp_path / "archive.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetstream", *args, "--tables", "telemetry"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    expected = (
        f'fleetstream_archive_rows_total{{table="telemetry"}} {float(rows)}',
        'fleetstream_archive_skipped_total{table="telemetry"} 1.0',
    )
    try:

        def done() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                text = scrape(port)
            except OSError:
                return False
            return all(line in text for line in expected)

        wait_for(f"the archive to file {rows} rows and skip 1", done, timeout_s=120)
        text = scrape(port)
    finally:
        proc.terminate()
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()
    assert list(out.glob("telemetry/date=*/powertrain=*/part-*.parquet")), log.read_text()
    return text


def compose_env(service: str) -> dict[str, str]:
    env = environment_of(resolved_compose()["services"][service])
    return {k: v for k, v in env.items() if k not in CONTAINER_ONLY}


def wait_for(what: str, check: object, timeout_s: float = 120.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_queries_only_metrics_the_live_services_export(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = f"dp{unique_name[-8:]}"
    ingest = IngestProcess(
        brokers,
        tmp_path,
        f"{prefix}-ingest",
        write_rules(tmp_path / "rules.toml", prefix),
        extra_env=compose_env("ingest"),
    )
    # ProcessingRun builds its environment from os.environ: the compose settings go there.
    for key, value in compose_env("processing").items():
        monkeypatch.setenv(key, value)
    (tmp_path / "models").mkdir()
    processing = ProcessingRun(
        brokers.kafka_bootstrap, prefix, tmp_path, model_dir=tmp_path / "models"
    )
    messages = telemetry_messages(prefix, vehicles=3, seconds=10)
    with running(ingest):
        ingest.start()
        publisher = QosOnePublisher(brokers, f"{prefix}-pub")
        try:
            sent = publisher.publish([(t, p) for t, p, _ in messages])
            publisher.publish([(f"{prefix}/bad/telemetry", b"not json")])
            publisher.wait_acked(sent + 1)
        finally:
            publisher.close()
        wait_for(
            "ingest to acknowledge everything",
            lambda: ingest.metrics().get("fleetstream_ingest_acked_total", 0) >= sent + 1,
        )
        ingest_text = scrape(ingest.port)

        # Processing reads what ingest wrote, plus one record it must quarantine.
        produce(brokers.kafka_bootstrap, processing.topics["input"], [(b"veh", b"{}", 1)])
        processing.start()
        try:
            processing.wait_consumed(sent + 1, timeout_s=180)
            processing_text = scrape(processing.port)
        finally:
            assert processing.stop() == 0, processing.log()
        archive_text = run_archive(
            brokers, processing.topics["input"], tmp_path, f"{prefix}-archive", sent
        )

    ingest_names = exported_metric_names(ingest_text)
    processing_names = exported_metric_names(processing_text)
    archive_names = exported_metric_names(archive_text)
    # The traffic really went through: labelled series exist, not only declarations.
    assert 'fleetstream_ingest_received_total{rule="telemetry"}' in ingest_text
    assert "fleetstream_ingest_quarantined_total{" in ingest_text
    assert "fleetstream_processing_quarantined_total{" in processing_text

    dashboard = json.loads(GRAFANA_DASHBOARD.read_text("utf-8"))
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 10
    missing = []
    for title, expr in expressions:
        names = promql_metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        for name in names - PROMETHEUS_BUILTINS:
            source = (
                processing_names
                if name.startswith("fleetstream_processing_")
                else archive_names
                if name.startswith("fleetstream_archive_")
                else ingest_names
            )
            if name not in source:
                missing.append(f"panel {title!r}: {name} is not exported ({expr})")
    assert not missing, "\n".join(missing)


def test_compose_mosquitto_config_runs_a_real_mosquitto(tmp_path: Path) -> None:
    # Same file as the container mounts; only the in-container port, paths and the user
    # (a container drops to `mosquitto` by itself) are swapped for this machine.
    port = free_port()
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text("utf-8")
    conf = conf.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    conf = conf.replace("/mosquitto/data/", f"{tmp_path}/")
    conf += f"user {getpass.getuser()}\n"
    (tmp_path / "mosquitto.conf").write_text(conf, "utf-8")
    proc = subprocess.Popen(
        [_mosquitto.binary(), "-c", str(tmp_path / "mosquitto.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        received: list[bytes] = []
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="deploy-check", protocol=mqtt.MQTTv5
        )
        client.on_message = lambda _c, _u, msg: received.append(bytes(msg.payload))
        deadline = time.monotonic() + 20
        while True:
            try:
                client.connect("127.0.0.1", port)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0].decode()
                assert time.monotonic() < deadline, "compose Mosquitto did not listen"
                time.sleep(0.2)
        client.loop_start()
        # The compose healthcheck subscribes to $SYS/broker/uptime: it must answer.
        client.subscribe([("$SYS/broker/uptime", 0), ("$share/ingest/fleet/+/telemetry", 1)])
        time.sleep(0.5)
        client.publish("fleet/veh1/telemetry", orjson.dumps({"ok": 1}), qos=1).wait_for_publish(5)
        wait_for("uptime and the shared-subscription message", lambda: len(received) >= 2, 15)
        client.disconnect()
        client.loop_stop()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    assert "Error" not in output, output
