"""The dashboard's in-memory state: what the Kafka feed has seen, bounded in size.

:class:`FleetView` is fed by one background thread (:mod:`dashboard.feed`) and read by
every browser session's refresh, so every method takes the lock and readers get copies
(:class:`FleetSnapshot`, :class:`CarHistory`, tables), never the live containers. Memory
is bounded: per car a fixed number of stats windows, sampled telemetry records and
sessions, kept compactly as rows of floats (:mod:`dashboard.rows`); a fixed number of cars
and alert episodes.

Records are the JSON objects of the Kafka topics as documented in docs/processing.md
(``vehicle-stats``, ``vehicle-sessions``, ``vehicle-alerts``), v1 telemetry
(docs/telemetry.md) and feedback records (:mod:`dashboard.feedback`). A record of the
wrong shape raises ``KeyError``/``TypeError``/``ValueError``; the feed counts and skips it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_type_hints

import numpy as np
import numpy.typing as npt

from dashboard.rows import (
    SAMPLE,
    SAMPLE_COLUMNS,
    SESSION,
    SESSION_COLUMNS,
    WINDOW,
    WINDOW_COLUMNS,
    CarSample,
    KeptSession,
    KeptWindow,
    Rows,
    Table,
    sample_of,
    sample_row,
    session_of,
    session_row,
    table,
    window_of,
    window_row,
)
from processing.sessions import SessionRecord
from processing.stats import WindowStats
from telemetry.alerts import AlertFields
from telemetry.contract import NUMBER_FIELDS

RecordKind = Literal["telemetry", "stats", "sessions", "alerts", "feedback"]
RECORD_KINDS: Final[tuple[RecordKind, ...]] = (
    "telemetry",
    "stats",
    "sessions",
    "alerts",
    "feedback",
)
# Feedback that arrives before its alert (another topic, another order) waits here.
_MAX_PENDING_FEEDBACK: Final = 10_000
_TS: Final = NUMBER_FIELDS["ts"]
_TS_COL: Final = SAMPLE["ts"]
_LAT_COL: Final = SAMPLE["lat"]
_LON_COL: Final = SAMPLE["lon"]
_END_COL: Final = WINDOW["window_end"]
_ID_COL: Final = SESSION["id_hash"]
# An active episode evicted (every kept one active) is logged at most this often.
_EVICTED_ACTIVE_LOG_S: Final = 60.0
# Cars copied per hold of the lock by the fleet-wide readers (about 1 ms each).
_CARS_PER_HOLD: Final = 250

_log = logging.getLogger("dashboard.view")


def _field_types(shape: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """Per field of a TypedDict of JSON values: the Python types it accepts, and if null."""
    accepted = {int: (int,), float: (int, float), str: (str,)}
    out: dict[str, tuple[tuple[type, ...], bool]] = {}
    for name, hint in get_type_hints(shape).items():
        args = getattr(hint, "__args__", (hint,))
        base = next(a for a in args if a is not type(None))
        out[name] = (accepted[base], type(None) in args)
    return out


_STATS_FIELDS: Final = _field_types(WindowStats)
_SESSION_FIELDS: Final = _field_types(SessionRecord)


def check_shape(
    record: Mapping[str, Any], fields: Mapping[str, tuple[tuple[type, ...], bool]], what: str
) -> None:
    """Check that a record has every field with a JSON type its TypedDict allows.

    A stored record of the wrong shape made every later page render raise (the KPIs and
    charts read its fields), so it is refused when read.

    Raises:
        KeyError: A field is missing.
        TypeError: A field has the wrong type (``true`` is not a number).
    """
    for name, (types, nullable) in fields.items():
        value = record[name]
        if value is None:
            if nullable:
                continue
        elif isinstance(value, types) and not isinstance(value, bool):
            continue
        msg = f"{what} field {name!r} is {value!r}, not {'/'.join(t.__name__ for t in types)}"
        raise TypeError(msg)


def check_time(record: Mapping[str, Any], name: str, what: str) -> int:
    """A time field of a record: ms since the epoch in the contract's range (to 2100).

    A time beyond what a date can show made every later render of the page raise.

    Raises:
        KeyError: The field is missing.
        ValueError: It is not such a time.
    """
    value = record[name]
    if type(value) is not int or not _TS.low <= value <= _TS.high:
        msg = f"{what} field {name!r} is {value!r}, not a time in ms since 1970 up to 2100"
        raise ValueError(msg)
    return value


class AlertEntry(AlertFields):
    """One alert episode: its raised record, whether it cleared, and operator feedback.

    ``raised_seen`` is False while only the episode's cleared record was read (its raised
    one is older than the feed's backfill, or was evicted): ``ts`` and ``message`` are then
    the clear's, and the entry takes no feedback, whose ``alert_ts`` must be the raise time
    (training labels the windows before it).
    """

    raised_seen: bool
    active: bool
    cleared_ts: int | None
    verdict: str | None
    verdict_ts: int | None


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """How the Kafka feed is doing, for the "reconnecting" notice and the sidebar.

    Attributes:
        connected: The last broker check succeeded and no broker error came since;
            None before the first check.
        last_error: The latest error text, kept after reconnecting for the sidebar.
        last_message_at: Wall-clock seconds of the latest record, or None.
        records: Records taken into the view, per kind.
        skipped: Records dropped as malformed.
        evicted_active: Active alert episodes evicted because every kept episode was
            active (``max_alerts`` too low for the fleet).
    """

    connected: bool | None
    last_error: str | None
    last_message_at: float | None
    records: dict[str, int]
    skipped: int
    evicted_active: int = 0


@dataclass(frozen=True, slots=True)
class CarHistory:
    """Copies of one car's bounded history, oldest first."""

    vehicle_id: str
    powertrain: str | None
    samples: list[CarSample]
    stats: list[KeptWindow]
    sessions: list[KeptSession]
    alerts: list[AlertEntry]


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """A copy of the fleet: each car's part consistent, the cars copied a chunk at a time.

    Attributes:
        latest: The latest kept telemetry sample per car.
        last_fixes: ``(ts, lat, lon)`` of the latest sample with a finite position, for
            the cars whose latest sample has none (a GPS gap, a garage).
        powertrains: Powertrain per car, from any record kind.
        recent_windows: Stats windows that ended at or after the snapshot's ``since_ms``,
            one row each (columns: :data:`dashboard.rows.WINDOW_COLUMNS`).
        alerts: Every kept alert episode, newest first.
        status: The feed's status.
    """

    latest: dict[str, CarSample]
    powertrains: dict[str, str]
    recent_windows: Table
    alerts: list[AlertEntry]
    status: FeedStatus
    last_fixes: dict[str, tuple[int, float, float]] = field(default_factory=dict)

    @property
    def vehicle_ids(self) -> list[str]:
        """Every car the view knows, sorted."""
        return sorted(self.powertrains)


