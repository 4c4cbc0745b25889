"""Run real fleetstream services, publish QoS 1 load and read Kafka topics back.

Shared by ``fleetstream bench`` and the integration and fault tests, so a benchmark and a
test measure the same thing the same way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import paho.mqtt.client as mqtt
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench._report import CpuShares, cpu_shares, cpu_times
from bench.errors import HarnessError
from fleetstream import infra
from simulator import Fleet, FleetConfig, iter_records

_log = logging.getLogger(__name__)

# Topic config: every record carries the broker's time of the write (latency benchmarks).
LOG_APPEND_TIME: Final = {"message.timestamp.type": "LogAppendTime"}


def _require(proc: subprocess.Popen[bytes] | None) -> subprocess.Popen[bytes]:
    if proc is None:
        msg = "the process was never started"
        raise HarnessError(msg)
    return proc


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_rules(
    path: Path,
    prefix: str,
    *,
    share_group: str | None = None,
    headers: Iterable[str] | None = None,
) -> Path:
    """A rules file isolated to one test: its own MQTT filters and Kafka topics.

    Args:
        path: Where to write it.
        prefix: MQTT topic root and Kafka topic prefix of the test.
        share_group: Shared-subscription group of the MQTT rules, if any.
        headers: Record headers of the MQTT rules (default: the rules' default).
    """
    share = f'share_group = "{share_group}"\n' if share_group else ""
    if headers is not None:
        share += f"headers = {orjson.dumps(list(headers)).decode()}\n"
    path.write_text(
        f"""
[[mqtt_to_kafka]]
name = "telemetry"
mqtt = "{prefix}/+/telemetry"
{share}adapter = "v1"
topic = "{prefix}-telemetry"
key = "{{vehicle_id}}"
timestamp = "ts:ms"

[[mqtt_to_kafka]]
name = "tesla"
mqtt = "{prefix}/mqttx/tesla/+"
{share}adapter = "tesla"
topic = "{prefix}-vehicles"
key = "{{vehicle_id}}"
timestamp = "ts:ms"
value = "raw"

[[kafka_to_mqtt]]
name = "commands"
kafka = "{prefix}-commands"
mqtt = "{prefix}/{{key}}/commands"
group = "{prefix}-commands"
""",
        "utf-8",
    )
    return path


def local_brokers() -> infra.InfraSettings:
    """Start the local Kafka and Mosquitto if needed (idempotent); return their settings.

    Raises:
        HarnessError: A broker could not be started.
    """
    settings = infra.InfraSettings()
    try:
        infra.up(settings)
    except infra.InfraError as exc:
        msg = f"cannot start the local brokers: {exc}"
        raise HarnessError(msg) from exc
    return settings


def default_rules(
    path: Path, prefix: str, telemetry_topic: str, *, share_group: str | None = None
) -> Path:
    """The packaged default rules with every MQTT filter and Kafka topic made private.

    Benchmarks run the rules users get, only renamed, so they measure the default
    headers, adapter and templates.
    """
    import ingest  # noqa: PLC0415 - only the benchmarks need the packaged file

    text = (Path(ingest.__file__).parent / "rules.toml").read_text("utf-8")
    for old, new in (
        ("fleet/+/telemetry", f"{prefix}/+/telemetry"),
        ('"vehicle-telemetry"', f'"{telemetry_topic}"'),
        # Not "{prefix}/tesla/+": that overlaps "{prefix}/+/telemetry", the packaged ones do not.
        ("mqttx/simulate/tesla/+", f"{prefix}/mqttx/tesla/+"),
        ('"my-vehicles"', f'"{prefix}-vehicles"'),
        ('"vehicle-commands"', f'"{prefix}-commands"'),
        ("fleet/{key}/commands", f"{prefix}/{{key}}/commands"),
    ):
        if old not in text:
            msg = f"the packaged rules no longer contain {old!r}; update default_rules()"
            raise HarnessError(msg)
        text = text.replace(old, new)
    if share_group is not None:
        text = text.replace('# share_group = "ingest"', f'share_group = "{share_group}"', 1)
    path.write_text(text, "utf-8")
    return path


@dataclass
class IngestProcess:
    """One `python -m ingest` subprocess with its own client id and metrics port."""

    settings: infra.InfraSettings
    workdir: Path
    client_id: str
    rules: Path | None
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    unexpected_exits: int = 0
    _ended_by_us: bool = False

    @property
    def log_path(self) -> Path:
        """Where this process's stdout and stderr go."""
        return self.workdir / f"{self.client_id}.log"

    def _check_alive(self) -> None:
        # Called before we end or replace the process: an exit we did not cause is a crash.
        if self.proc is not None and self.proc.poll() is not None and not self._ended_by_us:
            self.unexpected_exits += 1
            self._ended_by_us = True  # counted once

    def crashes(self) -> int:
        """Exits we did not cause plus Python tracebacks in the whole log."""
        self._check_alive()
        return self.unexpected_exits + count_tracebacks(self.log_path)

    def env(self) -> dict[str, str]:
        """The service's environment: broker addresses, ids, ports, overrides."""
        env = {
            **os.environ,
            "FLEETSTREAM_MQTT_HOST": self.settings.host,
            "FLEETSTREAM_MQTT_PORT": str(self.settings.mqtt_port),
            "FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap,
            "FLEETSTREAM_MQTT_CLIENT_ID": self.client_id,
            "FLEETSTREAM_INGEST_METRICS_PORT": str(self.port),
            "FLEETSTREAM_MQTT_SESSION_EXPIRY_S": "900",
            "FLEETSTREAM_INGEST_STATE_DIR": str(self.workdir / "ingest-state"),
        }
        if self.rules is not None:
            env["FLEETSTREAM_INGEST_RULES_FILE"] = str(self.rules)
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True) -> IngestProcess:
        """Start the process; with ``wait``, return once it is connected to MQTT."""
        self._check_alive()
        self._ended_by_us = False
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingest"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_connected()
        return self

    def health(self) -> dict[str, Any] | None:
        """The ``/healthz`` document, or None while nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                return dict(orjson.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            return dict(orjson.loads(exc.read()))
        except OSError:
            return None

    def metrics(self) -> dict[str, float]:
        """The Prometheus samples, by name with labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_connected(self, timeout_s: float = 30.0) -> None:
        """Wait until ``/healthz`` reports the MQTT connection."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = _require(self.proc)
            if proc.poll() is not None:
                msg = f"ingest exited with {proc.returncode}:\n{self.log()}"
                raise HarnessError(msg)
            health = self.health()
            if health and health.get("mqtt_connected"):
                return
            time.sleep(0.1)
        msg = f"ingest did not connect within {timeout_s} s:\n{self.log()}"
        raise HarnessError(msg)

    def kill9(self) -> None:
        """``kill -9`` the process and reap it."""
        proc = _require(self.proc)
        self._check_alive()
        self._ended_by_us = True
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, timeout_s: float = 40.0) -> int:
        """SIGTERM, wait for a clean exit, return the exit code."""
        self._check_alive()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self._ended_by_us = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.unexpected_exits += 1  # a graceful stop that hangs is a failure too
            raise
        if code != 0:
            self.unexpected_exits += 1
        return code

    def rss_mb(self) -> float:
        """Resident memory in MiB."""
        return float(psutil.Process(_require(self.proc).pid).memory_info().rss) / 2**20

    def log(self) -> str:
        """The last few KiB of the process's log."""
        try:
            return self.log_path.read_text("utf-8", errors="replace")[-6000:]
        except FileNotFoundError:
            return ""


