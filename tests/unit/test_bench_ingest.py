"""The pure parts of ``fleetstream bench ingest``: what counts as lost, how rates are taken."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from bench._ingest import (
    _distinct_rate,
    _fill,
    _ingest_loss,
    _IngestBridge,
    _Load,
    _median_of,
    _PeerBridge,
    _Result,
    _Run,
    _wait_distinct,
    clean_exit,
    paced_loss,
)
from bench._report import Report
from bench.errors import BenchError
from bench.harness import KafkaRecord

pytestmark = pytest.mark.unit

INGEST = "fleetstream ingest"
SOURCE = "quixstreams MQTTSource"


def _flood(
    name: str, rate: float, lost: int = 0, *, finished: bool = True, crashes: int = 0
) -> _Result:
    return _Result(
        name=name,
        delivered=1000 - lost,
        lost=lost if finished else None,
        duplicates=0,
        rate=rate,
        cpu_s=1.0,
        peak_rss_mb=50.0,
        publish_to_kafka_ms=[5.0],
        finished=finished,
        ingest=name != SOURCE and not name.startswith("naive"),
        crashes=crashes,
    )


def _run(floods: dict[str, list[_Result]], sub_after: _Result | None = None) -> Report:
    """Fill a report the way run_ingest does, from the floods of every bridge."""
    report = Report("ingest", {})
    everything = [f for runs in floods.values() for f in runs]
    sub = _flood("mosquitto_sub (C)", 45_000.0)
    results = {
        "warmup": floods["warmup"][0],
        "sub_before": sub,
        "sub_after": sub_after or sub,
        "ingest": _median_of(floods["ingest"]),
        "mqtt_source": _median_of(floods["source"]),
        "ingest2": floods["ingest2"][0],
        "naive": floods["naive"][0],
    }
    report.details["flood_rates"] = {
        INGEST: [r.rate for r in floods["ingest"]],
        SOURCE: [r.rate for r in floods["source"]],
    }
    _fill(report, results, None, everything)
    return report


def _floods(**changes: list[_Result]) -> dict[str, list[_Result]]:
    floods = {
        "warmup": [_flood("warm-up: fleetstream ingest (discarded)", 25_000.0)],
        "ingest": [_flood(INGEST, r) for r in (30_000.0, 40_000.0, 20_000.0)],
        "source": [_flood(SOURCE, 9_000.0)] * 3,
        "ingest2": [_flood("fleetstream ingest x2 (shared sub)", 30_000.0)],
        "naive": [_flood("naive paho + flush per message", 2_000.0)],
    }
    floods.update(changes)
    return floods


def _target(report: Report) -> tuple[bool, str]:
    found = next(t for t in report.targets if t["target"] == "ingest loses nothing")
    return found["met"], found["measured"]


def test_a_clean_run_loses_nothing() -> None:
    met, measured = _target(_run(_floods()))
    assert met
    assert measured == "lost 0"


def test_loss_in_a_flood_other_than_the_median_one_fails_the_target() -> None:
    # Before: only the median-rate flood's loss reached the target.
    slow = _flood(INGEST, 20_000.0, lost=1234)
    report = _run(_floods(ingest=[_flood(INGEST, 30_000.0), _flood(INGEST, 40_000.0), slow]))
    assert _median_of([slow, _flood(INGEST, 30_000.0), _flood(INGEST, 40_000.0)]) is not slow
    met, measured = _target(report)
    assert not met
    assert measured == "lost 1234"
    rows = {(r["subject"], r["metric"]): r["value"] for r in report.rows}
    assert rows[(INGEST, "flood 3 of 3 lost")] == 1234
    assert rows[(INGEST, "flood 1 of 3 lost")] == 0
    assert rows[(INGEST, "lost")] == 1234  # the bridge's row sums its floods


def test_loss_in_the_warm_up_fails_the_target() -> None:
    warm = _flood("warm-up: fleetstream ingest (discarded)", 25_000.0, lost=777)
    report = _run(_floods(warmup=[warm]))
    met, measured = _target(report)
    assert not met
    assert measured == "lost 777"
    rows = {(r["subject"], r["metric"]): r["value"] for r in report.rows}
    assert rows[(warm.name, "lost")] == 777


def test_an_unfinished_flood_that_is_not_the_median_fails_the_target() -> None:
    stuck = _flood(INGEST, 10_000.0, finished=False)
    report = _run(_floods(ingest=[_flood(INGEST, 30_000.0), stuck, _flood(INGEST, 40_000.0)]))
    met, measured = _target(report)
    assert not met
    assert "fleetstream ingest (flood 3)" in measured  # the warm-up is flood 1
    rows = {(r["subject"], r["metric"]): r["value"] for r in report.rows}
    assert math.isnan(rows[(INGEST, "flood 2 of 3 lost (stopped at cap)")])
    assert (INGEST, "lost") not in rows


def test_a_peer_losing_messages_is_reported_but_is_not_ingest_loss() -> None:
    lossy = [_flood(SOURCE, 9_000.0, lost=5), _flood(SOURCE, 9_000.0), _flood(SOURCE, 9_000.0)]
    report = _run(_floods(source=lossy))
    assert _target(report)[0]
    rows = {(r["subject"], r["metric"]): r["value"] for r in report.rows}
    assert rows[(SOURCE, "flood 1 of 3 lost")] == 5
    assert rows[(SOURCE, "lost")] == 5


def _ratio_target(report: Report, name: str) -> tuple[bool, str]:
    found = next(t for t in report.targets if t["target"] == name)
    return found["met"], found["measured"]


def test_ratios_against_clean_baselines_are_judged_on_the_rates() -> None:
    report = _run(_floods())  # median 30,000 against 9,000 and 45,000
    assert _ratio_target(report, "ingest >= 3x MQTTSource") == (True, "3.33x")
    assert _ratio_target(report, "ingest >= 0.5x mosquitto_sub") == (True, "0.67x")


def test_a_peer_that_crashed_or_stopped_in_any_flood_is_no_baseline() -> None:
    # A crashed peer is slower: the ratio would flatter ingest, so it is not met.
    crashed = [_flood(SOURCE, 9_000.0), _flood(SOURCE, 9_000.0, crashes=1), _flood(SOURCE, 9_000.0)]
    met, measured = _ratio_target(_run(_floods(source=crashed)), "ingest >= 3x MQTTSource")
    assert not met
    assert measured == f"3.33x, baseline invalid: {SOURCE} flood 2 crashed"
    stuck = [_flood(SOURCE, 9_000.0), _flood(SOURCE, 9_000.0), _flood(SOURCE, 5.0, finished=False)]
    met, measured = _ratio_target(_run(_floods(source=stuck)), "ingest >= 3x MQTTSource")
    assert not met
    assert measured.endswith(f"{SOURCE} flood 3 stopped before all arrived")


def test_a_mosquitto_sub_run_that_lost_messages_is_no_baseline() -> None:
    short = _flood("mosquitto_sub (C)", 45_000.0, lost=300)
    met, measured = _ratio_target(_run(_floods(), sub_after=short), "ingest >= 0.5x mosquitto_sub")
    assert not met
    assert measured == "0.67x, baseline invalid: mosquitto_sub (C) after lost 300"


def test_ingest_loss_sums_every_ingest_flood() -> None:
    floods = [
        _flood("warm-up: fleetstream ingest (discarded)", 1.0, lost=1),
        _flood(INGEST, 1.0, lost=2),
        _flood(SOURCE, 1.0, lost=100),
        _flood("fleetstream ingest x2 (shared sub)", 1.0, lost=4),
        _flood(INGEST, 1.0, finished=False),
    ]
    assert _ingest_loss(floods) == (7, ["fleetstream ingest (flood 5)"])


def _record(vid: str, seq: int, appended_ms: int) -> KafkaRecord:
    value = orjson.dumps({"vehicle_id": vid, "seq": seq})
    return KafkaRecord(vid.encode(), value, {}, appended_ms, 0)


def test_the_flood_rate_counts_distinct_messages_not_duplicates() -> None:
    # 1,000 messages over 999 ms, then each again within the same span.
    once = [_record("bnc-1", i, i) for i in range(1000)]
    assert _distinct_rate(once) == pytest.approx(1000.0)
    copies = [_record("bnc-1", i, i + 1) for i in range(999)]
    assert _distinct_rate(once + copies) == pytest.approx(1000.0)  # was 1,999 msg/s


def test_duplicates_do_not_end_the_flood_wait_early() -> None:
    want = frozenset(("bnc-1", i) for i in range(10))
    # The topic fills up in steps: 8 distinct + 2 copies first, then the 2 missing ones.
    steps = [
        [
            *(_record("bnc-1", i, i) for i in range(8)),
            _record("bnc-1", 0, 9),
            _record("bnc-1", 1, 9),
        ],
        [
            *(_record("bnc-1", i, i) for i in range(10)),
            _record("bnc-1", 0, 9),
            _record("bnc-1", 1, 9),
        ],
    ]
    asked: list[int] = []

    def wait(target: int, _cap_s: float) -> tuple[int, bool]:
        asked.append(target)
        return len(steps[min(len(asked), 2) - 1]), True

    def read(count: int) -> list[KafkaRecord]:
        return next(s for s in steps if len(s) == count)

    records, finished = _wait_distinct(wait, read, want, 10, cap_s=60)
    assert finished
    assert asked == [10, 12]  # the offsets reached 10 with 2 of them copies: waited for 2 more
    assert len(records) == 12


def test_a_flood_whose_missing_messages_never_come_is_unfinished() -> None:
    want = frozenset(("bnc-1", i) for i in range(3))
    topic = [_record("bnc-1", 0, 0), _record("bnc-1", 0, 1), _record("bnc-1", 1, 2)]

    def wait(target: int, _cap_s: float) -> tuple[int, bool]:
        return len(topic), len(topic) >= target  # stalls at 3 records

    records, finished = _wait_distinct(wait, lambda _n: topic, want, 3, cap_s=60)
    assert not finished
    assert records == topic


def test_an_ingest_crash_fails_the_target_even_without_loss() -> None:
    crashed = _flood(INGEST, 20_000.0, crashes=1)
    report = _run(_floods(ingest=[_flood(INGEST, 30_000.0), _flood(INGEST, 40_000.0), crashed]))
    met, measured = _target(report)
    assert not met
    assert "crashed: ['fleetstream ingest (flood 4)']" in measured
    rows = {(r["subject"], r["metric"]): r["value"] for r in report.rows}
    assert rows[(INGEST, "crashes (all floods)")] == 1
    # A peer that crashed is reported, but it is not ingest's failure.
    peer = [_flood(SOURCE, 9_000.0, crashes=2), *[_flood(SOURCE, 9_000.0)] * 2]
    report = _run(_floods(source=peer))
    assert _target(report)[0]
    rows = {(r["subject"], r["metric"]): r["value"] for r in report.rows}
    assert rows[(SOURCE, "crashes (all floods)")] == 2


def test_a_peer_stopped_by_sigterm_is_clean_other_exits_are_crashes(tmp_path: Path) -> None:
    assert clean_exit(0)
    assert clean_exit(-signal.SIGTERM)
    assert not clean_exit(1)
    assert not clean_exit(-signal.SIGKILL)

    def peer(args: list[str], log: str = "") -> _PeerBridge:
        bridge = _PeerBridge(cast("Any", None), tmp_path, "peer", "naive")
        bridge.log_path = tmp_path / f"peer-{len(list(tmp_path.iterdir()))}.log"
        bridge.log_path.write_text(log)
        bridge.proc = subprocess.Popen(args)
        return bridge

    ok = peer(["sleep", "30"])
    ok.stop()
    assert ok.crashes() == 0
    died = peer(["sh", "-c", "exit 3"])
    assert died.proc is not None
    died.proc.wait()  # ended before the bench stopped it
    died.stop()
    assert died.crashes() == 1
    ready = tmp_path / "trapped"
    unclean = peer(["sh", "-c", f"trap 'exit 2' TERM; touch {ready}; sleep 30 & wait"])
    while not ready.exists():  # SIGTERM before the trap would end it by the signal
        time.sleep(0.01)
    unclean.stop()
    assert unclean.crashes() == 1
    traced = peer(["sleep", "30"], "Traceback (most recent call last):\n  boom\n")
    traced.stop()
    assert traced.crashes() == 1


class _FakeIngest:
    def __init__(self, crashes: int, *, hangs: bool = False) -> None:
        self._crashes, self.hangs, self.stopped = crashes, hangs, False

    def stop(self) -> int:
        self.stopped = True
        if self.hangs:
            raise subprocess.TimeoutExpired("ingest", 40)
        return 0

    def crashes(self) -> int:
        return self._crashes + self.hangs


def test_an_ingest_bridge_reports_its_crashes_and_stops_every_process(tmp_path: Path) -> None:
    bridge = _IngestBridge(cast("Any", None), tmp_path, "fleetstream ingest x2", 2)
    procs = [_FakeIngest(0, hangs=True), _FakeIngest(1)]
    bridge.procs = cast("Any", procs)
    bridge.stop()
    assert all(p.stopped for p in procs)
    assert bridge.crashes() == 2  # the hung stop and the other's exit or traceback


def test_paced_loss_counts_sent_messages_that_never_arrived() -> None:
    sent = {("lat-1", 0), ("lat-1", 1), ("lat-2", 0)}
    received = [orjson.dumps({"vehicle_id": "lat-1", "seq": 0, "ts": 1})] * 2
    received.append(b"not json")
    assert paced_loss(sent, received) == 2
    assert paced_loss(sent, [orjson.dumps({"vehicle_id": v, "seq": q}) for v, q in sent]) == 0


def test_a_paced_phase_that_lost_messages_or_stopped_fails_the_target() -> None:
    # Before: p50/p99 over whatever arrived, loss and an unfinished wait unseen.
    lossy = _flood(INGEST, 30_000.0)
    lossy.paced_lost = 3
    report = _run(_floods(ingest=[lossy, _flood(INGEST, 40_000.0), _flood(INGEST, 20_000.0)]))
    met, measured = _target(report)
    assert not met
    assert measured == "lost 3"
    rows = {(r["subject"], r["metric"]): r["value"] for r in report.rows}
    assert rows[(INGEST, "lost @1000/s (paced, all floods)")] == 3
    stuck = _flood("fleetstream ingest x2 (shared sub)", 30_000.0)
    stuck.paced_finished = False
    met, measured = _target(_run(_floods(ingest2=[stuck])))
    assert not met
    assert "fleetstream ingest x2 (shared sub) (flood 8, paced)" in measured


class _FailingBridge:
    name = "a bridge that fails to start"

    def __init__(self) -> None:
        self.stopped = False

    def start(self, _prefix: str, _topic: str) -> None:
        msg = "ingest did not connect within 30 s"  # after its process was started
        raise BenchError(msg)

    def processes(self) -> list[Any]:
        return []

    def stop(self) -> None:
        self.stopped = True

    def crashes(self) -> int:
        return 0

    def log(self) -> str:
        return ""


class _Admin:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete_topics(self, topics: list[str]) -> None:
        self.deleted += topics


def test_a_bridge_that_fails_to_start_is_stopped_and_its_topic_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bench._ingest.create_topic", lambda *_a, **_k: None)
    admin = _Admin()
    settings = cast("Any", type("S", (), {"kafka_bootstrap": "unused"})())
    run = _Run(
        settings, tmp_path, _Load([], frozenset()), "r1", cast("Any", admin), cast("Any", None)
    )
    bridge = _FailingBridge()
    with pytest.raises(BenchError, match="did not connect"):
        run.bridge(bridge, "ingest0")
    assert bridge.stopped
    assert admin.deleted == ["bench-r1-ingest0-telemetry"]
