"""The one Kafka consumer of a dashboard process, in a named background thread.

It assigns every partition of the dashboard's topics itself (no consumer group, no
commits: a dashboard is a reader, several may run) and starts each partition a fixed
number of records before its end, so a fresh dashboard shows recent history at once.
Telemetry, the high-volume topic, is sampled before decoding: at most one record per car
per ``dashboard_telemetry_sample_ms`` of event time is decoded and kept at once. The
latest record dropped per car is held back (one per car) and kept when its interval ends:
when the car's next kept record is at least an interval newer, or, for a car that went
silent, once the interval has passed on the wall clock (checked in the poll loop).
Otherwise a car's last state change (parked, then silent) was lost and it showed
"driving" forever.

A broker that goes away is reported in the view (``connected=False`` plus the error),
librdkafka keeps reconnecting, and a failing client is rebuilt after a pause; nothing
raises into the UI. A client whose broker check keeps failing for
:data:`REBUILD_AFTER_S` is rebuilt too: once, in CI, a consumer still failed every
metadata request 60 s after Kafka was back and serving other clients. A rebuilt client
resumes each partition where the previous one stopped, so nothing is read twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, NamedTuple

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from dashboard.errors import FeedError
from dashboard.settings import DashboardSettings
from dashboard.view import FleetView, RecordKind
from telemetry.contract import ContractError, validate

_log = logging.getLogger("dashboard.feed")
_librdkafka_log = logging.getLogger("dashboard.librdkafka")

_BATCH: Final = 1000
_POLL_S: Final = 0.5
_CHECK_EVERY_S: Final = 5.0  # broker health check and discovery of new partitions
_RETRY_S: Final = 3.0
REBUILD_AFTER_S: Final = 30.0  # broker checks failing this long: a new client
# librdkafka errors that mean "no broker reachable right now".
_DOWN_CODES: Final = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})  # noqa: SLF001


class _Held(NamedTuple):
    """A car's latest telemetry record the sampler dropped, kept when its interval ends."""

    due: float  # monotonic seconds: kept then if nothing newer was kept before
    ts: int  # its record timestamp
    message: Message