def count_tracebacks(log: Path) -> int:
    """Python tracebacks in a service's log (0 when there is no log)."""
    try:
        text = log.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return 0
    return text.count("Traceback (most recent call last)")


@contextlib.contextmanager
def running(*processes: IngestProcess) -> Iterator[None]:
    """Stop the processes when the block ends, whatever happened in it.

    Raises:
        HarnessError: The block ended normally but a process crashed, at any time
            (including on the way out, e.g. an abort in a native library at exit).
    """
    try:
        yield
    except BaseException:
        for p in processes:
            with contextlib.suppress(Exception):
                p.stop()
        raise
    for p in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.stop()  # a hung stop is counted as a crash
    crashed = [p for p in processes if p.crashes()]
    if crashed:
        logs = "\n".join(f"{p.client_id}:\n{p.log()}" for p in crashed)
        msg = f"{len(crashed)} ingest process(es) crashed or exited uncleanly:\n{logs}"
        raise HarnessError(msg)


def telemetry_messages(
    prefix: str, vehicles: int, seconds: int, seed: int = 1
) -> list[tuple[str, bytes, tuple[str, int]]]:
    """(topic, payload, (vehicle_id, seq)) for a simulated run with ids unique to the test."""
    config = FleetConfig(
        vehicles=vehicles,
        duration_s=seconds,
        seed=seed,
        id_prefix=prefix.replace("/", "-"),
        start_ms=time.time_ns() // 1_000_000 - seconds * 1000,
    )
    out = []
    for record in iter_records(config):
        vid = record["vehicle_id"]
        out.append((f"{prefix}/{vid}/telemetry", orjson.dumps(record), (vid, record["seq"])))
    return out


