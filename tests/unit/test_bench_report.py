"""The benchmark report: ratios, percentiles, targets, JSON, fleet-size search."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import psutil
import pytest

from bench import BenchError, HarnessError
from bench._e2e import (
    _after_close,
    _by_ten_seconds,
    _by_ten_seconds_of_run,
    _collect,
    _next_sizes,
    _run_size,
    _SizeResult,
    phase_wait_s,
    run_cpu_pct,
    window_gaps,
)
from bench._ingest import _Load, _Run
from bench._report import Report, cpu_shares, cpu_times, percentile, row, speed_probe
from bench.harness import KafkaRecord, ProcessWatch

pytestmark = pytest.mark.unit


def test_row_ratio_is_value_over_baseline() -> None:
    r = row("ingest", "msg/s", 15_000.0, "msg/s", ("mosquitto_sub", 30_000.0))
    assert r["ratio"] == pytest.approx(0.5)
    assert row("ingest", "rss", 50.0, "MiB")["ratio"] is None
    assert row("x", "y", 1.0, "u", ("zero", 0.0))["ratio"] is None


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 50.0), (99, 99.0), (100, 100.0)])
def test_percentile_by_nearest_rank(q: float, expected: float) -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_nan() -> None:
    assert percentile([], 99) != percentile([], 99)


def test_table_json_and_targets(tmp_path: Path) -> None:
    report = Report("ingest", {"vehicles": 3})
    report.add(row("ingest", "msg/s", 12_345.0, "msg/s", ("mosquitto_sub", 24_690.0)))
    report.check("ingest >= 0.5x mosquitto_sub", ">= 0.50x", "0.50x", met=True)
    report.check("ingest >= 3x MQTTSource", ">= 3.00x", "1.20x", met=False)
    text = report.table()
    assert "12,345" in text
    assert "0.50x" in text
    assert "[MISS] ingest >= 3x MQTTSource" in text
    path = report.write(tmp_path)
    data = orjson.loads(path.read_bytes())
    assert data["rows"][0]["ratio"] == pytest.approx(0.5)
    assert data["machine"]["cores"] >= 1
    assert (tmp_path / "ingest-latest.json").read_bytes() == path.read_bytes()


def _result(vehicles: int, passed: bool) -> _SizeResult:
    r = _SizeResult(
        vehicles, 60, sent=vehicles * 60, in_kafka=vehicles * 60, consumed=vehicles * 60
    )
    r.receive_ms = [5.0]
    r.alert_ms = [100.0 if passed else 5000.0]
    return r


def test_speed_probe_is_taken_at_start_and_end_and_printed(tmp_path: Path) -> None:
    report = Report("pipeline", {})
    start = report.machine["speed_probe_us_at_start"]
    assert 0 < start < 10_000
    assert "speed_probe_us_at_end" not in report.machine
    report.finish()
    end = report.machine["speed_probe_us_at_end"]
    assert 0 < end < 10_000
    assert f"{start:.2f} µs at start, {end:.2f} µs at end" in report.table()
    saved = orjson.loads(report.write(tmp_path).read_bytes())
    assert saved["machine"]["speed_probe_us_at_end"] == end


def test_cpu_shares_split_busy_from_idle_and_hypervisor_steal() -> None:
    before = {"user": 10.0, "system": 5.0, "idle": 80.0, "iowait": 1.0, "steal": 4.0}
    # 100 s of all cores' time: 30 busy (incl. interrupts), 50 idle, 5 I/O wait, 15 stolen.
    after = {"user": 30.0, "system": 12.0, "idle": 130.0, "iowait": 6.0, "steal": 19.0}
    after |= {"irq": 1.0, "softirq": 2.0}
    shares = cpu_shares(before, after)
    assert shares.busy_pct == pytest.approx(30.0)
    assert shares.steal_pct == pytest.approx(15.0)
    # Guest time is already inside user time on Linux: counted once, not twice.
    guest = cpu_shares({**before, "guest": 0.0}, {**after, "guest": 20.0})
    assert guest == shares
    assert cpu_shares(after, after) == (0.0, 0.0)


def test_the_run_reports_the_cpu_the_hypervisor_took(tmp_path: Path) -> None:
    report = Report("pipeline", {})
    report.cpu_at_start = {k: 0.0 for k in cpu_times()}  # since boot: a known, non-empty span
    report.finish()
    busy, steal = report.machine["busy_pct_during_run"], report.machine["steal_pct_during_run"]
    now = cpu_times()
    expected = cpu_shares({k: 0.0 for k in now}, now)
    assert busy == pytest.approx(expected.busy_pct, abs=0.2)
    assert steal == pytest.approx(expected.steal_pct, abs=0.2)
    assert 0 < busy + steal <= 100.1  # each rounded to 0.1
    assert f"stolen by the hypervisor {steal:.1f} %" in report.table()
    saved = orjson.loads(report.write(tmp_path).read_bytes())
    assert saved["machine"]["steal_pct_during_run"] == steal
    assert "cpu_at_start" not in saved


def test_a_process_watch_measures_the_machine_over_the_same_span() -> None:
    watch = ProcessWatch(lambda: [psutil.Process()])
    began = time.process_time()
    while time.process_time() - began < 0.3:  # one busy core for 0.3 s
        pass
    watch.stop()
    assert watch.cpu_s >= 0.25
    # Over the busy span the timeline gives about one core; a span it never sampled, nan.
    (t0, used0), (t1, used1) = watch.timeline[0], watch.timeline[-1]
    assert used0 == 0
    assert used1 == pytest.approx(watch.cpu_s)
    assert watch.cpu_pct_between(t0, t1) == pytest.approx(100 * watch.cpu_s / (t1 - t0))
    # A part of the span: the CPU between the samples at its ends.
    (ta, ua), (tb, ub) = watch.timeline[1], watch.timeline[-2]
    if tb > ta:
        assert watch.cpu_pct_between(ta, tb) == pytest.approx(100 * (ub - ua) / (tb - ta))
    assert math.isnan(watch.cpu_pct_between(t1 + 1, t1 + 2))
    # This process kept one of the machine's cores busy for most of the span.
    assert watch.machine.busy_pct > 0
    assert 0 <= watch.machine.steal_pct <= 100 - watch.machine.busy_pct + 1e-6


def test_a_process_cpu_share_counts_only_the_run_not_the_wait_before_it() -> None:
    watch = ProcessWatch(list)
    watch.stop()
    # 60 s of phase wait at 10 % of a core, then a 20 s run at one full core.
    watch.timeline = [(0.0, 0.0), (30.0, 3.0), (60.0, 6.0), (70.0, 16.0), (80.0, 26.0)]
    watch.cpu_s = 26.0
    assert run_cpu_pct(watch, 60.0, 80.0) == pytest.approx(100.0)  # 26 s / 20 s was 130 %
    # A process that ended halfway (the simulator) was idle for the rest of the run.
    watch.timeline = [(60.0, 0.0), (70.0, 10.0)]
    assert run_cpu_pct(watch, 60.0, 80.0) == pytest.approx(50.0)
    assert math.isnan(run_cpu_pct(watch, 90.0, 100.0))


def test_speed_probe_measures_the_work_it_names() -> None:
    # A probe that timed nothing would be ~0; one record's decode + validate + encode is
    # well above a microsecond on any machine this runs on, and far below a millisecond.
    assert 0.5 < speed_probe() < 1_000


def test_fleet_search_doubles_then_bisects_once() -> None:
    assert _next_sizes([_result(1000, True)]) == [2000]
    assert _next_sizes([_result(1000, True), _result(2000, True), _result(4000, False)]) == [3000]
    done = [_result(1000, True), _result(2000, True), _result(4000, False), _result(3000, True)]
    assert _next_sizes(done) == []
    assert _next_sizes([_result(1000, False)]) == [500]


def test_a_size_with_loss_does_not_pass() -> None:
    r = _result(100, True)
    assert r.passed
    r.in_kafka -= 1
    assert not r.passed


def test_a_size_whose_services_crashed_does_not_pass() -> None:
    r = _result(100, True)
    assert r.passed
    r.crashes = 1  # e.g. processing exited 1 on the bench's SIGTERM: nothing was lost
    assert r.lost == 0
    assert not r.passed


def test_a_surplus_in_one_count_does_not_hide_a_loss_in_another() -> None:
    r = _result(100, True)
    r.window_expected = r.window_samples = 500
    assert r.lost == 0
    assert r.passed
    r.in_kafka -= 1
    r.window_surplus += 1  # a window that counted a sample twice
    assert r.lost == 1
    assert r.surplus_samples == 1
    r.in_kafka += 1
    assert r.lost == 0
    assert not r.passed  # double counting fails the size on its own
    r.window_surplus -= 1
    r.consumed -= 2  # two records in Kafka that processing never read
    assert r.lost == 2
    assert not r.passed


def test_window_gaps_count_each_window_on_its_own() -> None:
    expected = {("a", 0): 60, ("b", 0): 60, ("a", 60_000): 60}
    assert window_gaps(expected, dict(expected)) == (0, 0)
    # Car a's first window missing, car b's emitted twice: not "0 lost, 0 surplus".
    assert window_gaps(expected, {("b", 0): 120, ("a", 60_000): 60}) == (60, 60)
    # A window the telemetry never had is surplus in full.
    assert window_gaps(expected, {**expected, ("c", 0): 5}) == (0, 5)


def test_a_missing_window_and_a_duplicated_one_are_each_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = 60_000
    start = 1_000_000_020_000 // window * window
    telemetry = [
        KafkaRecord(vid.encode(), orjson.dumps({"vehicle_id": vid, "seq": s, "ts": ts}), {}, ts, 0)
        for vid in ("A", "B")
        for s in range(200)
        for ts in [start + s * 1000]
    ]
    monkeypatch.setattr("bench._e2e.read_topic", lambda *_a, **_k: telemetry)

    def stats(vid: str, k: int) -> tuple[str, bytes, int, float]:
        begin = start + k * window
        doc = {"vehicle_id": vid, "window_start": begin, "window_end": begin + window}
        return ("st", orjson.dumps({**doc, "samples": 60}), 0, begin + window + 20_000.0)

    # Window 0: car A's stats never came, car B's came twice; window 1: once each.
    tail = [stats("B", 0), stats("B", 0), stats("A", 1), stats("B", 1)]
    r = _SizeResult(2, 200, sent=400)
    settings = cast("Any", SimpleNamespace(kafka_bootstrap="unused"))
    _collect(settings, {"input": "in", "stats": "st", "alerts": "al"}, tail, r)
    r.consumed = r.in_kafka
    assert r.window_expected == r.window_samples == 240  # netted, these hid both
    assert r.window_missing == 60
    assert r.lost == 60
    assert r.surplus_samples == 60
    assert not r.passed


def test_alert_latency_is_split_by_time_since_the_window_close() -> None:
    # Windows close 10 s past the minute; the 20 s from there are "after a close".
    r = _result(1, True)
    assert [s for s in range(60) if _after_close(s, r)] == list(range(10, 30))
    # Shorter windows (the toy e2e test's): every second is near a close.
    r.window_ms, r.grace_ms = 10_000, 2_000
    assert [s for s in range(10) if _after_close(s, r)] == list(range(10))
    assert list(_by_ten_seconds([(3, 7.0)], 10)) == ["00-09"]
    alerts = [(s, float(s)) for s in range(60)] + [(15, 900.0)]
    buckets = _by_ten_seconds(alerts)
    assert list(buckets) == ["00-09", "10-19", "20-29", "30-39", "40-49", "50-59"]
    assert buckets["10-19"] == 900.0
    assert buckets["50-59"] == 59.0
    assert _by_ten_seconds([(5, 1.0)])["10-19"] != _by_ten_seconds([(5, 1.0)])["10-19"]


def test_alert_latency_by_ten_seconds_of_the_run_shows_a_stall_where_it_was() -> None:
    alerts = [(s, 100.0) for s in range(30)]
    # Each bucket's edges: its first and last second count, the next one's first does not.
    alerts += [(0, 1000.0), (9, 1000.0), (10, 2000.0), (19, 2000.0), (29, 3000.0)]
    buckets = _by_ten_seconds_of_run(alerts, 30)
    assert buckets == {"000-009": 1000.0, "010-019": 2000.0, "020-029": 3000.0}
    # Records sent past the run's length are kept in a bucket of their own.
    buckets = _by_ten_seconds_of_run([*alerts, (30, 4000.0)], 30)
    assert buckets["030+"] == 4000.0
    assert buckets["020-029"] == 3000.0


def test_a_benchmark_slug_is_claimed_once_per_run(tmp_path: Path) -> None:
    run = _Run(
        cast("Any", None), tmp_path, _Load([], frozenset()), "r1", cast("Any", None),
        cast("Any", None),
    )  # fmt: skip
    assert run.claim("shared") == "bench-r1-shared"
    assert run.claim("ingest2") == "bench-r1-ingest2"
    with pytest.raises(BenchError, match="'shared' used twice"):
        run.claim("shared")


@pytest.mark.parametrize(
    ("now_s", "window_s", "wait_s"),
    [
        (1_767_225_600.0, 60, 40.0),  # at a window start
        (1_767_225_640.0, 60, 0.0),  # at the phase
        (1_767_225_640.5, 60, 59.5),  # just past it: the next window's
        (1_767_225_655.0, 60, 45.0),
        (1_767_225_603.0, 10, 7.0),  # 40 s into a 10 s window is its start
    ],
)
def test_each_size_starts_at_the_same_second_of_a_window(
    now_s: float, window_s: int, wait_s: float
) -> None:
    assert phase_wait_s(now_s, window_s) == pytest.approx(wait_s)


class _Service:
    """Stands in for an ingest process or a processing group; notes what was done to it."""

    def __init__(self, *_args: object, fail_start: bool = False) -> None:
        self.fail_start, self.started, self.stopped = fail_start, False, False
        roles = ("input", "stats", "alerts", "sessions", "shadow", "quarantine")
        self.topics = {r: f"t-{r}" for r in roles}

    def start(self) -> None:
        self.started = True
        if self.fail_start:
            msg = "processing could not start"
            raise HarnessError(msg)

    def stop(self) -> int:
        self.stopped = True
        return 0

    def crashes(self) -> int:
        return 0


def test_a_size_that_fails_to_start_stops_what_it_started_and_deletes_its_topics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = _Service()
    processing = _Service(fail_start=True)
    deleted: list[str] = []
    monkeypatch.setattr("bench._e2e.IngestProcess", lambda *_a, **_k: ingest)
    monkeypatch.setattr("bench._e2e.ProcessingGroup.create", lambda *_a, **_k: processing)
    monkeypatch.setattr("bench._e2e.create_topic", lambda *_a, **_k: None)
    monkeypatch.setattr("bench._e2e.default_rules", lambda *_a, **_k: None)
    monkeypatch.setattr("bench._e2e.delete_topics", lambda _b, prefix: deleted.append(prefix))
    settings = cast("Any", SimpleNamespace(kafka_bootstrap="unused"))
    with pytest.raises(HarnessError, match="could not start"):
        _run_size(settings, tmp_path, 10, 30)
    assert ingest.started
    assert ingest.stopped
    assert processing.stopped
    assert len(deleted) == 1
    assert deleted[0].startswith("bench-e2e-")