@dataclass(frozen=True, slots=True)
class SessionTable:
    """Kept sessions of some cars, one row each (columns: ``rows.SESSION_COLUMNS``).

    Attributes:
        vehicle_ids: The cars.
        powertrains: Each car's powertrain (None if unknown).
        car: Per row, the index of its car in ``vehicle_ids``.
        rows: The sessions.
    """

    vehicle_ids: list[str]
    powertrains: list[str | None]
    car: npt.NDArray[np.intp]
    rows: Table


@dataclass(slots=True)
class _Car:
    samples: Rows
    stats: Rows
    sessions: Rows
    powertrain: str | None = None
    alert_ids: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    # (ts, lat, lon) of the latest sample with a finite position, kept beyond the samples.
    fix: tuple[int, float, float] | None = None


class FleetView:
    """Thread-safe, size-bounded fleet state built from Kafka records."""

    def __init__(
        self,
        *,
        windows_per_car: int = 720,
        samples_per_car: int = 900,
        sessions_per_car: int = 100,
        max_alerts: int = 5000,
        max_cars: int = 10_000,
        max_ahead_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._windows_per_car = windows_per_car
        self._samples_per_car = samples_per_car
        self._sessions_per_car = sessions_per_car
        self._max_alerts = max_alerts
        self._max_cars = max_cars
        # A car's samples follow its clock, so one sample far ahead of the wall clock hid
        # every later one and kept the car "online" at that position.
        self._max_ahead_ms = max_ahead_s * 1000
        self._clock = clock
        self._lock = threading.Lock()
        self._cars: OrderedDict[str, _Car] = OrderedDict()
        self._alerts: OrderedDict[str, AlertEntry] = OrderedDict()  # by episode id
        # Episodes not active (any more), in the order they were read as cleared: the
        # first to go when there are too many episodes.
        self._cleared: OrderedDict[str, None] = OrderedDict()
        self._evicted_active = 0
        self._evicted_active_logged = 0
        self._evicted_active_log_at = -_EVICTED_ACTIVE_LOG_S
        self._pending: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._connected: bool | None = None
        self._last_error: str | None = None
        self._last_message_at: float | None = None
        self._counts: dict[str, int] = dict.fromkeys(RECORD_KINDS, 0)
        self._skipped = 0

    # -- writers (the feed thread) ---------------------------------------------------

    def ingest(self, kind: RecordKind, record: Mapping[str, Any]) -> None:
        """Take one decoded record of the given topic kind into the view.

        Raises:
            KeyError: The record lacks a field the view needs.
            TypeError: A field has the wrong type.
            ValueError: A field has a wrong value.
        """
        handlers = {
            "telemetry": self._telemetry,
            "stats": self._stats,
            "sessions": self._session,
            "alerts": self._alert,
            "feedback": self._feedback,
        }
        handler = handlers[kind]
        with self._lock:
            handler(record)
            self._counts[kind] += 1
            self._last_message_at = self._clock()

    def count_skipped(self) -> None:
        """Count one malformed record the feed dropped."""
        with self._lock:
            self._skipped += 1

    def set_connected(self, connected: bool, error: str | None = None) -> None:
        """Record the feed's connection state (an error text is kept for display)."""
        with self._lock:
            self._connected = connected
            if error is not None:
                self._last_error = error

    def _car(self, vehicle_id: str) -> _Car:
        car = self._cars.get(vehicle_id)
        if car is None:
            car = _Car(
                samples=Rows(len(SAMPLE_COLUMNS), self._samples_per_car),
                stats=Rows(len(WINDOW_COLUMNS), self._windows_per_car),
                sessions=Rows(len(SESSION_COLUMNS), self._sessions_per_car),
            )
            self._cars[vehicle_id] = car
            while len(self._cars) > self._max_cars:
                self._cars.popitem(last=False)
        else:
            self._cars.move_to_end(vehicle_id)
        return car

    def _telemetry(self, record: Mapping[str, Any]) -> None:
        row = sample_row(record)
        ts = int(row[_TS_COL])
        ahead_ms = ts - self._clock() * 1000
        if ahead_ms > self._max_ahead_ms:
            msg = f"telemetry ts {ts} is {ahead_ms / 1000:.0f} s ahead of the wall clock"
            raise ValueError(msg)
        car = self._car(str(record["vehicle_id"]))
        car.powertrain = str(record["powertrain"])
        if car.samples and ts <= car.samples.value(-1, _TS_COL):
            return  # duplicate or out of order: the trace follows the car's clock
        car.samples.append(row)
        lat, lon = row[_LAT_COL], row[_LON_COL]
        if math.isfinite(lat) and math.isfinite(lon):
            car.fix = (ts, lat, lon)

    def _stats(self, record: Mapping[str, Any]) -> None:
        check_shape(record, _STATS_FIELDS, "stats")
        check_time(record, "window_start", "stats")
        end = check_time(record, "window_end", "stats")
        row = window_row(record)
        car = self._car(str(record["vehicle_id"]))
        car.powertrain = str(record["powertrain"])
        # Windows arrive in order per car; a replayed one replaces its first copy.
        if car.stats and end <= car.stats.value(-1, _END_COL):
            i = car.stats.first_at_least(_END_COL, end)
            if car.stats.value(i, _END_COL) == end:
                car.stats.replace(i, row)
            return
        car.stats.append(row)

    def _session(self, record: Mapping[str, Any]) -> None:
        check_shape(record, _SESSION_FIELDS, "session")
        check_time(record, "start_ts", "session")
        check_time(record, "end_ts", "session")
        row = session_row(record)
        car = self._car(str(record["vehicle_id"]))
        car.powertrain = str(record["powertrain"])
        if car.sessions.find(_ID_COL, row[_ID_COL]) is not None:
            return
        car.sessions.append(row)

    def _alert(self, record: Mapping[str, Any]) -> None:
        episode = str(record["episode_id"])
        status = str(record["status"])
        ts = check_time(record, "ts", "alert")
        entry = self._alerts.get(episode)
        raised = status == "raised"
        if entry is not None and raised and not entry["raised_seen"]:
            # The raise, read after its clear (a replay from further back).
            entry["ts"], entry["message"] = ts, str(record["message"])
            entry["evidence"] = dict(record.get("evidence") or {})
            entry["raised_seen"] = True
            return
        if entry is None:
            entry = AlertEntry(
                alert_id=f"{episode}-raised",
                episode_id=episode,
                vehicle_id=str(record["vehicle_id"]),
                kind=str(record["kind"]),
                severity=str(record["severity"]),
                ts=ts,
                message=str(record["message"]),
                evidence=dict(record.get("evidence") or {}),
                detector=str(record.get("detector", "")),
                raised_seen=raised,
                active=raised,
                cleared_ts=None if raised else ts,
                verdict=None,
                verdict_ts=None,
            )
            pending = self._pending.pop(entry["alert_id"], None)
            if pending is not None:
                entry["verdict"], entry["verdict_ts"] = pending
            self._alerts[episode] = entry
            if not raised:
                self._cleared[episode] = None
            car = self._car(entry["vehicle_id"])
            # An episode evicted and read again (its clear) is re-created: listed twice,
            # the car page made two cards with one Streamlit key and failed every refresh.
            if episode not in car.alert_ids:
                car.alert_ids.append(episode)
            while len(self._alerts) > self._max_alerts:
                self._evict_alert()
        elif status == "cleared":
            entry["active"] = False
            entry["cleared_ts"] = ts
            self._cleared[episode] = None

    def _evict_alert(self) -> None:
        """Drop one alert episode, from the alerts and from its car's list.

        The one cleared first goes; an active one only when every kept episode is active
        (the oldest then, logged and counted): a long-running critical alert used to be
        evicted by a day of newer short glitches and vanished from the KPIs and the map.
        """
        if self._cleared:
            episode, _ = self._cleared.popitem(last=False)
            entry = self._alerts.pop(episode)
        else:
            episode, entry = self._alerts.popitem(last=False)
            self._evicted_active += 1
            now = time.monotonic()
            if now - self._evicted_active_log_at >= _EVICTED_ACTIVE_LOG_S:
                _log.warning(
                    "evicted %d active alert episodes (every kept one is active; latest %s "
                    "of %s): raise FLEETSTREAM_DASHBOARD_MAX_ALERTS above %d",
                    self._evicted_active - self._evicted_active_logged,
                    episode,
                    entry["vehicle_id"],
                    self._max_alerts,
                )
                self._evicted_active_logged = self._evicted_active
                self._evicted_active_log_at = now
        car = self._cars.get(entry["vehicle_id"])
        if car is not None and episode in car.alert_ids:
            car.alert_ids.remove(episode)

    def _feedback(self, record: Mapping[str, Any]) -> None:
        alert_id = str(record["alert_id"])
        verdict = str(record["verdict"])
        ts = check_time(record, "ts", "feedback")
        entry = self._alerts.get(str(record.get("episode_id") or alert_id.rsplit("-", 1)[0]))
        if entry is None:
            # The latest verdict by its time wins, as for training (telemetry.feedback).
            waiting = self._pending.get(alert_id)
            if waiting is None or ts >= waiting[1]:
                self._pending[alert_id] = (verdict, ts)
            while len(self._pending) > _MAX_PENDING_FEEDBACK:
                self._pending.popitem(last=False)
            return
        if entry["verdict_ts"] is None or ts >= entry["verdict_ts"]:
            entry["verdict"], entry["verdict_ts"] = verdict, ts

    # -- readers (every browser session) -----------------------------------------------

    def status(self) -> FeedStatus:
        """The feed's current status."""
        with self._lock:
            return self._status()

    def _status(self) -> FeedStatus:
        return FeedStatus(
            connected=self._connected,
            last_error=self._last_error,
            last_message_at=self._last_message_at,
            records=dict(self._counts),
            skipped=self._skipped,
            evicted_active=self._evicted_active,
        )

    def _cars_in_chunks(self) -> Iterator[list[tuple[str, _Car]]]:
        """The cars in chunks, each to be read under one short hold of the lock.

        The fleet-wide readers copy a chunk at a time: one hold over every car (up to
        0.5 s at 10,000 cars) stalled the feed thread for every browser session's refresh.
        A car evicted meanwhile is still read (its object stays valid), once.
        """
        with self._lock:
            cars = list(self._cars.items())
        for i in range(0, len(cars), _CARS_PER_HOLD):
            yield cars[i : i + _CARS_PER_HOLD]

    def snapshot(self, since_ms: int = 0) -> FleetSnapshot:
        """Copy the latest state; ``recent_windows`` holds windows ending at or after since_ms.

        Not one moment for the whole fleet: each car's part is consistent, the cars are
        copied a chunk at a time (see :meth:`_cars_in_chunks`).
        """
        with self._lock:
            alerts: list[AlertEntry] = [AlertEntry(**a) for a in self._alerts.values()]
            status = self._status()
        latest_rows: dict[str, array[float]] = {}
        powertrains: dict[str, str] = {}
        last_fixes: dict[str, tuple[int, float, float]] = {}
        recent: array[float] = array("d")
        for chunk in self._cars_in_chunks():
            with self._lock:
                for vid, car in chunk:
                    if car.powertrain:
                        powertrains[vid] = car.powertrain
                    if car.samples:
                        latest_rows[vid] = row = car.samples.row(-1)
                        if car.fix is not None and car.fix[0] != row[_TS_COL]:
                            last_fixes[vid] = car.fix
                    if car.stats and car.stats.value(-1, _END_COL) >= since_ms:
                        # Windows are in window_end order: the recent ones are a tail.
                        recent += car.stats.copy(car.stats.first_at_least(_END_COL, since_ms))
        alerts.sort(key=lambda a: a["ts"], reverse=True)
        return FleetSnapshot(
            latest={vid: sample_of(row) for vid, row in latest_rows.items()},
            powertrains=powertrains,
            recent_windows=table(recent, len(WINDOW_COLUMNS)),
            alerts=alerts,
            status=status,
            last_fixes=last_fixes,
        )

    def alerts(self) -> list[AlertEntry]:
        """Copies of every kept alert episode, newest first."""
        with self._lock:
            alerts = [AlertEntry(**a) for a in self._alerts.values()]
        alerts.sort(key=lambda a: a["ts"], reverse=True)
        return alerts

    def vehicle_ids(self) -> list[str]:
        """Every car the view knows (by a powertrain from any record kind), sorted."""
        with self._lock:
            ids = [vid for vid, car in self._cars.items() if car.powertrain]
        return sorted(ids)

    def car(self, vehicle_id: str) -> CarHistory | None:
        """Copy one car's history, or None for an unknown car."""
        with self._lock:
            car = self._cars.get(vehicle_id)
            if car is None:
                return None
            episodes = dict.fromkeys(e for e in car.alert_ids if e in self._alerts)
            alerts = [AlertEntry(**self._alerts[e]) for e in episodes]
            powertrain = car.powertrain
            samples, stats, sessions = car.samples.copy(), car.stats.copy(), car.sessions.copy()
        return CarHistory(
            vehicle_id=vehicle_id,
            powertrain=powertrain,
            samples=[sample_of(r) for r in table(samples, len(SAMPLE_COLUMNS)).tolist()],
            stats=[window_of(r) for r in table(stats, len(WINDOW_COLUMNS)).tolist()],
            sessions=[session_of(r) for r in table(sessions, len(SESSION_COLUMNS)).tolist()],
            alerts=alerts,
        )

    def window_chunks(self, since_ms: int | None = None) -> Iterator[Table]:
        """Every car's kept windows (ending at or after ``since_ms``), a chunk of cars at a time.

        One table per chunk (columns: :data:`dashboard.rows.WINDOW_COLUMNS`), so a
        fleet-wide computation never holds a copy of every window (750 MB at the default
        bounds) at once.
        """
        for chunk in self._cars_in_chunks():
            rows: array[float] = array("d")
            with self._lock:
                for _, car in chunk:
                    if since_ms is None:
                        rows += car.stats.copy()
                    elif car.stats and car.stats.value(-1, _END_COL) >= since_ms:
                        rows += car.stats.copy(car.stats.first_at_least(_END_COL, since_ms))
            yield table(rows, len(WINDOW_COLUMNS))

    def windows(self, since_ms: int | None = None) -> Table:
        """Every car's kept windows (ending at or after ``since_ms``) in one table."""
        return np.concatenate([*self.window_chunks(since_ms), table(array("d"), len(WINDOW))])

    def session_chunks(self) -> Iterator[SessionTable]:
        """Every car's kept sessions, a chunk of cars at a time."""
        for chunk in self._cars_in_chunks():
            rows: array[float] = array("d")
            counts: list[int] = []
            powertrains: list[str | None] = []
            with self._lock:
                for _, car in chunk:
                    rows += car.sessions.copy()
                    counts.append(len(car.sessions))
                    powertrains.append(car.powertrain)
            yield SessionTable(
                vehicle_ids=[vid for vid, _ in chunk],
                powertrains=powertrains,
                car=np.repeat(np.arange(len(chunk)), counts),
                rows=table(rows, len(SESSION_COLUMNS)),
            )
