"""Run the simulator: as fast as possible into a file, or in real time to MQTT."""

from __future__ import annotations

import logging
import math
import os
import re
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from simulator._fleet import Fleet, FleetConfig
from simulator._formats import Format, render
from simulator._mqtt import LeanPublisher
from simulator.errors import SimulatorError
from telemetry.contract import COMMON_NUMBERS, EV_NUMBERS, ICE_NUMBERS

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


def check_output(path: Path | None, what: str = "output") -> None:
    """Check that a file can be created at ``path`` before a run spends time on it.

    Args:
        path: The file to be written; None passes.
        what: How to name it in the message (``--output``, ``--labels``).

    Raises:
        SimulatorError: Its folder is missing or not writable, or it is a folder.
    """
    if path is None:
        return
    parent = path.parent
    if not parent.is_dir():
        msg = f"{what} {path}: the folder {parent} does not exist"
        raise SimulatorError(msg)
    if path.is_dir():
        msg = f"{what} {path} is a folder, not a file"
        raise SimulatorError(msg)
    if not os.access(parent, os.W_OK | os.X_OK):
        msg = f"{what} {path}: the folder {parent} is not writable"
        raise SimulatorError(msg)


_EVERY_RECORD = ("schema", "vehicle_id", "powertrain", "state", *(f.name for f in COMMON_NUMBERS))


def check_topic(topic: str, config: FleetConfig) -> None:
    """Check that a topic template can be filled from every record of the run.

    Fields that only EVs or only combustion cars have are allowed when the whole fleet
    is of that kind (``ev_share`` 1 or 0).

    Raises:
        SimulatorError: The template is malformed or names a field some record lacks.
    """
    fields = set(_EVERY_RECORD)
    if config.ev_share >= 1.0:
        fields.update(f.name for f in EV_NUMBERS)
    if config.ev_share <= 0.0:
        fields.update(f.name for f in ICE_NUMBERS)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(topic) if name is not None]
    except ValueError as exc:
        msg = f"topic template {topic!r} is malformed: {exc}"
        raise SimulatorError(msg) from None
    for name in names:
        if re.split(r"[.\[]", name, maxsplit=1)[0] not in fields:
            msg = (
                f"topic template {topic!r} uses {{{name}}}, which is not a field of every "
                "record; use record fields such as {vehicle_id} or {powertrain}"
            )
            raise SimulatorError(msg)
    sample: dict[str, Any] = dict.fromkeys(fields, 0)
    sample.update(schema=1, vehicle_id="veh-00000", powertrain="ev", state="parked")
    try:
        topic.format(**sample)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        msg = f"topic template {topic!r} cannot be filled from a record: {exc}"
        raise SimulatorError(msg) from None


def check_format(fmt: Format, config: FleetConfig) -> None:
    """Check that every car of the run can be rendered in ``fmt``.

    Raises:
        SimulatorError: ``tesla`` payloads with combustion cars in the fleet.
    """
    if fmt is Format.TESLA and config.ev_share < 1.0:
        msg = f"the tesla format renders EVs only; ev_share must be 1, not {config.ev_share}"
        raise SimulatorError(msg)


def _write_labels(fleet: Fleet, labels: Path | None, until_ms: int | None = None) -> int:
    if labels is None:
        return 0
    rows = [lab for lab in fleet.labels() if until_ms is None or lab["start_ts"] < until_ms]
    with labels.open("wb") as out:
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")
    return len(rows)


def run_to_file(config: FleetConfig, output: Path, fmt: Format, labels: Path | None) -> RunReport:
    """Simulate the whole run as fast as possible, one JSON message per line.

    Raises:
        SimulatorError: The output or labels file cannot be created, or ``fmt`` cannot
            render the fleet (:func:`check_format`).
    """
    check_format(fmt, config)
    check_output(output)
    check_output(labels, "labels")
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


