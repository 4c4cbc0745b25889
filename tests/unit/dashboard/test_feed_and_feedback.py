"""Settings, the feed thread without a broker, and the feedback producer's errors."""

from __future__ import annotations

import threading
import time

import pytest

from dashboard.errors import FeedbackError
from dashboard.feed import KafkaFeed
from dashboard.feedback import KafkaFeedbackSink, feedback_record
from dashboard.server import streamlit_argv
from dashboard.settings import DashboardSettings
from dashboard.view import FleetView
from telemetry.errors import FleetstreamError
from telemetry.feedback import latest_verdicts

from .fleet_data import Recording, filled_view

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


def test_latest_verdict_per_alert_is_the_label() -> None:
    records = [
        {"alert_id": "a-raised", "verdict": "acknowledged", "ts": 1},
        {"alert_id": "b-raised", "verdict": "acknowledged", "ts": 2},
        {"alert_id": "a-raised", "verdict": "false_positive", "ts": 3},
        {"alert_id": "b-raised", "verdict": "false_positive", "ts": 1},  # older: ignored
    ]
    assert latest_verdicts(records) == {"a-raised": "false_positive", "b-raised": "acknowledged"}
