"""The ``fleetstream train`` and ``fleetstream backtest`` workflows, with progress display."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models import registry
from models.dataset import LABEL_COLUMNS, iter_records, load_labels, load_telemetry
from models.errors import DataError
from models.feedback import feedback_labels
from models.replay import Replay, replay_records, window_alerts, window_feature_rows
from models.report import write_report
from models.training import TrainResult, label_windows, train
from processing.detectors import SensorGlitch
from processing.evaluate import KindScore, evaluate

_log = logging.getLogger("models")


@contextmanager
def _progress(show: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),  # stdout stays the result (pipe-able)
        disable=not show,
    )
    with progress:
        yield progress


def _load(data: str, progress: Progress) -> pa.Table:
    task = progress.add_task("reading data", total=None)
    table = load_telemetry(data)
    progress.update(task, total=table.num_rows, completed=table.num_rows)
    if table.num_rows == 0:
        msg = f"no telemetry rows in {data}"
        raise DataError(msg)
    return table


def _replay(
    table: pa.Table, progress: Progress, odometer_resolution_km: float, window_ms: int
) -> Replay:
    task = progress.add_task("replaying through detectors", total=table.num_rows)
    result = replay_records(
        iter_records(table),
        window_ms,
        tick=lambda n: progress.update(task, completed=n),
        glitch=SensorGlitch(odometer_resolution_km),
    )
    progress.update(task, completed=table.num_rows)
    return result


def held_out(
    labels: pd.DataFrame,
    alerts: Sequence[Mapping[str, Any]],
    since_ms: int | None,
    window_ms: int = 60_000,
) -> dict[str, KindScore]:
    """Event-level scores of the labels and alerts of the time from ``since_ms`` on.

    A label is held out when an alert from ``since_ms`` on could match it (it ends no more
    than evaluate's slack of 2 windows before), and an alert when it is from then on or
    matches a held-out label: an episode that starts before the cut and is caught after it
    is detected, not a false alarm plus a dropped label, and one caught just before the
    cut is detected, not missed. "From ``since_ms`` on" means ``ts >= since_ms - 1`` for
    alerts: a window's alert carries its window's end - 1, and the held-out windows are
    those ending at or after ``since_ms`` (:func:`models.training.split_by_time`).

    Args:
        labels: Ground-truth episodes (``load_labels``).
        alerts: Alert records (raised and cleared).
        since_ms: The cut (``training_data.test_from``); None scores all time.
        window_ms: Window length, for evaluate's matching slack.
    """
    rows: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in labels.to_dict("records")
    ]
    if since_ms is not None:
        first = since_ms - 1
        slack = 2 * window_ms
        rows = [r for r in rows if r["end_ts"] + slack >= first]
        kept: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            kept[(r["vehicle_id"], r["kind"])].append(r)
        alerts = [
            a
            for a in alerts
            if a["ts"] >= first
            or any(
                r["start_ts"] <= a["ts"] <= r["end_ts"] + slack
                for r in kept.get((a["vehicle_id"], a["kind"]), ())
            )
        ]
    return evaluate(rows, alerts, window_ms=window_ms)


@dataclass(frozen=True, slots=True)
class TrainOutcome:
    """Where ``fleetstream train`` put its artifact and what it measured."""

    folder: Path
    result: TrainResult
    model_events: dict[str, KindScore] | None
    rule_events: dict[str, KindScore] | None


def _feedback_frames(
    feedback: Sequence[Mapping[str, Any]] | None, window_ms: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not feedback:
        empty = pd.DataFrame(columns=LABEL_COLUMNS)
        return empty, empty
    return feedback_labels(feedback, window_ms)


def run_train(
    data: str,
    labels_path: Path | None,
    out: Path,
    *,
    seed: int = 0,
    show_progress: bool = True,
    version: str | None = None,
    feedback: Sequence[Mapping[str, Any]] | None = None,
    feedback_source: str | None = None,
    odometer_resolution_km: float = SensorGlitch.ODOMETER_RESOLUTION_KM,
    window_ms: int = 60_000,
) -> TrainOutcome:
    """Load, replay, featurise, train, compare, calibrate, save and report.

    ``feedback`` (``vehicle-alerts.feedback`` records) adds window labels: acknowledged
    ``high_consumption`` alerts mark their windows anomalous, false positives mark them
    normal (over any label file). Event-level scores come from the label file alone:
    feedback episodes would count the file's episodes again, and, made from the rules'
    own alerts, score the rules against themselves. With feedback only there are none.
    ``odometer_resolution_km`` is the pipeline's setting of that name, for the per-record
    rules' held-out scores. ``window_ms`` is the
    pipeline's window length (``FLEETSTREAM_PROCESSING_WINDOW_S``): the features are
    those of windows of that length, and it is saved in the metadata, so a pipeline
    with other windows refuses the model.

    Raises:
        DataError: Unreadable or insufficient data or labels.
    """
    file_labels = load_labels(labels_path) if labels_path is not None else None
    with _progress(show_progress) as progress:
        table = _load(data, progress)
        replayed = _replay(table, progress, odometer_resolution_km, window_ms)
        frame = pd.DataFrame(window_feature_rows(replayed.windows))
        if frame.empty:
            msg = "no driving windows in the data; nothing to train on"
            raise DataError(msg)
        confirmed, rejected = _feedback_frames(feedback, window_ms)
        labels = file_labels
        if not confirmed.empty:
            labels = confirmed if labels is None else pd.concat([labels, confirmed])
        actual = label_windows(frame, labels) if labels is not None else None
        relabelled_normal = 0
        if actual is not None and not rejected.empty:
            wrong = label_windows(frame, rejected)
            relabelled_normal = int((actual & wrong).sum())
            actual = actual & ~wrong
        fit_task = progress.add_task("fitting models", total=None)
        result = train(frame, actual, seed=seed, step=lambda _n: progress.advance(fit_task))
        progress.update(fit_task, total=len(result.candidates), completed=len(result.candidates))
    chosen = result.chosen
    metadata: dict[str, Any] = {
        "family": chosen.family.name,
        "features": list(chosen.family.features),
        "score": chosen.family.score,
        "threshold": chosen.threshold,
        "window_ms": window_ms,
        "seed": seed,
        "training_data": {
            "source": data,
            "labels": str(labels_path) if labels_path else None,
            "feedback": None
            if feedback is None
            else {
                "source": feedback_source,
                "records": len(feedback),
                "confirmed_alerts": len(confirmed),
                "false_positive_alerts": len(rejected),
                "windows_relabelled_normal": relabelled_normal,
            },
            "telemetry_rows": table.num_rows,
            "windows": len(frame),
            "first_ts": int(table.column("ts")[0].as_py()),
            "last_ts": int(table.column("ts")[-1].as_py()),
            "validation_from": result.split.validation_from,
            "test_from": result.split.test_from,
        },
        "candidates": {
            c.family.name: {
                "threshold": c.threshold,
                "validation": c.validation.as_dict() if c.validation else None,
                "test": c.test.as_dict() if c.test else None,
            }
            for c in result.candidates
        },
        "baseline_test": result.baseline_test.as_dict() if result.baseline_test else None,
    }
    candidate = registry.LoadedModel("candidate", chosen.estimator, metadata)
    model_events = rule_events = None
    if file_labels is not None:
        model_alerts = replayed.record_alerts + window_alerts(replayed.windows, candidate)
        rule_alerts = replayed.record_alerts + window_alerts(replayed.windows, None)
        model_events = held_out(file_labels, model_alerts, result.split.test_from, window_ms)
        rule_events = held_out(file_labels, rule_alerts, result.split.test_from, window_ms)
        metadata["test_events"] = {
            "model": _event_dict(model_events),
            "rules": _event_dict(rule_events),
        }
    folder = registry.save(chosen.estimator, metadata, out, version=version)
    registry.load(folder)  # the artifact must load through the pipeline's path
    write_report(
        folder, result, model_events, rule_events, feedback_only=bool(feedback) and not labels_path
    )
    _log.info("saved %s (%s)", folder, chosen.family.name)
    return TrainOutcome(folder, result, model_events, rule_events)


def _event_dict(scores: Mapping[str, KindScore]) -> dict[str, dict[str, float | int]]:
    return {
        kind: {
            "labels": s.labels,
            "alerts": s.alerts,
            "precision": round(s.precision, 4),
            "recall": round(s.recall, 4),
            "f1": round(s.f1, 4),
        }
        for kind, s in scores.items()
    }


def run_backtest(
    model_dir: Path | None,
    data: str,
    labels_path: Path,
    since_ms: int | None = None,
    *,
    show_progress: bool = True,
    odometer_resolution_km: float = SensorGlitch.ODOMETER_RESOLUTION_KM,
    window_ms: int = 60_000,
) -> tuple[dict[str, KindScore], list[dict[str, Any]]]:
    """Replay archived history through the detectors with ``model_dir`` (None: rules only).

    ``odometer_resolution_km`` and ``window_ms`` are the pipeline's settings of those
    names; a model trained on other windows is refused, as the pipeline refuses it.

    Returns:
        The event-level scores (as ``fleetstream evaluate`` prints them) and the alerts.

    Raises:
        ModelError: The model does not load (same checks as the pipeline).
        DataError: Unreadable data or labels.
    """
    model = registry.load(model_dir, window_ms=window_ms) if model_dir is not None else None
    labels = load_labels(labels_path)
    with _progress(show_progress) as progress:
        table = _load(data, progress)
        replayed = _replay(table, progress, odometer_resolution_km, window_ms)
    alerts: list[dict[str, Any]] = [
        dict(a) for a in replayed.record_alerts + window_alerts(replayed.windows, model)
    ]
    alerts.sort(key=lambda a: (a["ts"], a["vehicle_id"]))
    return held_out(labels, alerts, since_ms, window_ms), alerts
