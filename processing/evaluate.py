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
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from models.errors import DataError
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


def read_json_topic(
    kafka_config: Mapping[str, Any], topic: str, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Read every committed JSON record a topic holds now, partition by partition.

    The end offsets of every partition are taken first; each partition is then read from
    its beginning (``read_committed``, no consumer group join) until it reaches its end
    offset. Stopping after a few idle seconds instead could stop before the partitions
    were even assigned and train without the feedback, silently.

    Args:
        kafka_config: librdkafka settings (bootstrap, security), e.g.
            ``KafkaConnectionSettings().kafka_client_config()``.
        topic: The topic to read.
        timeout_s: Longest time for the metadata, the end offsets and the whole read.

    Returns:
        The records, in order per partition.

    Raises:
        DataError: The topic does not exist, Kafka reports an error, a record is not a
            JSON object, or the read does not finish within ``timeout_s``.
    """
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"fleetstream-evaluate-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        ends = _end_offsets(consumer, topic, timeout_s)
        out: list[dict[str, Any]] = []
        if ends:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
            _read_until(consumer, topic, ends, out, time.monotonic() + timeout_s)
    except KafkaException as exc:
        msg = f"cannot read Kafka topic {topic!r}: {exc}"
        raise DataError(msg) from exc
    finally:
        consumer.close()
    return out


def _end_offsets(consumer: Consumer, topic: str, timeout_s: float) -> dict[int, int]:
    """Partition -> end offset now, for the partitions that hold records."""
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        problem = "it does not exist" if meta is None else meta.error.str()
        msg = f"cannot read Kafka topic {topic!r}: {problem}"
        raise DataError(msg)
    ends: dict[int, int] = {}
    for partition in sorted(meta.partitions):
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s
        )
        if high > low:
            ends[partition] = high
    return ends


def _read_until(
    consumer: Consumer,
    topic: str,
    ends: dict[int, int],
    out: list[dict[str, Any]],
    deadline: float,
) -> None:
    """Append records to ``out`` until every partition in ``ends`` has reached its end."""
    while ends:
        if time.monotonic() > deadline:
            msg = (
                f"reading Kafka topic {topic!r} timed out with partitions {sorted(ends)} "
                f"short of their end offsets"
            )
            raise DataError(msg)
        for message in consumer.consume(1000, 0.5):
            partition, offset = message.partition(), message.offset()
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001
                msg = f"reading Kafka topic {topic!r}: {error.str()}"
                raise DataError(msg)
            end = ends.get(partition or 0)
            if end is None or offset is None:
                continue  # a partition already read to its end
            if error is None and offset < end:  # later records came after the read began
                where = f"{topic!r} partition {partition} offset {offset}"
                out.append(_json_object(message.value(), where))
            # A partition-EOF event's offset is the next one (with read_committed, after the
            # last committed record: transaction markers take offsets too).
            if (offset + 1 if error is None else offset) >= end:
                del ends[partition or 0]


def _json_object(value: bytes | None, where: str) -> dict[str, Any]:
    """A record's value as a JSON object.

    Raises:
        DataError: The value is not a JSON object.
    """
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        msg = f"Kafka topic {where}: not JSON ({exc})"
        raise DataError(msg) from exc
    if not isinstance(record, dict):
        msg = f"Kafka topic {where}: not a JSON object"
        raise DataError(msg)
    return record
