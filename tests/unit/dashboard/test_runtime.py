"""The values the browser sessions share: computed once per key, one computation at a time."""

from __future__ import annotations

import threading
import time

import pytest

from dashboard.feedback import ListFeedbackSink
from dashboard.runtime import RefreshCache, Runtime
from dashboard.settings import DashboardSettings

from .fleet_data import Recording, _idle, filled_view

pytestmark = pytest.mark.unit


def test_refresh_cache_computes_once_per_key_while_sessions_wait() -> None:
    cache = RefreshCache()
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        time.sleep(0.05)  # sessions asking meanwhile wait for this one
        return len(calls)

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("kpis", 7, compute)))
        for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [1] * 5
    assert cache.get("kpis", 7, compute) == 1
    assert cache.get("kpis", 8, compute) == 2  # the next refresh interval
    assert cache.get("other", 8, compute) == 3  # names are independent
    cache.clear()
    assert cache.get("kpis", 8, compute) == 4


def test_a_value_computed_across_a_clear_is_not_kept() -> None:
    # A feedback click clears the cache while another session computes the overview from
    # the view as it was before: that value must not serve the rest of the interval.
    cache = RefreshCache()
    started, release = threading.Event(), threading.Event()

    def stale() -> str:
        started.set()
        release.wait(10)
        return "before feedback"

    worker = threading.Thread(target=cache.get, args=("overview", 1, stale))
    worker.start()
    assert started.wait(10)
    cache.clear()
    release.set()
    worker.join(10)
    assert cache.get("overview", 1, lambda: "after feedback") == "after feedback"


def test_efficiency_tables_are_recomputed_every_30_s_at_most(small: Recording) -> None:
    view = filled_view(small)
    runtime = Runtime(settings=DashboardSettings(), view=view, feedback=ListFeedbackSink())
    start = (small.end_ms // 30_000) * 30_000
    first = runtime.efficiency(start)
    assert first.idle_drain[0]["vehicle_id"] == "ice-1"
    view.ingest("sessions", _idle("ev-2", "ev", small.end_ms - 600_000, hours=1.0, drain=9.0))
    assert runtime.efficiency(start + 29_999) is first
    later = runtime.efficiency(start + 30_000)
    assert [r["vehicle_id"] for r in later.idle_drain] == ["ev-2", "ice-1"]
