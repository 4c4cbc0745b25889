"""Run the processing service against the real Kafka on test-private topics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from .ingest_harness import free_port


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

    def __post_init__(self) -> None:
        self.group = self.group or f"{self.prefix}-group"

    @property
    def topics(self) -> dict[str, str]:
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
        log = (self.workdir / f"{self.group}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "processing"], env=self.env(), stdout=log, stderr=log
        )

    def records_in(self) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return -1.0
        for line in text.splitlines():
            if line.startswith("fleetstream_processing_records_in_total"):
                return float(line.split()[-1])
        return 0.0

    def wait_consumed(self, count: int, timeout_s: float = 400.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log()
            if self.records_in() >= count:
                time.sleep(3)  # let the last checkpoint commit
                return
            time.sleep(1)
        raise AssertionError(f"processing consumed {self.records_in()} of {count}:\n{self.log()}")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(60)
        return int(self.proc.returncode)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def log(self) -> str:
        path = self.workdir / f"{self.group}.log"
        return path.read_text("utf-8", errors="replace")[-5000:] if path.exists() else ""


def create_topic(bootstrap: str, name: str, partitions: int = 4) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)


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
    assert producer.flush(60) == 0
    assert not errors, errors[:3]


def as_rows(records: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes, int]]:
    return [(r["vehicle_id"].encode(), orjson.dumps(r), r["ts"]) for r in records]