class KafkaFeed:
    """Consumes the dashboard topics into a :class:`FleetView` until stopped."""

    THREAD_NAME: Final = "dashboard-kafka-feed"

    def __init__(
        self,
        settings: DashboardSettings,
        view: FleetView,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the feed (not started).

        Args:
            settings: The dashboard settings.
            view: Where the records go.
            clock: Monotonic seconds, for when a held telemetry record is due.
        """
        self._settings = settings
        self._view = view
        self._clock = clock
        self._kinds: dict[str, RecordKind] = {
            settings.dashboard_telemetry_topic: "telemetry",
            settings.dashboard_stats_topic: "stats",
            settings.dashboard_sessions_topic: "sessions",
            settings.dashboard_alerts_topic: "alerts",
            settings.dashboard_feedback_topic: "feedback",
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled: dict[bytes | None, int] = {}  # car key -> event time of last kept record
        # car key -> its held record, in the order first held (that is, by due time).
        self._held: OrderedDict[bytes | None, _Held] = OrderedDict()
        self.consumed = 0  # records polled (kept or sampled away), for throughput figures
        # (topic, partition) -> next offset to read: a rebuilt client resumes there.
        self._positions: dict[tuple[str, int], int] = {}

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as exc:  # noqa: BLE001 - the feed must outlive any client failure
                _log.warning("Kafka feed failed, retrying in %.0f s: %s", _RETRY_S, exc)
                self._view.set_connected(False, str(exc))
                self._stop.wait(_RETRY_S)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in _DOWN_CODES:
            self._view.set_connected(False, err.str())
        _log.debug("librdkafka: %s", err.str())

    def _session(self) -> None:
        config = self._settings.kafka_client_config(
            **{
                "group.id": "fleetstream-dashboard",  # required by the client, never joined
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "latest",
                # processing writes with transactions: never show aborted records.
                "isolation.level": "read_committed",
                "error_cb": self._on_error,
                "client.id": "fleetstream-dashboard",
                # librdkafka's own log (connection failures while Kafka is away) goes
                # through logging instead of straight to stderr.
                "logger": _librdkafka_log,
            }
        )
        consumer = Consumer(config)
        assigned: set[tuple[str, int]] = set()
        next_check = 0.0
        failing_since: float | None = None
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_check:
                    now = time.monotonic()
                    if self._check(consumer, assigned):
                        failing_since = None
                    elif failing_since is None:
                        failing_since = now
                    elif now - failing_since >= REBUILD_AFTER_S:
                        msg = f"no broker answered this client for {now - failing_since:.0f} s"
                        raise FeedError(msg)
                    next_check = time.monotonic() + _CHECK_EVERY_S
                if not assigned:
                    self._stop.wait(_POLL_S)
                    continue
                for message in consumer.consume(_BATCH, _POLL_S):
                    self._handle(message)
                self._keep_due()
        finally:
            consumer.close()

    def _check(self, consumer: Consumer, assigned: set[tuple[str, int]]) -> bool:
        """Ask the broker for metadata (health) and assign partitions not assigned yet.

        Returns:
            Whether the broker answered.
        """
        try:
            metadata = consumer.list_topics(timeout=5)
        except KafkaException as exc:
            self._view.set_connected(False, str(exc.args[0] if exc.args else exc))
            return False
        self._view.set_connected(True)
        new: list[TopicPartition] = []
        for topic, kind in self._kinds.items():
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                continue  # not created yet; looked for again at the next check
            depth = (
                self._settings.dashboard_telemetry_backfill
                if kind == "telemetry"
                else self._settings.dashboard_backfill
            )
            for partition in meta.partitions:
                if (topic, partition) in assigned:
                    continue
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=5
                )
                resume = self._positions.get((topic, partition))
                start = max(low, high - depth) if resume is None else max(low, resume)
                new.append(TopicPartition(topic, partition, start))
                assigned.add((topic, partition))
        if new:
            consumer.incremental_assign(new)
            _log.info("reading %d partitions (from up to the last records of each)", len(new))
        return True

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001
                _log.warning("consumer error: %s", error.str())
            return
        self.consumed += 1
        topic = message.topic() or ""
        self._positions[(topic, message.partition() or 0)] = (message.offset() or 0) + 1
        kind = self._kinds.get(topic)
        if kind is None:
            return
        if kind == "telemetry" and not self._keep_sample(message):
            return
        self._ingest(kind, message)

    def _ingest(self, kind: RecordKind, message: Message) -> None:
        """Decode a record and take it into the view; a malformed one is counted."""
        try:
            record = orjson.loads(message.value() or b"")
            if kind == "telemetry":
                record = validate(record, require_seq=False)
            elif not isinstance(record, dict):
                msg = "record is not a JSON object"
                raise TypeError(msg)  # noqa: TRY301 - counted with the other bad shapes below
            self._view.ingest(kind, record)
        except (orjson.JSONDecodeError, ContractError, KeyError, TypeError, ValueError) as exc:
            self._view.count_skipped()
            _log.debug("skipped a malformed %s record: %s", kind, exc)

    def _keep_sample(self, message: Message) -> bool:
        """Keep a car's record only if its event time moved on by the sample interval.

        A dropped record is held instead (the car's latest one); a kept record discards
        the held one, after taking it into the view first if it is at least an interval
        older (it was the car's state for that long).
        """
        key = message.key()
        ts = message.timestamp()[1]
        interval = self._settings.dashboard_telemetry_sample_ms
        last = self._sampled.get(key)
        if last is not None and ts < last:
            # A redelivered or late record, older than the car's kept state: the view
            # would refuse it, and it must not discard the held latest record.
            return False
        if last is not None and ts - last < interval:
            self._hold(key, ts, message)
            return False
        held = self._held.pop(key, None)
        if held is not None and ts - held.ts >= interval:
            self._ingest("telemetry", held.message)
        if last is None and len(self._sampled) >= 2 * self._settings.dashboard_max_cars:
            self._sampled.clear()  # bound the memory; costs one extra sample per car
        self._sampled[key] = ts
        return True

    def _hold(self, key: bytes | None, ts: int, message: Message) -> None:
        """Hold a dropped record as its car's latest (one per car, bounded in cars)."""
        held = self._held.get(key)
        if held is not None:
            if ts >= held.ts:  # the newer one, due when the first held one was
                self._held[key] = held._replace(ts=ts, message=message)
            return
        if len(self._held) >= 2 * self._settings.dashboard_max_cars:
            self._keep_held(*self._held.popitem(last=False))
        due = self._clock() + self._settings.dashboard_telemetry_sample_ms / 1000
        self._held[key] = _Held(due, ts, message)

    def _keep_due(self) -> None:
        """Take into the view every held record whose interval has passed (wall clock)."""
        now = self._clock()
        while self._held:
            key, held = next(iter(self._held.items()))
            if held.due > now:
                return
            del self._held[key]
            self._keep_held(key, held)

    def _keep_held(self, key: bytes | None, held: _Held) -> None:
        self._sampled[key] = held.ts
        self._ingest("telemetry", held.message)
