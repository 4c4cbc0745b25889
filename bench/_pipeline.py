"""``fleetstream bench pipeline``: processing throughput from a pre-filled topic.

The input topic is filled before anything measured starts, so the figures are the
consumer side only. Three subjects read the same records:

- a bare confluent-kafka consumer (``read_committed``, the fetch settings Quix uses) that
  only deserialises every value with orjson: the machine's upper bound;
- one ``python -m processing`` process with its default settings (exactly-once), timed
  from the first record it consumed to the last, by polling its records-in counter;
- the pipeline's own functions replayed offline (no Kafka, no Quix), for reference.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench._report import Report, row
from bench.errors import BenchError
from bench.harness import (
    ProcessingRun,
    as_rows,
    broker_footprint,
    create_topic,
    delete_topics,
    produce,
    promote_detector,
    read_topic,
)
from fleetstream import infra
from models.errors import DataError, ModelError
from simulator import FleetConfig, iter_records

_log = logging.getLogger(__name__)

TARGET_RECORDS_S = 20_000.0
PARTITIONS = 4  # like production (processing_partitions)
# Quix's internal consumer asks for fetches this often; the baseline does the same.
CONSUMER_FETCH_CONFIG: dict[str, Any] = {"fetch.queue.backoff.ms": 100}
POLL_S = 0.2
STARTUP_TIMEOUT_S = 120.0
STALL_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll of the process under test."""

    t: float  # time.monotonic()
    consumed: float  # its records-in counter
    cpu_s: float  # user + system CPU seconds so far


@dataclass(frozen=True, slots=True)
class Span:
    """Throughput over the measured part of a run."""

    records: float
    seconds: float
    cpu_s: float
    coarse: bool = False  # all records came between two polls: timed from the poll before

    @property
    def cpu_us_per_record(self) -> float:
        """CPU microseconds per record (NaN for an empty span)."""
        return 1e6 * self.cpu_s / self.records if self.records else math.nan

    @property
    def busy_pct(self) -> float:
        """CPU seconds per wall second, in percent of one core (NaN for an empty span)."""
        return 100.0 * self.cpu_s / self.seconds if self.seconds > 0 else math.nan

    @property
    def rate(self) -> float:
        """Records per second (0 for an empty span)."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


def measured_span(samples: Iterable[Sample], total: int) -> Span:
    """The span from the first poll that saw records consumed to the first that saw all.

    Start-up (imports, group join, state recovery) is excluded: records consumed before
    the first non-zero poll are subtracted, so the rate is what was consumed between the
    two polls divided by the time between them.

    When one poll saw none and the next saw all (a tiny run), the span starts at the poll
    before (``coarse``): it then holds some start-up, so the rate is a lower bound.

    Raises:
        BenchError: The samples never show any record, or never all ``total``.
    """
    first: Sample | None = None
    before: Sample | None = None
    for sample in samples:
        if first is None and sample.consumed > 0:
            first = sample
        if first is not None and sample.consumed >= total:
            if sample is first and before is not None:
                span = Span(
                    sample.consumed - max(before.consumed, 0.0),
                    sample.t - before.t,
                    sample.cpu_s - before.cpu_s,
                    coarse=True,
                )
            else:
                span = Span(
                    sample.consumed - first.consumed,
                    sample.t - first.t,
                    sample.cpu_s - first.cpu_s,
                )
            if span.records > 0 and span.cpu_s <= 0:
                # Below the CPU clock's 10 ms tick (or the consumed count showed up one
                # poll late): charge the whole process so far, an upper bound, not zero.
                span = Span(span.records, span.seconds, sample.cpu_s, coarse=True)
            return span
        if first is None:
            before = sample
    msg = f"the samples never show all {total} records consumed"
    raise BenchError(msg)


def simulate(prefix: str, vehicles: int, seconds: int, seed: int = 7) -> list[dict[str, Any]]:
    """1 Hz v1 telemetry with anomalies, ending at today's 00:00 UTC.

    Recent, so topic retention keeps it; the same time of day every run, so every run
    (and every day) gets the same drives and anomalies and the counts stay comparable.
    """
    day_ms = 86_400_000
    config = FleetConfig(
        vehicles=vehicles,
        duration_s=seconds,
        seed=seed,
        # Several episodes per car-day so even a short run raises some alerts.
        anomaly_rate=24.0,
        id_prefix=prefix,
        start_ms=time.time_ns() // 1_000_000 // day_ms * day_ms - seconds * 1000,
    )
    return list(iter_records(config))


def bare_consume(bootstrap: str, topic: str, partitions: int, total: int) -> Span:
    """Read ``total`` records with a plain consumer that only deserialises each value.

    Timed from the first record received to the last, like the processing process.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            **CONSUMER_FETCH_CONFIG,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    count = first = 0
    started = cpu0 = 0.0
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while count < total:
            batch = consumer.consume(500, 1.0)
            if not batch:
                if time.monotonic() > deadline:
                    msg = f"bare consumer read {count} of {total} records of {topic}"
                    raise BenchError(msg)
                continue
            for message in batch:
                if message.error() is None:
                    orjson.loads(message.value())
                    count += 1
            if not started:
                # Like the process's first poll: what arrived before the clock is not timed.
                started, cpu0, first = time.monotonic(), time.process_time(), count
            deadline = time.monotonic() + STALL_TIMEOUT_S
        return Span(count - first, time.monotonic() - started, time.process_time() - cpu0)
    finally:
        consumer.close()


