"""Run the simulator: as fast as possible into a file, or in real time to MQTT."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from simulator._fleet import Fleet, FleetConfig
from simulator._formats import Format, render
from simulator._mqtt import LeanPublisher
from simulator.errors import SimulatorError

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a run produced."""

    messages: int
    seconds: float
    target_rate: float
    labels: int

    @property
    def achieved_rate(self) -> float:
        """Messages per wall-clock second."""
        return self.messages / self.seconds if self.seconds > 0 else math.inf


def iter_records(config: FleetConfig) -> Iterator[dict[str, Any]]:
    """Yield every record of a run in simulated time (library entry point)."""
    fleet = Fleet(config)
    for _ in range(round(config.duration_s * config.rate_hz)):
        yield from fleet.tick()


def _write_labels(fleet: Fleet, labels: Path | None, until_ms: int | None = None) -> int:
    if labels is None:
        return 0
    rows = [lab for lab in fleet.labels() if until_ms is None or lab["start_ts"] < until_ms]
    with labels.open("wb") as out:
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")
    return len(rows)


def run_to_file(config: FleetConfig, output: Path, fmt: Format, labels: Path | None) -> RunReport:
    """Simulate the whole run as fast as possible, one JSON message per line."""
    began = time.monotonic()
    fleet = Fleet(config)
    ticks = round(config.duration_s * config.rate_hz)
    count = 0
    with output.open("wb", buffering=1 << 20) as out:
        for _ in range(ticks):
            records = fleet.tick()
            if fmt is Format.V1:
                out.write(
                    b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)
                )
            else:
                out.write(b"".join(render(r, fmt) + b"\n" for r in records))
            count += len(records)
    written = _write_labels(fleet, labels)
    return RunReport(count, time.monotonic() - began, config.vehicles * config.rate_hz, written)


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where to publish: parsed from ``mqtt://[user:pass@]host[:port]``."""

    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> MqttTarget:
        """Parse an ``mqtt://`` URL.

        Raises:
            SimulatorError: The URL is not an mqtt:// URL.
        """
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            msg = f"expected mqtt://host[:port], got {url!r}"
            raise SimulatorError(msg)
        return cls(parts.hostname, parts.port or 1883, parts.username, parts.password)


def run_to_mqtt(
    config: FleetConfig,
    *,
    target: MqttTarget,
    fmt: Format,
    topic: str,
    qos: int,
    labels: Path | None,
    report_every_s: float = 5.0,
    slices_per_tick: int = 10,
) -> RunReport:
    """Publish in real time: each car at ``rate_hz``, spread evenly over each period."""
    start_ms = time.time_ns() // 1_000_000
    config = replace(config, start_ms=start_ms)
    fleet = Fleet(config)
    publisher = LeanPublisher(
        target.host,
        target.port,
        f"fleetstream-sim-{config.seed}-{start_ms}",
        qos,
        target.username,
        target.password,
    )
    period = 1.0 / config.rate_hz
    ticks = round(config.duration_s * config.rate_hz)
    target_rate = config.vehicles * config.rate_hz
    # Event time counts from now, when publishing starts, not from before the fleet and
    # the connection were set up (see Fleet.anchor).
    began = time.monotonic()
    start_ms = time.time_ns() // 1_000_000
    fleet.anchor(start_ms)
    last_report, last_count, sent = began, 0, 0
    try:
        for tick in range(ticks):
            records = fleet.tick()
            step = math.ceil(len(records) / slices_per_tick) or 1
            for k in range(0, len(records), step):
                # Encoded before its time comes, so the slice leaves on time.
                batch = [(topic.format(**r), render(r, fmt)) for r in records[k : k + step]]
                due = began + tick * period + (k / max(len(records), 1)) * period
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                publisher.publish(batch)
                sent += len(batch)
            now = time.monotonic()
            if now - last_report >= report_every_s:
                rate = (sent - last_count) / (now - last_report)
                _log.info(
                    "published %d messages, %.0f msg/s (target %.0f)", sent, rate, target_rate
                )
                last_report, last_count = now, sent
        # The last tick's period belongs to the run too.
        remaining = began + ticks * period - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        if qos > 0:
            publisher.wait_acked(sent, timeout_s=30.0)
    finally:
        publisher.close()
    elapsed = time.monotonic() - began
    written = _write_labels(fleet, labels, until_ms=start_ms + round(elapsed * 1000))
    report = RunReport(sent, elapsed, target_rate, written)
    if qos > 0 and publisher.acked < sent:
        _log.warning("only %d of %d QoS 1 messages were acknowledged", publisher.acked, sent)
    if publisher.not_success:
        codes = ", ".join(f"0x{c:02x}: {n}" for c, n in sorted(publisher.not_success.items()))
        _log.warning("PUBACKs with a reason code other than Success: %s", codes)
    return report