class QosOnePublisher:
    """paho publisher with a wide in-flight window; counts broker PUBACKs."""

    def __init__(
        self,
        settings: infra.InfraSettings,
        client_id: str,
        *,
        session_expiry_s: int | None = None,
    ) -> None:
        """Connect and start paho's network thread.

        Args:
            settings: Broker address.
            client_id: MQTT client id.
            session_expiry_s: With a value, a persistent session (no clean start after
                the first connect) that the broker keeps this long while we are away.
        """
        self.acked = 0
        self.connects = 0
        # PUBACK reason codes other than Success (e.g. 0x10 "no matching subscribers",
        # 0x97 "quota exceeded"): the broker answered but may not deliver the message,
        # so a "lost" count must not be blamed on the service under test.
        self.not_success: Counter[str] = Counter()
        self.refused = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(500)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 5)
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        properties = None
        if session_expiry_s is not None:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = session_expiry_s
        self.client.connect(settings.host, settings.mqtt_port, properties=properties)
        self.client.loop_start()

    def _on_publish(
        self, _client: object, _userdata: object, _mid: int, reason: ReasonCode, *_args: object
    ) -> None:
        with self._lock:
            self.acked += 1
            if reason.value != 0:
                self.not_success[str(reason)] += 1
                self.refused += reason.value >= 0x80  # failure codes (MQTT 5 §2.4)

    def _on_connect(self, *_args: object) -> None:
        with self._lock:
            self.connects += 1

    def publish(self, messages: Iterable[tuple[str, bytes]], rate: float | None = None) -> int:
        """Publish QoS 1 messages, optionally paced at ``rate`` msg/s; return the count."""
        began = time.monotonic()
        count = 0
        for topic, payload in messages:
            # paho's packet ids wrap at 65535: keep fewer than that unacknowledged.
            while count - self.acked > 20_000:
                time.sleep(0.005)
            info = self.client.publish(topic, payload, qos=1)
            # NO_CONN: the broker is away; paho keeps the message and sends it on reconnect.
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                msg = f"publish failed: {info.rc}"
                raise HarnessError(msg)
            count += 1
            if rate is not None and count % 100 == 0:
                ahead = began + count / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        return count

    def wait_acked(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until the broker acknowledged ``count`` publishes."""
        deadline = time.monotonic() + timeout_s
        while self.acked < count and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.acked < count:
            msg = f"broker acknowledged {self.acked} of {count} publishes"
            raise HarnessError(msg)
        if self.refused:
            msg = f"the broker refused {self.refused} publishes: {dict(self.not_success)}"
            raise HarnessError(msg)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class KafkaRecord:
    """One record read back from Kafka."""

    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    timestamp: int
    partition: int


def read_topic(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 90.0, settle_s: float = 2.0
) -> list[KafkaRecord]:
    """Read a topic from the start until ``expect`` records arrived, then ``settle_s`` quiet.

    Partitions are assigned directly (no consumer group), so no rebalance can interfere
    with what the test sees; only committed (read_committed) records are returned.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "isolation.level": "read_committed",
        }
    )
    deadline = time.monotonic() + timeout_s
    partitions: list[int] = []
    while not partitions and time.monotonic() < deadline:
        metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if metadata is not None and metadata.error is None:
            partitions = sorted(metadata.partitions)
        else:
            time.sleep(0.2)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    out: list[KafkaRecord] = []
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, 0.5)
            for m in batch:
                if m.error() is not None:
                    continue
                out.append(
                    KafkaRecord(
                        m.key(), m.value(), dict(m.headers() or []), m.timestamp()[1], m.partition()
                    )
                )
                last_new = time.monotonic()
            if len(out) >= expect and time.monotonic() - last_new >= settle_s:
                break
    finally:
        consumer.close()
    return out


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def delivery_report(
    case: str, sent: set[tuple[str, int]], records: list[KafkaRecord], quarantined: int = 0
) -> dict[str, int]:
    """The row the fault tests print: sent, in_kafka, lost, duplicates (printed and returned)."""
    keys: Counter[tuple[str, int]] = Counter()
    for r in records:
        value = orjson.loads(r.value)
        keys[(value["vehicle_id"], value["seq"])] += 1
    lost = len(sent - set(keys))
    duplicates = sum(c - 1 for c in keys.values())
    unexpected = len(set(keys) - sent)
    row = {
        "sent": len(sent),
        "in_kafka": len(set(keys) & sent),
        "lost": lost,
        "duplicates": duplicates,
        "unexpected": unexpected,
        "quarantined": quarantined,
    }
    print(f"\n{case}: " + ", ".join(f"{k}={v}" for k, v in row.items()))  # noqa: T201 - the report row
    return row


