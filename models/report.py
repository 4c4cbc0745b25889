"""The evaluation report written next to a trained artifact: markdown plus PNG plots."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve

from models.training import Scores, TrainResult, baseline_predictions
from processing.evaluate import KindScore, format_scores

REPORT_FILE = "report.md"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000.0, UTC).strftime("%Y-%m-%d %H:%M")


def _row(name: str, s: Scores | None) -> str:
    if s is None:
        return f"| {name} | - | - | - | - |"
    return (
        f"| {name} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | {s.positives}/{s.windows} |"
    )


def _plot_scores(folder: Path, result: TrainResult) -> str:
    chosen = result.chosen
    fig, ax = plt.subplots(figsize=(7, 4))
    held = result.split.validation | result.split.test
    scores = chosen.scores[held]
    if result.actual is not None:
        actual = result.actual[held]
        bins = np.linspace(float(scores.min()), float(scores.max()), 60).tolist()
        ax.hist(scores[~actual], bins=bins, alpha=0.6, label="normal windows", density=True)
        ax.hist(scores[actual], bins=bins, alpha=0.6, label="labelled anomalous", density=True)
    else:
        ax.hist(scores, bins=60, alpha=0.7, label="all windows")
    ax.axvline(chosen.threshold, color="black", linestyle="--", label="threshold")
    ax.set_xlabel(f"anomaly score ({chosen.family.name})")
    ax.set_ylabel("density")
    ax.set_title("Score distributions (validation + held-out time)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "scores.png", dpi=100)
    plt.close(fig)
    return "scores.png"


def _plot_pr(folder: Path, result: TrainResult) -> str | None:
    if result.actual is None:
        return None
    test = result.split.test
    actual = result.actual[test]
    fig, ax = plt.subplots(figsize=(5, 5))
    for candidate in result.candidates:
        precision, recall, _ = precision_recall_curve(actual, candidate.scores[test])
        ax.plot(recall, precision, label=candidate.family.name)
    base = Scores.of(baseline_predictions(result.frame)[test], actual)
    ax.scatter([base.recall], [base.precision], color="red", zorder=3, label="fixed threshold")
    chosen = result.chosen.test
    if chosen is not None:
        ax.scatter([chosen.recall], [chosen.precision], color="black", zorder=3, label="chosen")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall on held-out time (windows)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(folder / "precision_recall.png", dpi=100)
    plt.close(fig)
    return "precision_recall.png"


def _plot_kinds(
    folder: Path, model: Mapping[str, KindScore], rules: Mapping[str, KindScore]
) -> str:
    kinds = [k for k in model if k != "overall" and model[k].labels]
    x = np.arange(len(kinds))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x - 0.2, [rules[k].recall for k in kinds], 0.4, label="rules only")
    ax.bar(x + 0.2, [model[k].recall for k in kinds], 0.4, label="with this model")
    ax.set_xticks(x, kinds, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall (episodes detected)")
    ax.set_title("Per-kind recall on held-out time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "per_kind_recall.png", dpi=100)
    plt.close(fig)
    return "per_kind_recall.png"


def write_report(
    folder: Path,
    result: TrainResult,
    model_events: Mapping[str, KindScore] | None,
    rule_events: Mapping[str, KindScore] | None,
    *,
    feedback_only: bool = False,
) -> Path:
    """Write ``report.md`` and its plots into the artifact folder; returns the report path.

    ``feedback_only``: the labels came from operators' feedback alone (no label file), so
    the report says why it has no event-level scores.
    """
    split = result.split
    frame = result.frame
    lines: list[Any] = [
        f"# Consumption model {folder.name}",
        "",
        f"Chosen family: **{result.chosen.family.name}** "
        f"(features: {', '.join(result.chosen.family.features)}; "
        f"threshold {result.chosen.threshold:.4f} on the anomaly score).",
        "",
        "## Data and split (by time, no shuffling)",
        "",
        f"- driving windows: {len(frame):,} from {frame['vehicle_id'].nunique()} cars",
        f"- train: windows ending before {_when(split.validation_from)} "
        f"({int(split.train.sum()):,})",
        f"- validation: until {_when(split.test_from)} ({int(split.validation.sum()):,}) "
        "- picks each family's threshold (best F1) and the family",
        f"- held-out test: from {_when(split.test_from)} ({int(split.test.sum()):,}) "
        "- used for nothing but this report",
        "",
    ]
    if result.actual is None:
        lines += [
            "No labels were given: the threshold is the 99th percentile of training scores "
            "and there are no precision/recall figures.",
            "",
        ]
    else:
        lines += [
            "## Window-level scores (precision, recall, F1, anomalous/all windows)",
            "",
            "| model | precision | recall | F1 | positives |",
            "|---|---|---|---|---|",
        ]
        for c in result.candidates:
            lines.append(_row(f"{c.family.name} (validation)", c.validation))
        for c in result.candidates:
            lines.append(_row(f"{c.family.name} (held-out)", c.test))
        lines += [_row("fixed threshold ratio > 1.35 (held-out)", result.baseline_test), ""]
    if model_events is not None and rule_events is not None:
        lines += [
            "## Event-level scores on held-out time (as `fleetstream evaluate` prints them)",
            "",
            "With this model:",
            "",
            "```",
            format_scores(model_events),
            "```",
            "",
            "Rules only (fixed-threshold consumption rule):",
            "",
            "```",
            format_scores(rule_events),
            "```",
            "",
            f"![per-kind recall]({_plot_kinds(folder, model_events, rule_events)})",
            "",
        ]
    elif feedback_only:
        lines += [
            "## Event-level scores",
            "",
            "None: only operators' feedback was given, no label file. Feedback labels the "
            "windows that raised each reviewed alert, so it trains and scores windows "
            "(above); as episodes it would score the rules against their own alerts. "
            "Give `--labels` for event-level scores, or judge the model with "
            "`fleetstream backtest`.",
            "",
        ]
    lines += ["## Plots", "", f"![score distributions]({_plot_scores(folder, result)})", ""]
    pr = _plot_pr(folder, result)
    if pr is not None:
        lines += [f"![precision-recall]({pr})", ""]
    path = folder / REPORT_FILE
    path.write_text("\n".join(lines), "utf-8")
    return path
