"""Settings, the feed thread without a broker, and the feedback producer's errors."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import ClassVar

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from dashboard import feed as feed_module
from dashboard.errors import FeedbackError
from dashboard.feed import KafkaFeed
from dashboard.feedback import KafkaFeedbackSink, feedback_record
from dashboard.server import streamlit_argv
from dashboard.settings import DashboardSettings
from dashboard.view import FleetView
from telemetry.errors import FleetstreamError
from telemetry.feedback import latest_verdicts

from ..records import make_ev
from .fleet_data import T0, Recording, filled_view

pytestmark = pytest.mark.unit

NO_BROKER = "127.0.0.1:1"  # nothing listens on port 1


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS", "kafka:29092")
    monkeypatch.setenv("FLEETSTREAM_DASHBOARD_PORT", "18501")
    monkeypatch.setenv("FLEETSTREAM_DASHBOARD_ALERTS_TOPIC", "my-alerts")
    settings = DashboardSettings()
    assert settings.kafka_client_config()["bootstrap.servers"] == "kafka:29092"
    assert settings.dashboard_port == 18501
    assert settings.dashboard_alerts_topic == "my-alerts"
    assert settings.dashboard_feedback_topic == "vehicle-alerts.feedback"


def test_streamlit_command_line_runs_the_app_headless() -> None:
    argv = streamlit_argv("0.0.0.0", 18501)  # noqa: S104 - only a command line
    assert argv[1:4] == ["-m", "streamlit", "run"]
    assert argv[4].endswith("dashboard/app.py")
    assert argv[argv.index("--server.port") + 1] == "18501"
    assert argv[argv.index("--server.headless") + 1] == "true"


def test_feed_reports_an_unreachable_broker_and_stops_on_request() -> None:
    view = FleetView()
    feed = KafkaFeed(DashboardSettings(kafka_bootstrap_servers=NO_BROKER), view)
    feed.start()
    try:
        assert KafkaFeed.THREAD_NAME in {t.name for t in threading.enumerate()}
        deadline = time.monotonic() + 20
        while view.status().connected is not False and time.monotonic() < deadline:
            time.sleep(0.1)
        status = view.status()
        assert status.connected is False
        assert status.last_error
    finally:
        began = time.monotonic()
        feed.stop()
    assert not feed.running
    assert time.monotonic() - began < 10


def test_feedback_error_when_kafka_does_not_confirm(small: Recording) -> None:
    alert = filled_view(small).snapshot().alerts[0]
    sink = KafkaFeedbackSink(
        {"bootstrap.servers": NO_BROKER, "message.timeout.ms": 1000}, "feedback", timeout_s=3
    )
    with pytest.raises(FeedbackError, match="could not write feedback to feedback") as caught:
        sink.send(feedback_record(alert, "acknowledged", small.end_ms))
    assert isinstance(caught.value, FleetstreamError)


def test_feedback_error_when_the_client_config_is_refused(small: Recording) -> None:
    # The producer is built at the first click; its config error was a raw KafkaException.
    alert = filled_view(small).snapshot().alerts[0]
    sink = KafkaFeedbackSink(
        {"bootstrap.servers": NO_BROKER, "security.protocol": "SASL_PLAINTEXT",
         "sasl.mechanism": "NOPE"}, "feedback", timeout_s=3,
    )  # fmt: skip
    with pytest.raises(FeedbackError, match="could not write feedback to feedback"):
        sink.send(feedback_record(alert, "acknowledged", small.end_ms))


def test_latest_verdict_per_alert_is_the_label() -> None:
    records = [
        {"alert_id": "a-raised", "verdict": "acknowledged", "ts": 1},
        {"alert_id": "b-raised", "verdict": "acknowledged", "ts": 2},
        {"alert_id": "a-raised", "verdict": "false_positive", "ts": 3},
        {"alert_id": "b-raised", "verdict": "false_positive", "ts": 1},  # older: ignored
    ]
    assert latest_verdicts(records) == {"a-raised": "false_positive", "b-raised": "acknowledged"}


class _ScriptedConsumer:
    """Stands in for confluent_kafka.Consumer: the first one never reaches a broker."""

    made: ClassVar[list[_ScriptedConsumer]] = []

    def __init__(self, _config: dict[str, object]) -> None:
        self.broken = not _ScriptedConsumer.made
        self.assigned: list[TopicPartition] = []
        self.closed = False
        _ScriptedConsumer.made.append(self)

    def list_topics(self, timeout: float) -> SimpleNamespace:
        if self.broken:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        part = SimpleNamespace(error=None, partitions={0: None, 1: None})
        return SimpleNamespace(topics={"vehicle-alerts": part})

    def get_watermark_offsets(self, _tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 10, 5000

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned += partitions

    def consume(self, _n: int, timeout: float) -> list[object]:
        time.sleep(min(timeout, 0.02))
        return []

    def close(self) -> None:
        self.closed = True


def test_a_client_that_never_reaches_the_broker_is_rebuilt_and_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seen once in CI: a consumer still failed every metadata request 60 s after Kafka
    # was back. The feed gives up on such a client and resumes with a new one.
    _ScriptedConsumer.made = []
    monkeypatch.setattr(feed_module, "Consumer", _ScriptedConsumer)
    monkeypatch.setattr(feed_module, "REBUILD_AFTER_S", 0.3)
    monkeypatch.setattr(feed_module, "_CHECK_EVERY_S", 0.05)
    monkeypatch.setattr(feed_module, "_RETRY_S", 0.05)
    view = FleetView()
    settings = DashboardSettings(kafka_bootstrap_servers=NO_BROKER)
    feed = KafkaFeed(settings, view)
    feed._positions[("vehicle-alerts", 1)] = 4321  # read before the failure
    feed.start()
    try:
        deadline = time.monotonic() + 10
        while len(_ScriptedConsumer.made) < 2 or not _ScriptedConsumer.made[1].assigned:
            assert time.monotonic() < deadline, "the stuck client was never replaced"
            time.sleep(0.02)
    finally:
        feed.stop()
    first, second = _ScriptedConsumer.made[:2]
    assert first.closed
    assert not first.assigned
    starts = {tp.partition: tp.offset for tp in second.assigned}
    # Partition 1 resumes where the feed stopped reading; 0 starts at the backfill depth.
    assert starts == {0: max(10, 5000 - settings.dashboard_backfill), 1: 4321}
    assert view.status().connected is True
    assert "no broker answered this client" in (view.status().last_error or "")


class _Message:
    """Stands in for a confluent_kafka Message of the telemetry topic."""

    def __init__(self, record: dict[str, object], offset: int) -> None:
        self._record, self._offset = record, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "vehicle-telemetry"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return str(self._record["vehicle_id"]).encode()

    def value(self) -> bytes:
        return orjson.dumps(self._record)

    def timestamp(self) -> tuple[int, int]:
        return (1, int(str(self._record["ts"])))


def _sampling_feed(now_ms: int) -> tuple[KafkaFeed, FleetView, list[float]]:
    wall = [1000.0]  # monotonic seconds, moved by the test
    view = FleetView(clock=lambda: now_ms / 1000)
    feed = KafkaFeed(DashboardSettings(), view, clock=lambda: wall[0])
    return feed, view, wall


def test_sampling_keeps_a_silent_cars_last_record_when_its_interval_ends() -> None:
    # The car parks 1 s after the last kept record and goes silent: the sampler dropped
    # the parked record, and the car showed "driving" at 90 km/h forever.
    feed, view, wall = _sampling_feed(T0 + 60_000)
    states = [("driving", 90.0)] * 5 + [("parked", 0.0)]
    for i, (state, speed) in enumerate(states):  # 1 Hz
        record = make_ev(T0 + i * 1000, state=state, speed_kmh=speed)
        feed._handle(_Message(record, i))
    feed._keep_due()
    assert view.snapshot().latest["car-1"]["state"] == "driving"  # not due yet
    wall[0] += 2.0  # the sample interval, on the wall clock
    feed._keep_due()
    latest = view.snapshot().latest["car-1"]
    assert (latest["ts"], latest["state"], latest["speed_kmh"]) == (T0 + 5000, "parked", 0.0)


def test_a_redelivered_older_record_keeps_the_held_latest_state() -> None:
    # At-least-once: the 3 s record comes again after the car parked at 5 s. It used to
    # take the "keep" path, discard the held parked record, and leave "driving".
    feed, view, wall = _sampling_feed(T0 + 60_000)
    states = [("driving", 90.0)] * 5 + [("parked", 0.0)]
    for i, (state, speed) in enumerate(states):
        feed._handle(_Message(make_ev(T0 + i * 1000, state=state, speed_kmh=speed), i))
    feed._handle(_Message(make_ev(T0 + 3000, state="driving", speed_kmh=90.0), 6))
    wall[0] += 2.0
    feed._keep_due()
    latest = view.snapshot().latest["car-1"]
    assert (latest["ts"], latest["state"]) == (T0 + 5000, "parked")


def test_sampling_rate_is_kept_and_a_held_state_kept_when_superseded() -> None:
    feed, view, wall = _sampling_feed(T0 + 60_000)
    for i in range(20):  # 1 Hz for 20 s: every other record, the held ones discarded
        feed._handle(_Message(make_ev(T0 + i * 1000), i))
        wall[0] += 0.5
        feed._keep_due()
    car = view.car("car-1")
    assert car is not None
    assert [s["ts"] - T0 for s in car.samples] == list(range(0, 20_000, 2000))
    # Held at 19 s, the next record 11 s later: 19 s stood for a whole interval, kept too.
    feed._handle(_Message(make_ev(T0 + 30_000), 20))
    car = view.car("car-1")
    assert car is not None
    assert [s["ts"] - T0 for s in car.samples][-3:] == [18_000, 19_000, 30_000]