def redact_url(url: str) -> str:
    """``url`` with the password replaced by ``***`` (``mqtt://user:***@host``).

    Works on malformed URLs too: everything up to the last ``@`` counts as the user
    part, so a password containing ``/``, ``#`` or ``@`` is hidden all the same.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{hostpart}"


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where to publish: parsed from ``mqtt://[user:pass@]host[:port]``."""

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)

    @classmethod
    def parse(
        cls, url: str, username: str | None = None, password: str | None = None
    ) -> MqttTarget:
        """Parse an ``mqtt://`` URL.

        Args:
            url: ``mqtt://[user[:password]@]host[:port]``; user and password are
                percent-decoded (write ``%23`` for ``#``, ``%2F`` for ``/``, ``%40`` for ``@``).
            username: User name when the URL has none (e.g. ``FLEETSTREAM_MQTT_USERNAME``).
            password: Password when the URL has no user (e.g. ``FLEETSTREAM_MQTT_PASSWORD``).

        Raises:
            SimulatorError: The URL is not a usable mqtt:// URL; the message shows the URL
                with its password replaced by ``***``.
        """
        shown = redact_url(url)
        hint = (
            "percent-encode '#', '/', '?' and '@' in a user name or password, or set "
            "FLEETSTREAM_MQTT_USERNAME and FLEETSTREAM_MQTT_PASSWORD instead"
        )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            msg = f"invalid MQTT URL {shown}: the port must be a number from 1 to 65535 ({hint})"
            raise SimulatorError(msg) from None
        if parts.scheme != "mqtt" or not parts.hostname:
            msg = f"expected mqtt://[user:password@]host[:port], got {shown}"
            raise SimulatorError(msg)
        if parts.path not in {"", "/"} or parts.query or parts.fragment:
            msg = f"invalid MQTT URL {shown}: nothing may follow host:port ({hint})"
            raise SimulatorError(msg)
        if port == 0:
            msg = f"invalid MQTT URL {shown}: the port must be a number from 1 to 65535"
            raise SimulatorError(msg)
        if parts.username is not None:
            username = unquote(parts.username)
            password = None if parts.password is None else unquote(parts.password)
        return cls(parts.hostname, port or 1883, username, password)


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
    stop: threading.Event | None = None,
) -> RunReport:
    """Publish in real time: each car at ``rate_hz``, spread evenly over each period.

    The labels are written however the run ends: on Ctrl-C, SIGTERM (when the caller
    turns it into an exception) or a lost broker, they cover the time that was published
    and the exception is re-raised afterwards. ``stop``, once set, ends the run after the
    slice being sent, as an interruption does but without an exception: one raised from
    a signal handler can land inside the publisher's lock handling and leave a lock held
    (the demo then hung in ``close()`` with its services running).

    Raises:
        SimulatorError: The topic, format or labels file is unusable (before
            connecting), or the broker cannot be reached or the connection is lost.
    """
    check_format(fmt, config)
    check_topic(topic, config)
    check_output(labels, "labels")
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
    published_ts: int | None = None  # event time of the newest message sent
    finished = False
    stopped = stop or threading.Event()
    try:
        try:
            for tick in range(ticks):
                if stopped.is_set():
                    break
                records = fleet.tick()
                step = math.ceil(len(records) / slices_per_tick) or 1
                for k in range(0, len(records), step):
                    chunk = records[k : k + step]
                    # Encoded before its time comes, so the slice leaves on time.
                    batch = [(topic.format(**r), render(r, fmt)) for r in chunk]
                    due = began + tick * period + (k / max(len(records), 1)) * period
                    delay = due - time.monotonic()
                    if delay > 0:
                        if stop is None:
                            time.sleep(delay)
                        elif stop.wait(delay):
                            break
                    publisher.publish(batch)
                    sent += len(batch)
                    published_ts = max(published_ts or 0, *(r["ts"] for r in chunk))
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
                if stop is None:
                    time.sleep(remaining)
                else:
                    stop.wait(remaining)
            if qos > 0:
                publisher.wait_acked(sent, timeout_s=30.0)
            finished = not stopped.is_set()
        finally:
            publisher.close()
    finally:
        # Also when interrupted: the labels of what was published, then the exception.
        elapsed = time.monotonic() - began
        if finished:
            until_ms = start_ms + round(elapsed * 1000)
        else:
            until_ms = start_ms if published_ts is None else published_ts + 1
        written = _write_labels(fleet, labels, until_ms=until_ms)
        if not finished:
            _log.warning(
                "run stopped early: %d messages in %.1f s, %d anomaly labels%s",
                sent,
                elapsed,
                written,
                f" written to {labels}" if labels is not None else "",
            )
    report = RunReport(sent, elapsed, target_rate, written)
    if qos > 0 and publisher.acked < sent:
        _log.warning("only %d of %d QoS 1 messages were acknowledged", publisher.acked, sent)
    if publisher.not_success:
        codes = ", ".join(f"0x{c:02x}: {n}" for c, n in sorted(publisher.not_success.items()))
        _log.warning("PUBACKs with a reason code other than Success: %s", codes)
    return report