@dataclass
class FaultRow:
    """One row of the fault-injection report (``make faults``).

    Attributes:
        case: Short case name, e.g. ``ingest_kill9_x10``.
        scale: ``full`` or ``ci``.
        sent: Distinct valid messages sent.
        in_kafka: Distinct valid messages found in the output topic.
        lost: Sent but not found.
        duplicates: Extra copies of found messages (at-least-once redelivery).
        quarantined: Records in the quarantine topic.
        crashes: Exits of the services under test that the test did not cause, plus
            Python tracebacks in their logs.
        duration_s: Wall-clock time of the case.
        unexpected: Records found that were never sent.
        notes: Free-form measurements (outage length, kills, RSS, reasons).
        passed: Whether the case's checks passed (None: emitted without them, see
            :meth:`checked`). A failed case's counts are not a result.
    """

    case: str
    scale: str
    sent: int
    in_kafka: int
    lost: int
    duplicates: int
    quarantined: int
    crashes: int
    duration_s: float = 0.0
    unexpected: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None

    COLUMNS = ("case", "sent", "in_kafka", "lost", "duplicates", "quarantined", "crashes")

    @classmethod
    def from_records(
        cls,
        case: str,
        scale: str,
        sent: set[tuple[str, int]],
        records: list[KafkaRecord],
        *,
        quarantined: int = 0,
        crashes: int = 0,
    ) -> FaultRow:
        """Count a delivery: ``records`` hold telemetry JSON with ``vehicle_id`` and ``seq``."""
        keys: Counter[tuple[str, int]] = Counter()
        for r in records:
            value = orjson.loads(r.value)
            keys[(value["vehicle_id"], value["seq"])] += 1
        return cls(
            case=case,
            scale=scale,
            sent=len(sent),
            in_kafka=len(set(keys) & sent),
            lost=len(sent - set(keys)),
            duplicates=sum(c - 1 for c in keys.values()),
            quarantined=quarantined,
            crashes=crashes,
            unexpected=len(set(keys) - sent),
        )

    def line(self) -> str:
        """The printed row: ``case, sent, in_kafka, lost, duplicates, quarantined, crashes``."""
        return ", ".join(f"{c}={getattr(self, c)}" for c in self.COLUMNS) + (
            f", unexpected={self.unexpected}, duration_s={self.duration_s:.1f}"
            f", passed={self.passed}"
        )

    @contextlib.contextmanager
    def checked(self, path: Path) -> Iterator[FaultRow]:
        """Run the case's checks in the block, then emit the row with their outcome.

        The row used to be emitted before the checks that the fault really happened, so
        a failed case still wrote ``lost=0, crashes=0`` into the rows the report is
        made from. Now it says ``passed: false`` when any check in the block failed.

        Raises:
            BaseException: Whatever the block raised, after the row was emitted.
        """
        try:
            yield self
        except BaseException:
            self.passed = False
            self.emit(path)
            raise
        self.passed = True
        self.emit(path)

    def emit(self, path: Path) -> None:
        """Print the row and append it as one JSON line to ``path``."""
        print(f"\nFAULT ROW {self.line()}")  # noqa: T201 - the report row is the test's output
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{c: getattr(self, c) for c in self.COLUMNS},
            "scale": self.scale,
            "unexpected": self.unexpected,
            "duration_s": round(self.duration_s, 1),
            "notes": self.notes,
            "passed": self.passed,
        }
        with path.open("ab") as out:
            out.write(orjson.dumps(doc) + b"\n")


