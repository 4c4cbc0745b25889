"""Consumer-group lag of the processing service, exported as a metric."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Consumer, KafkaException, TopicPartition

from processing.metrics import ProcessingMetrics

_log = logging.getLogger("processing.lag")


class LagReporter:
    """Every ``every_s``: committed offsets of the group vs. high watermarks of the input.

    Uses its own consumer that never subscribes, so it does not join the group.
    """

    def __init__(
        self,
        config: dict[str, object],
        group: str,
        topic: str,
        metrics: ProcessingMetrics,
        every_s: float = 10.0,
    ) -> None:
        self._consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
        self._topic = topic
        self._metrics = metrics
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="processing-lag", daemon=True)

    def start(self) -> None:
        """Start reporting in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting and close the consumer."""
        self._stop.set()
        self._thread.join(timeout=self._every_s + 5)
        self._consumer.close()

    def measure(self) -> int:
        """Total lag over the input topic's partitions."""
        metadata = self._consumer.list_topics(self._topic, timeout=5).topics.get(self._topic)
        if metadata is None or metadata.error is not None:
            return 0
        partitions = [TopicPartition(self._topic, p) for p in metadata.partitions]
        committed = self._consumer.committed(partitions, timeout=5)
        total = 0
        for tp in committed:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, tp.partition), timeout=5
            )
            position = tp.offset if tp.offset >= 0 else low
            total += max(0, high - position)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._metrics.lag.set(self.measure())
            except KafkaException as exc:
                _log.warning("cannot measure consumer lag: %s", exc)
