"""The pure parts of ``fleetstream bench ingest``: what counts as lost, how rates are taken."""

from __future__ import annotations

import math

import pytest

from bench._ingest import _fill, _ingest_loss, _median_of, _Result
from bench._report import Report

pytestmark = pytest.mark.unit

INGEST = "fleetstream ingest"
SOURCE = "quixstreams MQTTSource"


def _flood(name: str, rate: float, lost: int = 0, *, finished: bool = True) -> _Result:
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
    )


def _run(floods: dict[str, list[_Result]]) -> Report:
    """Fill a report the way run_ingest does, from the floods of every bridge."""
    report = Report("ingest", {})
    everything = [f for runs in floods.values() for f in runs]
    sub = _flood("mosquitto_sub (C)", 45_000.0)
    results = {
        "warmup": floods["warmup"][0],
        "sub_before": sub,
        "sub_after": sub,
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


def test_ingest_loss_sums_every_ingest_flood() -> None:
    floods = [
        _flood("warm-up: fleetstream ingest (discarded)", 1.0, lost=1),
        _flood(INGEST, 1.0, lost=2),
        _flood(SOURCE, 1.0, lost=100),
        _flood("fleetstream ingest x2 (shared sub)", 1.0, lost=4),
        _flood(INGEST, 1.0, finished=False),
    ]
    assert _ingest_loss(floods) == (7, ["fleetstream ingest (flood 5)"])