@dataclass
class ProcessingRun:
    """Topics, group and state of one processing deployment under test."""

    bootstrap: str
    prefix: str
    workdir: Path
    group: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    model_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    unexpected_exits: int = 0
    _killed_by_us: bool = False  # the current process's SIGKILL came from kill9()

    def __post_init__(self) -> None:
        self.group = self.group or f"{self.prefix}-group"

    @property
    def topics(self) -> dict[str, str]:
        """Topic names of this deployment, by role."""
        p = self.prefix
        return {
            "input": f"{p}-telemetry",
            "stats": f"{p}-stats-{self.group}",
            "sessions": f"{p}-sessions-{self.group}",
            "alerts": f"{p}-alerts-{self.group}",
            "shadow": f"{p}-shadow-{self.group}",
            "quarantine": f"{p}-quarantine-{self.group}",
        }

    def env(self) -> dict[str, str]:
        """The service's environment: broker addresses, ids, ports, overrides."""
        t = self.topics
        return {
            **os.environ,
            "FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "FLEETSTREAM_PROCESSING_INPUT_TOPIC": t["input"],
            "FLEETSTREAM_PROCESSING_STATS_TOPIC": t["stats"],
            "FLEETSTREAM_PROCESSING_SESSIONS_TOPIC": t["sessions"],
            "FLEETSTREAM_PROCESSING_ALERTS_TOPIC": t["alerts"],
            "FLEETSTREAM_PROCESSING_SHADOW_ALERTS_TOPIC": t["shadow"],
            "FLEETSTREAM_PROCESSING_QUARANTINE_TOPIC": t["quarantine"],
            "FLEETSTREAM_PROCESSING_CONSUMER_GROUP": self.group,
            "FLEETSTREAM_PROCESSING_STATE_DIR": str(self.workdir / f"state-{self.group}"),
            "FLEETSTREAM_PROCESSING_METRICS_PORT": str(self.port),
            **({"FLEETSTREAM_PROCESSING_MODEL_DIR": str(self.model_dir)} if self.model_dir else {}),
            **self.extra_env,
        }

    def start(self) -> None:
        """Start ``python -m processing`` with this deployment's environment."""
        log = (self.workdir / f"{self.group}.log").open("ab")
        self._killed_by_us = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "processing"], env=self.env(), stdout=log, stderr=log
        )

    def records_in(self) -> float:
        """The service's records-in counter (-1 while it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return -1.0
        for line in text.splitlines():
            if line.startswith("fleetstream_processing_records_in_total"):
                return float(line.split()[-1])
        return 0.0

    def metrics(self) -> dict[str, float]:
        """The service's Prometheus samples, by name with labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_consumed(self, count: int, timeout_s: float = 400.0) -> None:
        """Wait until the service has read ``count`` records and committed."""
        _require(self.proc)
        ProcessingGroup([self]).wait_consumed(count, timeout_s)

    def wait_records_in(self, count: int, timeout_s: float = 400.0) -> None:
        """Wait until the service has read ``count`` records (no wait for a commit)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = _require(self.proc)
            if proc.poll() is not None:
                raise HarnessError(self.log())
            if self.records_in() >= count:
                return
            time.sleep(0.2)
        msg = f"processing read {self.records_in()} of {count}:\n{self.log()}"
        raise HarnessError(msg)

    def stop(self) -> int:
        """SIGTERM, wait for a clean exit, return the exit code.

        Raises:
            subprocess.TimeoutExpired: It did not exit within 60 s; it was killed, and
                that counts as a crash.
        """
        proc = _require(self.proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                self.unexpected_exits += 1  # a graceful stop that hangs is a failure too
                raise
            if code != 0:
                self.unexpected_exits += 1
            return code
        if not (proc.returncode == -signal.SIGKILL and self._killed_by_us):
            # It ended before we asked it to: a SIGKILL from elsewhere (the OOM killer)
            # is a crash too, not the test's kill.
            self.unexpected_exits += 1
        return int(proc.returncode)

    def kill9(self) -> None:
        """``kill -9`` the process and reap it."""
        proc = _require(self.proc)
        if proc.poll() is not None:
            self.unexpected_exits += 1
        self._killed_by_us = True
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    @property
    def log_path(self) -> Path:
        """Where this deployment's stdout and stderr go."""
        return self.workdir / f"{self.group}.log"

    def crashes(self) -> int:
        """Exits we did not cause plus Python tracebacks in the whole log."""
        return self.unexpected_exits + count_tracebacks(self.log_path)

    def log(self) -> str:
        """The last few KiB of the process's log."""
        path = self.log_path
        return path.read_text("utf-8", errors="replace")[-5000:] if path.exists() else ""


