"""The processing pipeline as a pure function over a StreamingDataFrame.

``define_pipeline(sdf, config)`` builds the stream of every output, as ``(role, payload)``
(:mod:`processing.outputs`); topics and the ``Application`` are wired only in
:mod:`processing._main`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from quixstreams import State, message_context
from quixstreams.dataframe import StreamingDataFrame
from quixstreams.dataframe.windows import Count

from models.registry import SHADOW
from processing.detectors import SensorGlitch, detect, detect_window
from processing.metrics import ProcessingMetrics
from processing.models import ModelWatcher
from processing.outputs import (
    ALERTS,
    QUARANTINE,
    SESSIONS,
    SHADOW_ALERTS,
    STATS,
    WINDOW_ALERTS,
    WINDOWED,
    Output,
)
from processing.sessions import track
from processing.statecache import (
    BytesCache,
    DecodedCache,
    get_partition_value,
    set_partition_value,
    store_partition,
)
from processing.stats import to_sample
from processing.windows import (
    CLOSED,
    OPEN,
    add_sample,
    close_passed,
    close_window,
    crosses_close,
    is_sending,
    last_close,
    packed_stats,
    spread_offset,
    stats_due,
    take_due,
)
from telemetry import contract
from telemetry.alerts import AlertRecord
from telemetry.contract import QUARANTINE_MAX_BYTES

_log = logging.getLogger("processing")


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Tunables of the pipeline."""

    window_ms: int = 60_000
    grace_ms: int = 10_000
    # A car still sending gets a closed window's stats with its first record at least
    # its own offset in [0, stats_spread_ms) after the close (0: with its next record).
    stats_spread_ms: int = 10_000
    metrics: ProcessingMetrics = field(default_factory=ProcessingMetrics)
    model_dir: Path | None = None
    # A record whose time is further ahead of the wall clock than this is quarantined
    # (future_ts): it would move the partition clock and make every other car late.
    # Above grace_ms, a car 70 s fast (one window + grace) made the other cars' records on
    # its partition late but one per window.
    max_future_ms: int = 10_000
    wall_clock: Callable[[], float] = time.time
    # Late and future records are logged at most once per this many seconds each.
    log_every_s: float = 60.0
    # The step the cars' odometers count in (the sensor-glitch rule's tolerance).
    odometer_resolution_km: float = SensorGlitch.ODOMETER_RESOLUTION_KM


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What ``main()`` sends to topics.

    Attributes:
        outputs: Every output as ``(role, payload)``, with the Kafka timestamp and
            headers it is written with: a window's results carry the window start and
            no headers, every other output those of its input record (quarantine adds
            ``reason`` and ``detail``). :func:`processing.outputs.route` sends them.
    """

    outputs: StreamingDataFrame


def parse(value: bytes) -> dict[str, Any]:
    """Decode and validate one ``vehicle-telemetry`` value; invalid ones are marked, not raised."""
    try:
        # A fresh dict per value, held by nothing else: it is the record.
        return contract.parse(value, require_seq=False)  # type: ignore[return-value]
    except contract.ContractError as exc:
        return {"_invalid": exc.reason, "_detail": str(exc), "_raw": value}


def _partition() -> tuple[str, int]:
    """The (topic, partition) of the message being processed."""
    ctx = message_context()
    return (ctx.topic, ctx.partition) if ctx is not None else ("", 0)


def _car(key: Any) -> str:
    """The car a message key names."""
    return key.decode() if isinstance(key, bytes) else str(key)


class _SummaryLog:
    """At most one log line per interval for a kind of record, with their count.

    Each record is also counted in a metric; a log line per record let one car with a
    bad clock flood the log.
    """

    def __init__(
        self,
        what: str,
        level: int,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what
        self._level = level
        self._every_s = every_s
        self._clock = clock
        self._logged_at: float | None = None
        self._count = 0
        self._cars: set[str] = set()

    def add(self, vid: str, detail: str, records: int = 1) -> None:
        """Note records of one car; logs the ones noted since the last line when due."""
        self._count += records
        if len(self._cars) < _MAX_CARS_LOGGED:
            self._cars.add(vid)
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._every_s:
            return
        more = ", ..." if len(self._cars) >= _MAX_CARS_LOGGED else ""
        _log.log(
            self._level,
            "%d %s since the last report (cars %s%s); latest: %s",
            self._count,
            self._what,
            ", ".join(sorted(self._cars)),
            more,
            detail,
        )
        self._logged_at = now
        self._count = 0
        self._cars.clear()


_MAX_CARS_LOGGED = 10


# The partition's clock in its state (see per_record).
_CLOCK: Final = "clock"
_FUTURE, _NO_KEY, _NULL_VALUE, _BAD_KEY = "future_ts", "no_key", "null_value", "bad_key"


def _no_key(value: bytes) -> dict[str, Any]:
    """The quarantine form of a message without a key (the key names the car)."""
    detail = "no_key: the message has no key; processing keys every car's state by it"
    return {"_invalid": _NO_KEY, "_detail": detail, "_raw": value}


def _null_value() -> dict[str, Any]:
    """The quarantine form of a message without a value (a tombstone)."""
    detail = "null_value: the message has no value (a tombstone); telemetry is a JSON object"
    return {"_invalid": _NULL_VALUE, "_detail": detail, "_raw": b""}


def _bad_key(value: bytes, key: bytes) -> dict[str, Any]:
    """The quarantine form of a message whose key is not UTF-8 (the key names the car)."""
    detail = f"bad_key: the message key {key[:64]!r} is not UTF-8; it names the car"
    return {"_invalid": _BAD_KEY, "_detail": detail, "_raw": value}


def _key_text(key: Any) -> str:
    """The key for a log line, whatever its bytes."""
    return key.decode(errors="backslashreplace") if isinstance(key, bytes) else str(key)


def _future(value: bytes, record: dict[str, Any], timestamp: int, now_ms: int) -> dict[str, Any]:
    """The quarantine form of a record whose time is ahead of the wall clock."""
    detail = (
        f"future_ts: ts {record['ts']} (message timestamp {timestamp}) is "
        f"{(max(record['ts'], timestamp) - now_ms) / 1000:.0f} s ahead of the wall clock"
    )
    return {"_invalid": _FUTURE, "_detail": detail, "_raw": value}


def _output_timestamp(output: Output, _key: Any, timestamp: int, _headers: Any) -> int:
    """A window's results carry its start; every other output its record's timestamp."""
    role, payload = output
    if role == STATS:
        return int(payload["window_start"])
    if role in WINDOWED:
        return int(payload[1])
    return timestamp


def _output_headers(output: Output, _key: Any, _timestamp: int, headers: Any) -> Any:
    """A window's results carry no headers; quarantine adds its reason to the record's."""
    role, payload = output
    if role == STATS or role in WINDOWED:
        return []
    if role != QUARANTINE:
        return headers
    # Same reason headers as ingest's quarantine, after the record's own headers.
    own = [
        (k, v) for k, v in (headers or []) if k not in {"reason", "detail", "truncated_from_bytes"}
    ]
    added = [
        ("reason", payload["_invalid"].encode()),
        ("detail", payload["_detail"].encode()[:1024]),
    ]
    if len(payload["_raw"]) > QUARANTINE_MAX_BYTES:
        added.append(("truncated_from_bytes", str(len(payload["_raw"])).encode()))
    return [*own, *added]


# A window marker: per_record's output for Quix's closing window, never written out.
_MARKER: Final = "marker"


def define_pipeline(sdf: StreamingDataFrame, config: PipelineConfig | None = None) -> Pipeline:
    """Build the stream of stats, sessions, alerts and quarantined records from telemetry.

    Quix runs every step as a Python call per record and pickles the value once per extra
    branch at every fork, so the per-record part is one stateful step and the outputs
    leave in one stream. The step keeps the car's open window samples in the car's state
    (:mod:`processing.windows`) and returns the rare outputs: alerts, sessions,
    quarantined records, due stats and window markers. Quix's tumbling window sees only
    the markers and closes windows on the partition's clock; a second stateful step
    turns the window of each car that stopped sending into its stats.
    """
    cfg = config or PipelineConfig()
    metrics = cfg.metrics

    window_ms, grace_ms = cfg.window_ms, cfg.grace_ms
    # Highest event time seen per partition: a record whose window already closed on that
    # clock is late. The marker window refuses late markers silently, so lateness is
    # decided and counted here, before the window. Kept with the Quix store partition it
    # was seen with: a partition assigned again (a rebalance whose checkpoint was not
    # committed) replays records from its last commit, and a clock from the discarded
    # pass would make them late and skip the marker that closes the windows.
    partition_clock: dict[tuple[str, int], tuple[int, object | None]] = {}
    records_in = metrics.records_in
    # The car's state as this process last wrote it, so most records skip decoding it.
    cars = DecodedCache()
    # The samples of the cars' windows as this process wrote them, read back at the close.
    chunks = BytesCache()
    # The window detectors' memory of each car (and the shadow model's): read once per
    # window, from RocksDB at ~25 us each before these (py-spy of a close).
    memories, shadows = DecodedCache(), DecodedCache()
    late_log = _SummaryLog(
        "late record(s), counted in fleetstream_processing_late", logging.INFO, cfg.log_every_s
    )
    # Reasons a single source can send steadily: summarised rather than logged each.
    summaries = {
        _FUTURE: _SummaryLog(
            "record(s) ahead of the wall clock quarantined", logging.WARNING, cfg.log_every_s
        ),
        _NO_KEY: _SummaryLog("key-less record(s) quarantined", logging.WARNING, cfg.log_every_s),
        _NULL_VALUE: _SummaryLog(
            "value-less record(s) (tombstones) quarantined", logging.WARNING, cfg.log_every_s
        ),
        _BAD_KEY: _SummaryLog(
            "record(s) with a non-UTF-8 key quarantined", logging.WARNING, cfg.log_every_s
        ),
    }
    max_future_ms, wall_clock = cfg.max_future_ms, cfg.wall_clock
    glitch = SensorGlitch(cfg.odometer_resolution_km)
    spread = cfg.stats_spread_ms

    def due_at(vid: str, start: int) -> int:
        # Without a spread, the car's next record emits them, whatever its time.
        return start + window_ms + grace_ms + spread_offset(vid, spread) if spread else 0

    def count_late(key: Any, timestamp: int, records: int = 1) -> None:
        vid = _car(key)
        metrics.late.labels(vehicle_id=vid).inc(records)
        late_log.add(vid, f"{vid} at {timestamp}", records)

    def count_alerts(alerts: list[AlertRecord]) -> None:
        for alert in alerts:
            metrics.alerts.labels(kind=alert["kind"], status=alert["status"]).inc()

    def quarantined(record: dict[str, Any], key: Any = None) -> list[Output]:
        reason = record["_invalid"].split(":")[0]
        metrics.quarantined.labels(reason=reason).inc()
        summary = summaries.get(reason)
        if summary is not None:
            summary.add(_key_text(key), record["_detail"])
        else:
            _log.warning("quarantining an invalid record: %s", record["_detail"])
        return [(QUARANTINE, record)]

    def per_record(
        value: bytes | None, key: Any, timestamp: int, _headers: Any, state: State[str, Any]
    ) -> list[Output]:
        records_in.inc()
        if value is None:
            # A tombstone (Quix passes its null value on): nothing to parse or keep.
            return quarantined(_null_value(), key)
        if not key:
            # Quix's windows skip key-less messages: such a car would never get stats
            # while its samples piled up in one shared state.
            return quarantined(_no_key(value), key)
        if isinstance(key, bytes) and not key.isascii():
            # The car's name in its stats and metrics; a key that does not decode
            # crashed the app at this record's window close, again at every replay.
            try:
                key.decode()
            except UnicodeDecodeError:
                return quarantined(_bad_key(value, key), key)
        where = _partition()
        seen = partition_clock.get(where)
        held = store_partition(state)
        if seen is not None and seen[1] is held:
            clock = seen[0]
        else:
            # A restart or a new assignment: replayed from the last commit, so the clock
            # as of that commit. From 0, a late record right after a restart was added to
            # a window the car had already been given stats for.
            clock = get_partition_value(state, _CLOCK) or 0
            partition_clock[where] = (clock, held)
        start = timestamp - timestamp % window_ms
        late = start + window_ms + grace_ms <= clock
        record = parse(value)
        if "_invalid" in record:
            return quarantined(record)
        # The contract accepts any ts up to 2100, but a car whose clock runs ahead would
        # move the partition clock (and its own detector clock) into the future.
        now_ms = int(wall_clock() * 1000)
        if max(timestamp, record["ts"]) > now_ms + max_future_ms:
            return quarantined(_future(value, record, timestamp, now_ms), key)
        # Only valid records reach the marker window, so only they move the clock.
        crossed = False  # only a record that moves the clock can cross a closing time
        if timestamp > clock:
            partition_clock[where] = (timestamp, held)
            crossed = crosses_close(clock, timestamp, window_ms, grace_ms)
            if crossed:
                # Once per window and partition: the last closing time passed is all the
                # decisions need (last_close).
                set_partition_value(state, _CLOCK, last_close(timestamp, window_ms, grace_ms))
        ident = (*where, key)
        car = cars.load(state, "car", ident)
        # Windows the partition's clock closed before this record (see on_close).
        windows = car.get(OPEN)
        if windows and windows[0][0] + window_ms + grace_ms <= clock:
            vid = _car(key)
            close_passed(car, clock - window_ms - grace_ms, lambda start: due_at(vid, start))
        alerts = detect(car, record, glitch)
        sessions = track(car, record)
        marker = None
        samples = chunks.view(state, ident)
        if not late:
            marker = add_sample(
                car, samples, start, powertrain=record["powertrain"], sample=to_sample(record)
            )
        if marker is None:
            count_late(key, timestamp)
        elif not marker:
            # The record that moves the partition's clock to a window's closing time
            # takes it to Quix's marker window, which closes that window for every car.
            marker = crossed
        due = take_due(car, samples) if stats_due(car, timestamp) else None
        cars.store(state, "car", ident, car)
        if not (alerts or sessions or marker or due):
            return []
        count_alerts(alerts)
        outputs: list[Output] = [(ALERTS, a) for a in alerts]
        outputs += [(SESSIONS, s) for s in sessions]
        if marker:
            outputs.append((_MARKER, None))
        if due:
            # The key names the car, as for the windows Quix closes (on_close).
            outputs += emit(_car(key), ident, due, state)
        return outputs

    models = ModelWatcher(cfg.model_dir, metrics, window_ms=window_ms)
    shadow = ModelWatcher(cfg.model_dir, metrics, pointer=SHADOW, window_ms=window_ms)

    def score_window(
        watcher: ModelWatcher, memory: dict[str, Any], stats: dict[str, Any], *, fallback: bool
    ) -> list[AlertRecord] | None:
        """``detect_window`` with the watcher's model; a model that raises never stops the app.

        A window the model cannot score gets the rules only (``fallback``) or nothing (the
        shadow), from the memory as it was before the failed attempt.
        """
        model = watcher.current()
        if model is None:
            return detect_window(memory, stats) if fallback else None
        try:
            # The detector changes its memory only after the model scored.
            return detect_window(memory, stats, model)
        except Exception as exc:  # noqa: BLE001 - any scoring failure: see the docstring
            watcher.scoring_failed(model, exc)
            return detect_window(memory, stats) if fallback else None

    def emit(
        vid: str, ident: tuple[Any, ...], due: list[tuple[int, str, bytes]], state: State[str, Any]
    ) -> list[Output]:
        """Stats and window-detector alerts of the car's closed windows, oldest first."""
        out: list[Output] = []
        memory = memories.load(state, "window_detectors", ident)
        with_shadow = shadow.current() is not None
        shadow_memory = shadows.load(state, "shadow_detectors", ident) if with_shadow else {}
        for start, powertrain, packed in due:
            end = start + window_ms
            stats = dict(packed_stats(vid, powertrain, start, end, packed))
            metrics.windows.inc()
            metrics.window_latency.observe(max(0.0, time.time() - end / 1000.0))
            out.append((STATS, stats))
            alerts = score_window(models, memory, stats, fallback=True) or []
            count_alerts(alerts)
            out += [(WINDOW_ALERTS, (a, start)) for a in alerts]
            if with_shadow:
                # The candidate keeps its own baseline and episodes, so it never changes
                # what the active model raises.
                shadow_out = score_window(shadow, shadow_memory, stats, fallback=False)
                out += [(SHADOW_ALERTS, (a, start)) for a in shadow_out or []]
        memories.store(state, "window_detectors", ident, memory)
        if with_shadow:
            shadows.store(state, "shadow_detectors", ident, shadow_memory)
        return out

    outputs = sdf.apply(per_record, stateful=True, metadata=True, expand=True)

    def on_late(
        value: Any,
        key: Any,
        timestamp_ms: int,
        late_by_ms: int,
        start: int,
        end: int,
        store_name: str,
        topic: str,
        partition: int,
        offset: int,
    ) -> bool:
        return False  # judged and counted in per_record

    closed = (
        outputs.filter(lambda o: o[0] == _MARKER)
        .tumbling_window(cfg.window_ms, grace_ms=cfg.grace_ms, name="closing", on_late=on_late)
        .agg(markers=Count())
        # Close on the partition's clock: a car that stops sending still gets its window.
        .final(closing_strategy="partition")
    )

    def on_close(
        window: dict[str, Any], key: Any, _ts: int, _headers: Any, state: State[str, Any]
    ) -> list[Output]:
        ident = (*_partition(), key)
        start = window["start"]
        known = cars.peek(state, ident)
        if known is not None and is_sending(known, start):
            # Every car's window closes at this one record. A car still sending closes
            # it with its next record (close_passed in per_record), which writes its
            # state anyway; writing every car's state here stalled the partition and
            # doubled the close's changelog messages. If the car stops first, its
            # next window's close takes this one too.
            return []
        car = cars.load(state, "car", ident)
        closed_before = car.get(CLOSED, start - 1) >= start
        vid = _car(key)
        found = close_window(car, start, due_at(vid, start))
        if not (found or closed_before):
            _log.warning("window %d of %s closed with no samples in the car's state", start, vid)
        # Every car's window closes at the same record, so a car that is still sending
        # gets its stats with a later record of its own, after its spread offset: the
        # work is spread over stats_spread_ms rather than stalling the partition, and the
        # stats are the same (later records of the window are late). If the car stops
        # sending before then, its next window's close emits them, oldest first.
        due = None if is_sending(car, start) else take_due(car, chunks.view(state, ident))
        cars.store(state, "car", ident, car)
        return emit(vid, ident, due, state) if due else []

    # Two branches, so an output is copied once: markers to the closing window, the rest
    # (with the windows that on_close emits) out to the topics.
    results = (
        outputs.filter(lambda o: o[0] != _MARKER)
        .concat(closed.apply(on_close, stateful=True, metadata=True, expand=True))
        .set_timestamp(_output_timestamp)
        .set_headers(_output_headers)
    )
    return Pipeline(outputs=results)
