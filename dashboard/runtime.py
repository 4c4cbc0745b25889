"""What one dashboard process shares between browser sessions: view, feed, feedback sink."""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dashboard.feed import KafkaFeed
from dashboard.feedback import FeedbackSink, KafkaFeedbackSink
from dashboard.settings import DashboardSettings
from dashboard.view import FleetView

_log = logging.getLogger("dashboard")


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything the pages need; tests build one with recorded data and a list sink.

    Attributes:
        settings: The dashboard settings.
        view: The fleet state the pages read.
        feedback: Where alert feedback goes.
        clock: Wall-clock seconds (tests pin it to the recording's time).
        feed: The Kafka feed filling the view, or None when the view is filled otherwise.
    """

    settings: DashboardSettings
    view: FleetView
    feedback: FeedbackSink
    clock: Callable[[], float] = field(default=time.time)
    feed: KafkaFeed | None = None

    def now_ms(self) -> int:
        """The current time in epoch milliseconds."""
        return int(self.clock() * 1000)

    def stop(self) -> None:
        """Stop the feed thread and flush the feedback producer."""
        if self.feed is not None:
            self.feed.stop()
        self.feedback.close()


def view_for(settings: DashboardSettings, clock: Callable[[], float] = time.time) -> FleetView:
    """An empty view with the bounds from the settings."""
    return FleetView(
        windows_per_car=settings.dashboard_windows_per_car,
        samples_per_car=settings.dashboard_samples_per_car,
        sessions_per_car=settings.dashboard_sessions_per_car,
        max_alerts=settings.dashboard_max_alerts,
        max_cars=settings.dashboard_max_cars,
        max_ahead_s=settings.processing_max_future_s,
        clock=clock,
    )


def start_runtime(settings: DashboardSettings | None = None) -> Runtime:
    """Create the view, start the Kafka feed thread, and stop it again at process exit."""
    settings = settings or DashboardSettings()
    view = view_for(settings)
    feed = KafkaFeed(settings, view)
    sink = KafkaFeedbackSink(settings.kafka_client_config(), settings.dashboard_feedback_topic)
    runtime = Runtime(settings=settings, view=view, feedback=sink, feed=feed)
    feed.start()
    atexit.register(runtime.stop)
    _log.info(
        "dashboard reading %s from %s",
        ", ".join(
            (
                settings.dashboard_telemetry_topic,
                settings.dashboard_stats_topic,
                settings.dashboard_sessions_topic,
                settings.dashboard_alerts_topic,
                settings.dashboard_feedback_topic,
            )
        ),
        settings.kafka_bootstrap_servers,
    )
    return runtime