@dataclass
class ProcessingGroup:
    """Several processing processes in one consumer group: Kafka spreads the partitions.

    Each process has its own folder (state, log) and metrics port; counters are summed.
    This is how processing scales out (docs/processing.md), measured as such.
    """

    runs: list[ProcessingRun]

    @classmethod
    def create(
        cls, bootstrap: str, prefix: str, workdir: Path, processes: int = 1
    ) -> ProcessingGroup:
        """``processes`` deployments of the same topics and consumer group."""
        if processes < 1:
            msg = f"processes must be >= 1, got {processes}"
            raise HarnessError(msg)
        runs = []
        for index in range(processes):
            folder = workdir / f"{prefix}-processing-{index}"
            folder.mkdir(parents=True, exist_ok=True)
            runs.append(ProcessingRun(bootstrap, prefix, folder))
        return cls(runs)

    @property
    def topics(self) -> dict[str, str]:
        """Topic names of the deployment, by role (the same for every process)."""
        return self.runs[0].topics

    def start(self) -> None:
        """Start every process."""
        for run in self.runs:
            run.start()

    def exited(self) -> ProcessingRun | None:
        """A process that has ended, if any."""
        return next((r for r in self.runs if r.proc and r.proc.poll() is not None), None)

    def pids(self) -> list[int]:
        """Process ids of the started processes."""
        return [r.proc.pid for r in self.runs if r.proc is not None]

    def records_in(self) -> float:
        """Records read by all processes (-1 while any does not answer)."""
        counts = [r.records_in() for r in self.runs]
        return -1.0 if min(counts) < 0 else sum(counts)

    def wait_consumed(self, count: int, timeout_s: float = 400.0) -> None:
        """Wait until the processes together have read ``count`` records and committed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ended = self.exited()
            if ended is not None:
                raise HarnessError(ended.log())
            if self.records_in() >= count:
                time.sleep(3)  # let the last checkpoints commit
                return
            time.sleep(1)
        msg = f"processing consumed {self.records_in()} of {count}:\n{self.log()}"
        raise HarnessError(msg)

    def stop(self) -> list[int]:
        """Stop every process, even when one hangs (killed, counted); their exit codes."""
        codes = []
        for run in self.runs:
            if run.proc is None:
                continue
            try:
                codes.append(run.stop())
            except subprocess.TimeoutExpired:
                codes.append(-signal.SIGKILL)
        return codes

    def crashes(self) -> int:
        """Exits of every process the harness did not cause, plus their tracebacks."""
        return sum(run.crashes() for run in self.runs)

    def log(self) -> str:
        """The end of every process's log."""
        if len(self.runs) == 1:
            return self.runs[0].log()
        return "\n".join(f"--- processing {i}:\n{r.log()}" for i, r in enumerate(self.runs))


