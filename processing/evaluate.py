"""Event-level evaluation of alerts against ground-truth labels.

An alert (status ``raised``) matches a label when vehicle and kind match and the alert's
``ts`` lies in ``[start_ts, end_ts + 2 windows]``. Precision = matching alerts / raised
alerts; recall = labels with at least one matching alert / labels; delay = first matching
alert ts - label start_ts.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer

from processing.detectors import KINDS


@dataclass(frozen=True, slots=True)
class KindScore:
    """Scores for one kind (or ``overall``)."""

    kind: str
    labels: int
    alerts: int
    matched_alerts: int
    detected_labels: int
    median_delay_s: float | None

    @property
    def precision(self) -> float:
        """Matching alerts / raised alerts (1.0 when there were no alerts)."""
        return self.matched_alerts / self.alerts if self.alerts else 1.0

    @property
    def recall(self) -> float:
        """Labels detected / labels (1.0 when there were no labels)."""
        return self.detected_labels / self.labels if self.labels else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def evaluate(
    labels: Iterable[Mapping[str, Any]],
    alerts: Iterable[Mapping[str, Any]],
    window_ms: int = 60_000,
) -> dict[str, KindScore]:
    """Score raised alerts against labels, per kind and ``overall``."""
    by_key: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    label_list = list(labels)
    for label in label_list:
        by_key[(label["vehicle_id"], label["kind"])].append(label)
    raised = [a for a in alerts if a.get("status", "raised") == "raised"]
    slack = 2 * window_ms
    matched_alerts: dict[str, int] = defaultdict(int)
    alerts_by_kind: dict[str, int] = defaultdict(int)
    first_match: dict[int, int] = {}
    for alert in raised:
        kind = alert["kind"]
        alerts_by_kind[kind] += 1
        hit = False
        for label in by_key.get((alert["vehicle_id"], kind), []):
            if label["start_ts"] <= alert["ts"] <= label["end_ts"] + slack:
                hit = True
                key = id(label)
                first_match[key] = min(first_match.get(key, alert["ts"]), alert["ts"])
        if hit:
            matched_alerts[kind] += 1
    scores: dict[str, KindScore] = {}
    kinds = sorted(set(KINDS) | {lab["kind"] for lab in label_list} | set(alerts_by_kind))
    all_delays: list[float] = []
    for kind in kinds:
        kind_labels = [lab for lab in label_list if lab["kind"] == kind]
        delays = [
            (first_match[id(lab)] - lab["start_ts"]) / 1000.0
            for lab in kind_labels
            if id(lab) in first_match
        ]
        all_delays += delays
        scores[kind] = KindScore(
            kind=kind,
            labels=len(kind_labels),
            alerts=alerts_by_kind[kind],
            matched_alerts=matched_alerts[kind],
            detected_labels=len(delays),
            median_delay_s=statistics.median(delays) if delays else None,
        )
    scores["overall"] = KindScore(
        kind="overall",
        labels=len(label_list),
        alerts=len(raised),
        matched_alerts=sum(matched_alerts.values()),
        detected_labels=sum(s.detected_labels for s in scores.values()),
        median_delay_s=statistics.median(all_delays) if all_delays else None,
    )
    return scores


def format_scores(scores: Mapping[str, KindScore]) -> str:
    """A plain-text table of the scores."""
    lines = [
        f"{'kind':<18}{'labels':>7}{'alerts':>8}{'precision':>11}{'recall':>8}{'F1':>7}"
        f"{'median delay s':>16}"
    ]
    for s in scores.values():
        delay = f"{s.median_delay_s:.0f}" if s.median_delay_s is not None else "-"
        lines.append(
            f"{s.kind:<18}{s.labels:>7}{s.alerts:>8}{s.precision:>11.3f}{s.recall:>8.3f}{s.f1:>7.3f}{delay:>16}"
        )
    return "\n".join(lines)


def read_json_topic(bootstrap: str, topic: str, idle_s: float = 3.0) -> list[dict[str, Any]]:
    """Read every JSON record currently in a topic (committed records only, fresh group)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fleetstream-evaluate-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    out: list[dict[str, Any]] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for message in consumer.consume(1000, 0.5):
                if message.error() is None:
                    out.append(orjson.loads(message.value()))
                    last = time.monotonic()
    finally:
        consumer.close()
    return out