def offline_replay(payloads: list[bytes]) -> tuple[Span, int]:
    """The pipeline's pure functions over the payloads, no Kafka: parse+validate, rules, windows.

    Sessions, the model and the Quix runtime are not in it; see
    ``models.replay.replay_records``.

    Returns:
        The span, and how many closed windows have model features (the windows a
        promoted model scores, with the rules' baseline).
    """
    from models.replay import replay_records, window_feature_rows  # noqa: PLC0415 - scikit-learn
    from processing.pipeline import parse  # noqa: PLC0415 - pulls in quixstreams

    began, cpu0 = time.perf_counter(), time.process_time()
    replay = replay_records(parse(p) for p in payloads)
    span = Span(replay.records, time.perf_counter() - began, time.process_time() - cpu0)
    return span, len(window_feature_rows(replay.windows))


def _peak_rss_mib(pid: int, sampled: float) -> float:
    # VmHWM is the kernel's true peak; sampling could miss a short spike.
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text("utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return sampled


def watch(run: ProcessingRun, total: int) -> tuple[list[Sample], float, float]:
    """Poll the process until it consumed ``total`` records.

    Returns:
        The samples, the start-up seconds (start to first record seen) and peak RSS (MiB).

    Raises:
        BenchError: The process exited, did not start consuming, or stalled.
    """
    proc = run.proc
    if proc is None:
        msg = "processing was not started"
        raise BenchError(msg)
    ps = psutil.Process(proc.pid)
    began = time.monotonic()
    samples: list[Sample] = []
    peak = 0.0
    first_at: float | None = None
    last_progress = began
    next_log = began + 5.0
    while True:
        if proc.poll() is not None:
            msg = f"processing exited with {proc.returncode} during the benchmark:\n{run.log()}"
            raise BenchError(msg)
        consumed = run.records_in()
        now = time.monotonic()
        try:
            cpu = ps.cpu_times()
            peak = max(peak, ps.memory_info().rss / 2**20)
        except psutil.Error:
            continue  # exited between the poll and here: reported on the next turn
        if samples and consumed > samples[-1].consumed:
            last_progress = now
        samples.append(Sample(now, max(consumed, 0.0), cpu.user + cpu.system))
        if first_at is None and consumed > 0:
            first_at = now
        if consumed >= total:
            return samples, (first_at or now) - began, _peak_rss_mib(proc.pid, peak)
        if first_at is None and now - began > STARTUP_TIMEOUT_S:
            msg = f"processing consumed nothing within {STARTUP_TIMEOUT_S:.0f} s:\n{run.log()}"
            raise BenchError(msg)
        if first_at is not None and now - last_progress > STALL_TIMEOUT_S:
            msg = (
                f"processing stalled at {consumed:.0f} of {total} records "
                f"for {STALL_TIMEOUT_S:.0f} s:\n{run.log()}"
            )
            raise BenchError(msg)
        if now >= next_log:
            _log.info("processing: %.0f of %d records consumed", max(consumed, 0.0), total)
            next_log = now + 5.0
        time.sleep(POLL_S)


def _counter(metrics: dict[str, float], name: str) -> int:
    return round(sum(v for k, v in metrics.items() if k.split("{")[0] == name))


# Labels of the processing runs, in the order they run.
RULES, WITH_MODEL, RULES_AGAIN = "rules", "rules + model", "rules, again"


@dataclass(frozen=True, slots=True)
class Measured:
    """One processing process timed over the whole topic, and what it wrote."""

    label: str  # RULES, WITH_MODEL or RULES_AGAIN
    span: Span
    startup_s: float
    peak_mib: float
    cpu_s_total: float
    counts: dict[str, int]
    outputs: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """The run's JSON details."""
        return {
            "records_in": self.counts["records_in"],
            "windows_counted": self.counts["windows"],
            "alerts_counted": self.counts["alerts"],
            "quarantined": self.counts["quarantined"],
            "outputs": self.outputs,
            "processing_measured": {
                "records": self.span.records,
                "seconds": round(self.span.seconds, 3),
                "cpu_s": round(self.span.cpu_s, 3),
                "cpu_s_total": round(self.cpu_s_total, 3),
                "coarse": self.span.coarse,
            },
        }


def run_pipeline(
    *, vehicles: int, seconds: int, partitions: int = PARTITIONS, model: bool = True
) -> Report:
    """Fill a private topic, then time a bare consumer and processing on it.

    Processing runs over the same records, each run in its own consumer group: with the
    rules alone, then (``model``) with a promoted consumption model as well, which scores
    every driving window of a car with a baseline, then with the rules alone again.

    Args:
        vehicles: Cars in the load.
        seconds: Seconds of 1 Hz telemetry per car.
        partitions: Partitions of the input topic (and of processing's own topics).
        model: Also time processing with a promoted model (trained here first).

    Raises:
        BenchError: Kafka is not running, or a process exited, stalled or lost records.
    """
    settings = infra.InfraSettings()
    bootstrap = settings.kafka_bootstrap
    if not any(s.name == "kafka" and s.healthy for s in infra.status(settings)):
        msg = f"Kafka does not answer on {bootstrap}; start it with `fleetstream infra up`"
        raise BenchError(msg)
    report = Report(
        "pipeline",
        {"vehicles": vehicles, "seconds": seconds, "partitions": partitions, "model": model},
    )
    report.details["broker_at_start"] = broker_footprint(bootstrap)
    prefix = f"benchpipe{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="fleetstream-bench-pipeline-"))
    env = {"FLEETSTREAM_PROCESSING_PARTITIONS": str(partitions)}
    runs = [(RULES, ProcessingRun(bootstrap, prefix, workdir, extra_env=env))]
    if model:
        # Rules, model, rules again: drift between runs shows as a gap between the two
        # rules runs instead of passing for the model's cost.
        runs += [
            (
                WITH_MODEL,
                ProcessingRun(
                    bootstrap,
                    prefix,
                    workdir,
                    group=f"{prefix}-model-group",
                    model_dir=workdir / "registry",
                    extra_env=env,
                ),
            ),
            (
                RULES_AGAIN,
                ProcessingRun(
                    bootstrap, prefix, workdir, group=f"{prefix}-again-group", extra_env=env
                ),
            ),
        ]
    try:
        return _measure(report, runs, vehicles, seconds, partitions)
    finally:
        for _, run in runs:
            if run.proc is not None and run.proc.poll() is None:
                try:
                    run.stop()
                except Exception:  # noqa: BLE001 - a stuck stop must not leave it running
                    with contextlib.suppress(Exception):
                        run.kill9()
        delete_topics(bootstrap, prefix)
        shutil.rmtree(workdir, ignore_errors=True)


def check_outputs(label: str, counts: dict[str, int], outputs: dict[str, int]) -> None:
    """The stats and alerts read back must equal the process's own counters.

    With exactly-once processing every counted window and alert is in its topic once;
    fewer read back (a lost write, or a read that gave up after its timeout) or more (a
    write counted once but committed twice) is a failed measurement, not a figure.

    Args:
        label: The run's name in the report.
        counts: The process's counters (``windows``, ``alerts``).
        outputs: Records read back per output role (``stats``, ``alerts``).

    Raises:
        BenchError: A count read back differs from the process's counter.
    """
    wrong = [
        f"{role}: {outputs[role]} records read back, its counter says {counts[counter]}"
        for role, counter in (("stats", "windows"), ("alerts", "alerts"))
        if outputs[role] != counts[counter]
    ]
    if wrong:
        msg = f"processing ({label}) outputs differ from its counters: " + "; ".join(wrong)
        raise BenchError(msg)


def _time_run(run: ProcessingRun, label: str, total: int, model: str | None = None) -> Measured:
    """Start one processing process, time it over ``total`` records, stop it, count outputs.

    Args:
        run: The deployment to start.
        label: Its name in the report.
        total: Records in the input topic.
        model: The model version it must have loaded (None: rules only).

    Raises:
        BenchError: It exited, stalled, miscounted, or ran without the model.
    """
    _log.info("starting python -m processing (%s, %s)", run.group, label)
    run.start()
    samples, startup_s, peak_mib = watch(run, total)
    span = measured_span(samples, total)
    _log.info("processing (%s): %.0f records/s", label, span.rate)
    time.sleep(3)  # one commit interval and more: the last checkpoint commits
    metrics = run.metrics()
    if model is not None and (
        metrics.get(f'fleetstream_processing_model_info{{version="{model}"}}') != 1.0
        or metrics.get("fleetstream_processing_models_refused_total", 0.0) > 0
    ):
        # A refused model leaves processing on the rules: the run would be mislabelled.
        msg = f"processing ({label}) did not run with model {model}:\n{run.log()}"
        raise BenchError(msg)
    exit_code = run.stop()
    if exit_code != 0:
        msg = f"processing ({label}) exited with {exit_code} on SIGTERM:\n{run.log()}"
        raise BenchError(msg)
    counts = {name: _counter(metrics, f"fleetstream_processing_{name}_total") for name in (
        "records_in", "windows", "alerts", "quarantined"
    )}  # fmt: skip
    if counts["records_in"] != total:
        msg = (
            f"processing ({label}) counted {counts['records_in']} records in, {total} were produced"
        )
        raise BenchError(msg)
    bootstrap = run.bootstrap
    outputs = {
        role: len(read_topic(bootstrap, run.topics[role], expect=expect, timeout_s=60, settle_s=1))
        for role, expect in (("stats", counts["windows"]), ("alerts", counts["alerts"]))
    }
    check_outputs(label, counts, outputs)
    # No counter for sessions (a short run may have none): read until the topic is quiet.
    outputs["sessions"] = len(read_topic(bootstrap, run.topics["sessions"], expect=0, settle_s=3))
    return Measured(label, span, startup_s, peak_mib, samples[-1].cpu_s, counts, outputs)


def _measure(
    report: Report,
    runs: list[tuple[str, ProcessingRun]],
    vehicles: int,
    seconds: int,
    partitions: int,
) -> Report:
    first = runs[0][1]
    bootstrap, topic = first.bootstrap, first.topics["input"]
    records = simulate(first.prefix, vehicles, seconds)
    rows = as_rows(records)
    total = len(rows)
    _log.info("filling %s (%d partitions) with %d records", topic, partitions, total)
    create_topic(bootstrap, topic, partitions)
    produce(bootstrap, topic, rows)
    version = None
    registry = next((run.model_dir for _, run in runs if run.model_dir is not None), None)
    if registry is not None:
        try:
            version = promote_detector(registry)
        except (DataError, ModelError) as exc:
            msg = f"could not train the benchmark's model: {exc}"
            raise BenchError(msg) from exc
        _log.info("promoted model %s", version)

    load_before = os.getloadavg()
    offline, model_windows = offline_replay([value for _, value, _ in rows])
    _log.info("offline replay: %.0f records/s", offline.rate)
    bare = [bare_consume(bootstrap, topic, partitions, total)]
    _log.info("bare consumer: %.0f records/s", bare[0].rate)
    measured = [
        _time_run(run, label, total, version if run.model_dir else None) for label, run in runs
    ]
    # A second baseline after the subjects: drift on a shared machine shows as a spread.
    bare.append(bare_consume(bootstrap, topic, partitions, total))
    load_after = os.getloadavg()

    base_rate = sum(b.rate for b in bare) / len(bare)
    baseline = ("bare consumer", base_rate)
    # The bare consumer's CPU includes librdkafka's threads, as the process's does.
    bare_cpu = ("bare consumer", sum(b.cpu_us_per_record for b in bare) / len(bare))
    report.add(
        row("bare consumer (read_committed, orjson only)", "throughput", base_rate, "records/s")
    )
    for m in measured:
        subject = f"processing ({m.label})"
        report.add(
            row(f"{subject}, 1 process, exactly-once", "throughput", m.span.rate, "records/s",
                baseline),
            row(subject, "CPU per record", m.span.cpu_us_per_record, "µs", bare_cpu),
            row(subject, "CPU busy", m.span.busy_pct, "% of one core"),
            row(subject, "peak RSS", m.peak_mib, "MiB"),
            row(subject, "start-up to first record", m.startup_s, "s"),
            row(subject, "stats records out", m.outputs["stats"], "records"),
            row(subject, "alerts out", m.outputs["alerts"], "records"),
            row(subject, "sessions out", m.outputs["sessions"], "records"),
        )  # fmt: skip
    report.add(
        row("offline replay (no Kafka, no Quix, no sessions, no model)", "throughput",
            offline.rate, "records/s", baseline),
        row("offline replay", "windows a model scores", model_windows, "windows"),
    )  # fmt: skip
    # The target covers every detector, so it is judged on the run with the model.
    judged = next((m for m in measured if m.label == WITH_MODEL), measured[0])
    others = "".join(
        f"; {m.label}: {m.span.rate:,.0f} records/s" for m in measured if m is not judged
    )
    report.check(
        "pipeline ≥ 20,000 records/s per process",
        f"≥ {TARGET_RECORDS_S:,.0f} records/s",
        f"{judged.span.rate:,.0f} records/s with {judged.label} "
        f"({judged.span.rate / base_rate:.2f}x bare consumer){others}",
        judged.span.rate >= TARGET_RECORDS_S,
    )
    report.details.update(
        {
            "records": total,
            "topic_prefix": first.prefix,
            "model_version": version,
            "runs": {m.label: m.as_dict() for m in measured},
            "bare_consumer_runs_records_s": [round(b.rate) for b in bare],
            "offline_replay": {
                "records": offline.records,
                "seconds": round(offline.seconds, 3),
                "windows_with_model_features": model_windows,
            },
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "method": (
                f"records-in counter polled every {POLL_S} s; rate = records consumed between "
                "the first poll that saw any and the first that saw all, over the time "
                "between those polls (start-up excluded); each processing run is its own "
                "consumer group over the same records"
            ),
        }
    )
    return report
