"""What one dashboard process shares between browser sessions: view, feed, feedback sink.

Also the pages' fleet-wide numbers: every browser session refreshes every
``dashboard_refresh_s``, and each computed the KPIs, the map and the efficiency tables
from the raw windows itself (0.9 s per session per refresh at 10,000 cars x 60 windows,
most of it holding the view's lock). They are computed once per refresh interval
(:class:`RefreshCache`) for all sessions.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Final, TypeVar, cast

from dashboard import kpis
from dashboard.feed import KafkaFeed
from dashboard.feedback import FeedbackSink, KafkaFeedbackSink
from dashboard.settings import DashboardSettings
from dashboard.view import FleetView

_log = logging.getLogger("dashboard")

T = TypeVar("T")

# The efficiency tables cover every kept window (12 h) and session: recomputed this often
# at most (about 1 s at 10,000 cars x 720 windows), not at every refresh.
EFFICIENCY_EVERY_S: Final = 30.0


class RefreshCache:
    """Values shared by every browser session, each computed once per key.

    Single flight: a session asking for a value another is computing waits for it
    instead of computing it too. Only the latest key's value is kept per name.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._values: dict[str, tuple[Hashable, object]] = {}
        # Bumped by clear(): a value computed from data read before a clear is not kept.
        self._generation = 0

    def get(self, name: str, key: Hashable, compute: Callable[[], T]) -> T:
        """The value of ``name`` for ``key``, computed now if the cached one has another key."""
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            with self._guard:
                cached = self._values.get(name)
                generation = self._generation
            if cached is not None and cached[0] == key:
                return cast("T", cached[1])
            value = compute()
            with self._guard:
                if generation == self._generation:
                    self._values[name] = (key, value)
            return value

    def clear(self) -> None:
        """Forget every value, those being computed too (the next request computes again)."""
        with self._guard:
            self._values.clear()
            self._generation += 1


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
    cache: RefreshCache = field(default_factory=RefreshCache)

    def now_ms(self) -> int:
        """The current time in epoch milliseconds."""
        return int(self.clock() * 1000)

    def _interval(self, now_ms: int) -> int:
        """The number of the refresh interval ``now_ms`` falls in."""
        return now_ms // max(1, int(self.settings.dashboard_refresh_s * 1000))

    def overview(self, now_ms: int) -> kpis.Overview:
        """The fleet overview, computed at most once per refresh interval for all sessions.

        Up to one refresh interval old; a write from the page (feedback) clears it.
        """
        settings = self.settings
        online_ms = int(settings.dashboard_online_s * 1000)
        period_ms = int(settings.dashboard_kpi_window_s * 1000)

        def compute() -> kpis.Overview:
            snapshot = self.view.snapshot(since_ms=now_ms - period_ms)
            return kpis.overview(snapshot, now_ms, online_ms, period_ms)

        return self.cache.get("overview", self._interval(now_ms), compute)

    def efficiency(self, now_ms: int) -> kpis.Efficiency:
        """The efficiency tables, computed at most once per :data:`EFFICIENCY_EVERY_S`.

        For all sessions; a refresh interval longer than that is used instead.
        """
        every_ms = int(max(EFFICIENCY_EVERY_S, self.settings.dashboard_refresh_s) * 1000)

        def compute() -> kpis.Efficiency:
            return kpis.Efficiency(
                by_temperature=kpis.consumption_by_temperature(self.view.window_chunks()),
                idle_drain=kpis.idle_drain_per_car(self.view.session_chunks()),
            )

        return self.cache.get("efficiency", now_ms // every_ms, compute)

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
