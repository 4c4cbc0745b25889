"""The pure parts of ``fleetstream bench pipeline``: how the measured span is cut."""

from __future__ import annotations

import math

import pytest

from bench import BenchError
from bench._pipeline import Sample, check_outputs, measured_span

pytestmark = pytest.mark.unit


def test_the_span_starts_at_the_first_poll_that_saw_records() -> None:
    samples = [
        Sample(t=0.0, consumed=-1.0, cpu_s=0.5),  # not answering yet
        Sample(t=1.0, consumed=0.0, cpu_s=2.0),  # start-up
        Sample(t=2.0, consumed=500.0, cpu_s=2.4),
        Sample(t=3.0, consumed=1500.0, cpu_s=3.4),
        Sample(t=4.0, consumed=2500.0, cpu_s=4.4),
        Sample(t=5.0, consumed=2500.0, cpu_s=4.5),
    ]
    span = measured_span(samples, total=2500)
    assert (span.records, span.seconds) == (2000.0, 2.0)
    assert span.cpu_s == pytest.approx(2.0)
    assert span.rate == 1000.0


def test_records_before_the_clock_started_are_not_counted() -> None:
    samples = [Sample(0.0, 0.0, 0.0), Sample(1.0, 40.0, 1.0), Sample(2.0, 100.0, 1.5)]
    span = measured_span(samples, total=100)
    assert (span.records, span.seconds, span.coarse) == (60.0, 1.0, False)


def test_a_run_consumed_between_two_polls_is_timed_from_the_poll_before() -> None:
    samples = [Sample(0.0, -1.0, 0.0), Sample(1.0, 0.0, 1.0), Sample(1.5, 100.0, 1.2)]
    span = measured_span(samples, total=100)
    assert (span.records, span.seconds, span.coarse) == (100.0, 0.5, True)
    assert span.cpu_us_per_record == pytest.approx(2000.0)


def test_an_empty_span_has_no_rate_and_no_cost_per_record() -> None:
    span = measured_span([Sample(0.0, 100.0, 1.0)], total=100)
    assert span.rate == 0.0
    assert math.isnan(span.cpu_us_per_record)


def test_a_run_that_never_finished_is_an_error() -> None:
    with pytest.raises(BenchError, match="never show all 10"):
        measured_span([Sample(0.0, 0.0, 0.0), Sample(1.0, 9.0, 1.0)], total=10)


def test_a_span_below_the_cpu_clock_tick_is_charged_the_whole_process() -> None:
    samples = [Sample(0.0, 0.0, 2.0), Sample(0.2, 60.0, 2.5), Sample(0.4, 100.0, 2.5)]
    span = measured_span(samples, total=100)
    assert span.records == 40
    assert span.cpu_s == 2.5
    assert span.coarse


def test_outputs_read_back_must_equal_the_process_counters() -> None:
    counts = {"records_in": 100, "windows": 12, "alerts": 3, "quarantined": 0}
    check_outputs("rules", counts, {"stats": 12, "alerts": 3})
    # A read that gave up after its timeout returns what it had: that fails the run.
    with pytest.raises(BenchError, match="stats: 11 records read back, its counter says 12"):
        check_outputs("rules", counts, {"stats": 11, "alerts": 3})
    with pytest.raises(BenchError, match=r"\(rules \+ model\).*alerts: 4 records read back"):
        check_outputs("rules + model", counts, {"stats": 12, "alerts": 4})
