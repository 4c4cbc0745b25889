"""Operator feedback on alerts, written to Kafka as training labels.

Each click on "Acknowledge" or "False positive" produces one JSON record to
``vehicle-alerts.feedback`` (``FLEETSTREAM_DASHBOARD_FEEDBACK_TOPIC``), keyed by the car.
The latest record of an ``alert_id`` wins; ``false_positive`` marks the alert as a wrong
detection for training, ``acknowledged`` as a seen (and so far believed) one.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import orjson
from confluent_kafka import KafkaException, Producer

from dashboard.errors import FeedbackError
from dashboard.view import AlertEntry
from telemetry.feedback import FeedbackRecord, Verdict

_log = logging.getLogger("dashboard.feedback")

FEEDBACK_SOURCE = "dashboard"


def feedback_record(alert: AlertEntry, verdict: Verdict, now_ms: int) -> FeedbackRecord:
    """The feedback record for one verdict on one alert at ``now_ms``.

    Raises:
        FeedbackError: Only the alert's clear was read, so its raise time is unknown:
            ``alert_ts`` would be the clear's and label the wrong windows.
    """
    if not alert["raised_seen"]:
        msg = (
            f"{alert['alert_id']}: only the alert's clear is in the feed (it was raised before "
            "the dashboard's backfill), so its raise time is unknown and feedback would label "
            "the wrong windows"
        )
        raise FeedbackError(msg)
    return FeedbackRecord(
        alert_id=alert["alert_id"],
        episode_id=alert["episode_id"],
        vehicle_id=alert["vehicle_id"],
        kind=alert["kind"],
        alert_ts=alert["ts"],
        verdict=verdict,
        ts=now_ms,
        source=FEEDBACK_SOURCE,
    )


class FeedbackSink(Protocol):
    """Where feedback goes (Kafka in production, a list in tests)."""

    def send(self, record: FeedbackRecord) -> None:
        """Write one record durably or raise :class:`FeedbackError`."""

    def close(self) -> None:
        """Release resources."""


class KafkaFeedbackSink:
    """Produces feedback records and waits for Kafka's acknowledgement of each one."""

    def __init__(self, client_config: dict[str, Any], topic: str, timeout_s: float = 10.0) -> None:
        self._config = {
            "acks": "all",
            "enable.idempotence": True,
            "logger": logging.getLogger("dashboard.librdkafka"),
            **client_config,
        }
        self._topic = topic
        self._timeout_s = timeout_s
        self._producer: Producer | None = None
        self._lock = threading.Lock()  # one producer shared by every browser session

    def send(self, record: FeedbackRecord) -> None:
        """Produce one record and flush it.

        Raises:
            FeedbackError: Kafka did not confirm the record within the timeout.
        """
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        with self._lock:
            try:
                # Created here, not at start: a dashboard without write access still shows
                # the fleet. A bad client config fails here, as any other Kafka error.
                if self._producer is None:
                    self._producer = Producer(self._config)
                self._producer.produce(
                    self._topic,
                    key=record["vehicle_id"].encode(),
                    value=orjson.dumps(record),
                    on_delivery=on_delivery,
                )
                remaining = self._producer.flush(self._timeout_s)
            except (KafkaException, BufferError) as exc:
                msg = f"could not write feedback to {self._topic}: {exc}"
                raise FeedbackError(msg) from exc
        if errors or remaining:
            detail = errors[0] if errors else f"not confirmed within {self._timeout_s:.0f} s"
            msg = f"could not write feedback to {self._topic}: {detail}"
            raise FeedbackError(msg)
        _log.info("feedback %s on %s written", record["verdict"], record["alert_id"])

    def close(self) -> None:
        """Flush what is left."""
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self._timeout_s)
                self._producer = None


class ListFeedbackSink:
    """Keeps feedback in memory (tests, or a dashboard without write access)."""

    def __init__(self) -> None:
        self.records: list[FeedbackRecord] = []

    def send(self, record: FeedbackRecord) -> None:
        """Append the record."""
        self.records.append(record)

    def close(self) -> None:
        """Nothing to release."""
