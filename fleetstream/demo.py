"""`fleetstream demo`: the local stack end to end, started by one command."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dashboard.settings import DashboardSettings
from fleetstream import infra
from ingest import IngestSettings
from models import DEFAULT_REGISTRY
from processing import ProcessingSettings
from simulator import FleetConfig, Format, MqttTarget, run_to_mqtt

_log = logging.getLogger("fleetstream.demo")
TELEMETRY_TOPIC = "vehicle-telemetry"
OUTPUT_TOPICS = (TELEMETRY_TOPIC, "vehicle-stats", "vehicle-sessions", "vehicle-alerts")
DEMO_SESSION_EXPIRY_S = 600  # the demo ingest's MQTT session outlives a stop by this long


def topic_size(bootstrap: str, topic: str, attempts: int = 20) -> int:
    """Records currently in a topic (sum of partition high watermarks minus low).

    A topic created a moment ago may not have elected its partition leaders yet
    ("not leader for partition"): ask again for a few seconds.
    """
    for _ in range(attempts - 1):
        try:
            return _topic_size(bootstrap, topic)
        except KafkaException:
            time.sleep(0.5)
    return _topic_size(bootstrap, topic)


def _topic_size(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fleetstream-demo-probe"})
    try:
        metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        total = 0
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
            total += high - low
        return total
    finally:
        consumer.close()


_PR_SET_PDEATHSIG: Final = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """The C library's ``prctl``, looked up in the demo, not in a child before its exec."""
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None).prctl
    return prctl


def _end_with_parent(demo_pid: int) -> None:
    """In a service's process: SIGTERM when the demo ends, however (``kill -9`` too).

    Orphaned services kept the ports and the MQTT session, untracked: the next demo's
    health checks were answered by them.
    """
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != demo_pid:  # the demo died before the signal was asked for
            os._exit(1)


@contextlib.contextmanager
def service(
    name: str, argv: list[str], log_dir: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a fleetstream service as a child process; SIGTERM it on exit, or if the demo dies."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    infra.rotate_log(log_path)
    _prctl()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            preexec_fn=functools.partial(_end_with_parent, os.getpid()),  # noqa: PLW1509 - no other thread runs yet
        )
    _log.info("%s started (pid %d, log %s)", name, proc.pid, log_path)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        _log.info("%s stopped (exit %s)", name, proc.returncode)