def create_topic(
    bootstrap: str, name: str, partitions: int = 4, config: dict[str, str] | None = None
) -> None:
    """Create a topic (with optional topic configs) and wait until the broker serves it.

    A fresh KRaft broker answers CreateTopics before its metadata lists the topic; a
    service started in between (Quix looks its topics up at start) failed with "topic
    not found", so this also waits for every partition to have a leader.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(
        timeout=30
    )
    deadline = time.monotonic() + 30
    while True:
        found = admin.list_topics(name, timeout=10).topics.get(name)
        if (
            found is not None
            and found.error is None
            and len(found.partitions) == partitions
            and all(p.leader >= 0 for p in found.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            msg = f"topic {name} was created but is not served with {partitions} partitions"
            raise HarnessError(msg)
        time.sleep(0.1)


# More partitions than a run needs: the broker holds topics of earlier runs.
_CROWDED_PARTITIONS: Final = 500


def broker_footprint(bootstrap: str) -> dict[str, int]:
    """Topics and partitions the broker holds, noted at the start of every benchmark.

    A development broker full of earlier runs' topics (4,419 partitions, 36 GB) ran the
    10,000-car benchmark at p99 6.9 s against 2.6 s once emptied, with Kafka at 34 % of a
    core against 25 %: its log cleaner and per-partition housekeeping share the cores.
    The report records the footprint, and a crowded broker is logged as a warning.
    """
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    footprint = {
        "topics": len(topics),
        "partitions": sum(len(t.partitions) for t in topics.values()),
    }
    if footprint["partitions"] > _CROWDED_PARTITIONS:
        _log.warning(
            "the broker holds %d topics with %d partitions from earlier runs; expect slower "
            "results than on an emptied broker (docs/benchmarks.md)",
            footprint["topics"],
            footprint["partitions"],
        )
    return footprint


def delete_topics(bootstrap: str, containing: str) -> None:
    """Delete every topic whose name contains ``containing`` (a run's unique prefix).

    Quix's changelog topics carry the consumer group's name, which starts with the prefix
    too. Benchmarks create topics per run; kept, they filled a development broker with
    33 GB, and its log cleaner and per-partition housekeeping with them. Failures are
    logged, not raised: cleanup must not hide the result.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if containing in t]
    except Exception as exc:  # noqa: BLE001 - see above
        _log.warning("could not list topics to delete (%s): %s", containing, exc)
        return
    if not names:
        return
    for name, future in admin.delete_topics(names, operation_timeout=30).items():
        try:
            future.result(timeout=30)
        except Exception as exc:  # noqa: BLE001 - see above
            _log.warning("could not delete topic %s: %s", name, exc)


def produce(bootstrap: str, topic: str, rows: list[tuple[bytes | None, bytes, int]]) -> None:
    """Produce (key, value, timestamp) rows in order and wait for all of them."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }
    )
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for key, value, ts in rows:
        while True:
            try:
                producer.produce(
                    topic,
                    key=key,
                    value=value,
                    timestamp=ts,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(60) != 0 or errors:
        msg = f"produce to {topic} failed: {errors[:3]}"
        raise HarnessError(msg)


def as_rows(records: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes, int]]:
    """Telemetry dicts as (key, value, timestamp) rows for :func:`produce`."""
    return [(r["vehicle_id"].encode(), orjson.dumps(r), r["ts"]) for r in records]


def simulate(config: FleetConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A simulated fleet run in arrival order, and its ground-truth anomaly labels."""
    fleet = Fleet(config)
    records: list[dict[str, Any]] = []
    for _ in range(round(config.duration_s * config.rate_hz)):
        records.extend(fleet.tick())
    return records, [dict(label) for label in fleet.labels()]


