"""The values the browser sessions share: computed once per key, one computation at a time."""

from __future__ import annotations

import threading
import time

import pytest

from dashboard.runtime import RefreshCache

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