def _wait_healthy(
    name: str, url: str, proc: subprocess.Popen[bytes], log_dir: Path, timeout_s: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exited = _watch({name: proc}, log_dir)
        if exited is not None:
            raise RuntimeError(exited)
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - localhost
            if resp.status == 200:
                return
        time.sleep(0.3)
    msg = f"{name} ({url}) did not report healthy within {timeout_s:.0f} s"
    raise RuntimeError(msg)


def _check_ports_free(ports: dict[str, tuple[str, int]]) -> None:
    """Refuse to start when a service's port is taken (a leftover demo or service).

    The new service would die on the busy port while the old one answered the health
    check in its place.

    Raises:
        RuntimeError: A port is in use.
    """
    for name, (host, port) in ports.items():
        if port == 0:
            continue
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except OSError:
            continue  # an address the service itself will report on
        with socket.socket(family, kind, proto) as probe:
            # As the servers bind: a port whose last connections are in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    continue
                msg = (
                    f"{name}'s port {host}:{port} is in use; another demo or {name} still "
                    "running? Stop it first"
                )
                raise RuntimeError(msg) from None


def _watch(services: dict[str, subprocess.Popen[bytes]], log_dir: Path) -> str | None:
    """An error naming the first service that exited, or None while all run."""
    for name, proc in services.items():
        if proc.poll() is not None:
            return f"{name} exited with {proc.returncode}; see {log_dir / f'{name}.log'}"
    return None


class _StopSignal:
    """SIGTERM/SIGINT handler: Ctrl-C's way out, or only a flag while the fleet publishes.

    SIGTERM (kill, timeout, systemd) takes Ctrl-C's way out, so that the services the
    demo started are stopped too instead of outliving it. While the simulator publishes,
    the signal only sets :attr:`event`, which ends its loop: an exception raised there at
    an arbitrary point once left the publisher's lock held, and the demo hung in its
    ``close()`` for good with every service still running.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.raising = True

    def __call__(self, signum: int, _frame: object) -> None:
        self.event.set()
        if self.raising:
            msg = f"signal {signum}"
            raise KeyboardInterrupt(msg)


def _ingest_health_url() -> str | None:
    """Where the demo's ingest answers /healthz (it reads the same environment), or None."""
    ingest = IngestSettings()
    if ingest.ingest_metrics_port == 0:
        return None
    host = ingest.ingest_metrics_host
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - a listen address, not a bind
        host = "127.0.0.1"
    return f"http://{host}:{ingest.ingest_metrics_port}/healthz"


def run_demo(vehicles: int, duration_s: float | None, anomaly_rate: float, seed: int) -> None:
    """Start brokers and services, publish a simulated fleet in real time, report progress.

    SIGTERM stops it as Ctrl-C does: the services it started are stopped before it exits.
    """
    stop = _StopSignal()
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        _run_demo(vehicles, duration_s, anomaly_rate, seed, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_demo(
    vehicles: int,
    duration_s: float | None,
    anomaly_rate: float,
    seed: int,
    signals: _StopSignal | None = None,
) -> None:
    signals = signals or _StopSignal()
    settings = infra.InfraSettings()
    dashboard_settings = DashboardSettings()
    dashboard_url = (
        f"http://{dashboard_settings.dashboard_host}:{dashboard_settings.dashboard_port}"
    )
    ingest_settings, processing_settings = IngestSettings(), ProcessingSettings()
    # Before the brokers: a leftover demo is refused with nothing started. Only the
    # services' own ports (metrics, dashboard); the brokers' are `infra up`'s business.
    _check_ports_free(
        {
            "ingest": (ingest_settings.ingest_metrics_host, ingest_settings.ingest_metrics_port),
            "processing": (
                processing_settings.processing_metrics_host,
                processing_settings.processing_metrics_port,
            ),
            "dashboard": (dashboard_settings.dashboard_host, dashboard_settings.dashboard_port),
        }
    )
    report = infra.up(settings)
    _log.info("brokers up (kafka %.1f s, mosquitto %.1f s)", report.kafka_s, report.mosquitto_s)
    logs = settings.run_dir / "demo"
    env = {
        "FLEETSTREAM_MQTT_HOST": settings.host,
        "FLEETSTREAM_MQTT_PORT": str(settings.mqtt_port),
        "FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
        "FLEETSTREAM_MQTT_CLIENT_ID": "fleetstream-demo-ingest",
        # Ingest's 7-day default kept the stopped demo's session collecting every later
        # fleet/+/telemetry message (another ingest's, a simulate run) for a week, and the
        # next demo wrote that backlog into Kafka again. A quick restart still resumes.
        "FLEETSTREAM_MQTT_SESSION_EXPIRY_S": str(DEMO_SESSION_EXPIRY_S),
    }
    env["FLEETSTREAM_PROCESSING_STATE_DIR"] = str(settings.run_dir / "processing-state")
    # Next to the brokers' data: the demo ingest's MQTT session lives there too.
    env["FLEETSTREAM_INGEST_STATE_DIR"] = str(settings.run_dir / "ingest-state")
    # So that `fleetstream models promote VERSION` from the same folder reaches the demo.
    registry = os.environ.get("FLEETSTREAM_PROCESSING_MODEL_DIR") or str(DEFAULT_REGISTRY.resolve())
    env["FLEETSTREAM_PROCESSING_MODEL_DIR"] = registry
    stop = threading.Event()
    with (
        service("ingest", [sys.executable, "-m", "ingest"], logs, env) as ingest,
        service("processing", [sys.executable, "-m", "processing"], logs, env) as processing,
        service("dashboard", [sys.executable, "-m", "dashboard"], logs, env) as dashboard,
    ):
        services = {"ingest": ingest, "processing": processing, "dashboard": dashboard}
        failed: list[str] = []
        health_url = _ingest_health_url()
        if health_url is None:
            _log.info(
                "ingest's /healthz is off (FLEETSTREAM_INGEST_METRICS_PORT=0): not waited for"
            )
        else:
            _wait_healthy("ingest", health_url, ingest, logs)
        _wait_healthy("dashboard", f"{dashboard_url}/_stcore/health", dashboard, logs)
        _log.info("dashboard: %s", dashboard_url)
        _log.info(
            "processing scores with the model promoted in %s (`fleetstream models promote`); "
            "rules only until there is one",
            registry,
        )
        before = {t: topic_size(settings.kafka_bootstrap, t) for t in OUTPUT_TOPICS}

        def progress() -> None:
            while not stop.wait(10):
                exited = _watch(services, logs)
                if exited is not None and not stop.is_set():
                    # Loud: a demo whose processing died reported "+0" every 10 s.
                    _log.error("%s; stopping the demo", exited)
                    failed.append(exited)
                    os.kill(os.getpid(), signal.SIGTERM)  # the main thread's way out
                    return
                grown = {t: topic_size(settings.kafka_bootstrap, t) - n for t, n in before.items()}
                _log.info(
                    "since the demo started: %s", ", ".join(f"{t} +{n}" for t, n in grown.items())
                )

        reporter = threading.Thread(target=progress, name="demo-progress", daemon=True)
        sim = None
        try:
            reporter.start()
            config = FleetConfig(
                vehicles=vehicles,
                seed=seed,
                anomaly_rate=anomaly_rate,
                duration_s=10 * 86400 if duration_s is None else duration_s,
            )
            _log.info(
                "publishing %d simulated cars at 1 Hz to MQTT%s",
                vehicles,
                "" if duration_s else " (Ctrl-C stops)",
            )
            signals.raising = False  # from here a signal ends the publishing loop
            if signals.event.is_set():  # it came while the flag was being changed
                raise KeyboardInterrupt  # noqa: TRY301 - the same way out as a signal
            sim = run_to_mqtt(
                config,
                target=MqttTarget(settings.host, settings.mqtt_port, None, None),
                fmt=Format.V1,
                topic="fleet/{vehicle_id}/telemetry",
                qos=1,
                labels=logs / "labels.jsonl",
                stop=signals.event,
            )
            if signals.event.is_set():
                _log.info("stopping the demo")
        except KeyboardInterrupt:
            _log.info("stopping the demo")
        finally:
            signals.raising = True
            stop.set()
        time.sleep(2)  # let ingest confirm the last messages
        added = topic_size(settings.kafka_bootstrap, TELEMETRY_TOPIC) - before[TELEMETRY_TOPIC]
    if sim is not None:
        _log.info(
            "published %d messages; %s grew by %d records", sim.messages, TELEMETRY_TOPIC, added
        )
    else:
        _log.info("%s grew by %d records", TELEMETRY_TOPIC, added)
    _log.info("brokers keep running; stop them with `fleetstream infra down`")
    if failed:
        raise RuntimeError(failed[0])