def promote_detector(registry: Path, config: FleetConfig | None = None) -> str:
    """Train an unsupervised consumption model on normal simulated data; save and promote it.

    An isolation forest, the family scikit-learn scores slowest, trained the way
    ``fleetstream models train`` trains without labels, on a fleet (seed 123 by default)
    the benchmarks and tests never replay. The pipeline loads it through the registry.

    Args:
        registry: The registry folder (created if missing).
        config: The fleet to train on; by default 40 cars for 6 h at 0.2 Hz (~1.5 s).

    Returns:
        The promoted version's name.

    Raises:
        DataError: The fleet has no driving windows to train on.
        ModelError: The saved artifact does not load back.
    """
    # Imported here: scikit-learn and pandas load in a second or two, and few callers train.
    import pandas as pd  # noqa: PLC0415

    from models.registry import promote, save  # noqa: PLC0415
    from models.replay import replay_records, window_feature_rows  # noqa: PLC0415
    from models.training import train  # noqa: PLC0415

    normal = config or FleetConfig(vehicles=40, duration_s=6 * 3600, rate_hz=0.2, seed=123)
    windows = replay_records(iter_records(normal), rules=False).windows
    chosen = train(pd.DataFrame(window_feature_rows(windows)), None).chosen
    metadata = {
        "family": chosen.family.name,
        "features": list(chosen.family.features),
        "threshold": chosen.threshold,
        "score": chosen.family.score,
    }
    version = save(chosen.estimator, metadata, registry).name
    promote(registry, version)
    return version


class ProcessWatch:
    """Samples peak RSS (sum over the processes and their children) and CPU seconds.

    CPU is the growth of each process's CPU time between its first and last sample
    (every 0.2 s), so processes that exit or restart during the watch are counted too.

    Args:
        processes: Returns the processes to watch (called at every sample, so a
            restarted service is followed).
    """

    def __init__(self, processes: Callable[[], list[psutil.Process]]) -> None:
        self._processes = processes
        self.peak_rss_mb = 0.0
        self.cpu_s = 0.0
        # The whole machine over the same span: a flood that ran while the hypervisor
        # took the CPU is slower for a reason that is not the bridge's.
        self.machine = CpuShares(0.0, 0.0)
        self._machine_start = cpu_times()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        # (monotonic time, CPU seconds so far) at every sample: CPU over any span.
        self.timeline: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def _tree(self) -> list[psutil.Process]:
        out = []
        with contextlib.suppress(psutil.Error):
            for p in self._processes():
                out.append(p)
                with contextlib.suppress(psutil.Error):
                    out.extend(p.children(recursive=True))
        return out

    def _sample(self) -> None:
        rss = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                with p.oneshot():
                    t = p.cpu_times()
                    rss += p.memory_info().rss
                self._first.setdefault(p.pid, t.user + t.system)
                self._last[p.pid] = t.user + t.system
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
        used = sum(self._last[pid] - first for pid, first in self._first.items())
        self.timeline.append((time.monotonic(), used))

    def cpu_pct_between(self, start: float, end: float) -> float:
        """CPU in % of a core between two ``time.monotonic()`` instants (nan if unsampled)."""
        inside = [(t, used) for t, used in self.timeline if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return math.nan
        (t0, u0), (t1, u1) = inside[0], inside[-1]
        return 100 * (u1 - u0) / (t1 - t0)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> None:
        """Stop sampling; ``cpu_s`` and ``machine`` then cover the span since the start."""
        self._stop.set()
        self._thread.join()
        self._sample()
        self.machine = cpu_shares(self._machine_start, cpu_times())
        self.cpu_s = sum(self._last[pid] - first for pid, first in self._first.items())
