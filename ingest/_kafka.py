"""The Kafka side of ingest: an idempotent producer that never gives up on a record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from ingest._metrics import IngestMetrics
from ingest._routing import Outbound
from ingest._settings import IngestSettings
from telemetry.topics import create_missing_topics

_log = logging.getLogger(__name__)

DeliveryCallback = Callable[[KafkaError | None, Message], None]
_DOWN_CODES = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}  # noqa: SLF001
# Delivery-report errors that pass: retried, never quarantined. librdkafka sets the
# retriable flag on few delivery reports, so ``err.retriable()`` alone is not enough.
_TRANSIENT_CODES = {
    *_DOWN_CODES,
    KafkaError._PURGE_QUEUE,  # noqa: SLF001
    KafkaError._PURGE_INFLIGHT,  # noqa: SLF001
    KafkaError._MSG_TIMED_OUT,  # noqa: SLF001
    KafkaError._TIMED_OUT,  # noqa: SLF001
    KafkaError._RETRY,  # noqa: SLF001
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.BROKER_NOT_AVAILABLE,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.KAFKA_STORAGE_ERROR,
}


def is_transient(err: KafkaError) -> bool:
    """Whether producing the record again can succeed (else it goes to quarantine)."""
    return bool(err.retriable()) or err.code() in _TRANSIENT_CODES


def producer_config(settings: IngestSettings) -> dict[str, Any]:
    """Producer settings: durable (acks=all, idempotent), patient (infinite timeout), batched."""
    return settings.kafka_client_config(
        **{
            "acks": "all",
            "enable.idempotence": True,
            # Never expire a record: while Kafka is down the record waits (and so does its
            # PUBACK, so the MQTT broker keeps the backlog). 0 = infinite in librdkafka.
            "message.timeout.ms": 0,
            "linger.ms": settings.kafka_linger_ms,
            "batch.num.messages": settings.kafka_batch_messages,
            "compression.type": settings.kafka_compression,
            # QoS 1 records are bounded by Receive Maximum; this leaves them room that
            # QoS 0 records (capped by ingest_qos0_max_queued) can never take.
            "queue.buffering.max.messages": settings.ingest_qos0_max_queued
            + max(100_000, 4 * settings.mqtt_receive_maximum),
            "socket.keepalive.enable": True,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 5000,
            "client.id": f"{settings.mqtt_client_id}-producer",
        }
    )


def kafka_problem(settings: IngestSettings, topics: set[str], timeout_s: float = 5.0) -> str | None:
    """Ask Kafka, with a fresh client, whether it can take writes for ``topics``.

    A separate client on purpose: the question is whether the *producer* is stuck, so the
    answer must not come from its own (possibly stale) metadata.

    Returns:
        None when Kafka answers and every existing partition of ``topics`` has a leader,
        else what is wrong.
    """
    admin = AdminClient(settings.kafka_client_config())
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return f"no metadata: {exc}"
    for name in sorted(topics & set(metadata.topics)):
        topic = metadata.topics[name]
        if topic.error is not None:
            return f"{name}: {topic.error.str()}"
        leaderless = [p.id for p in topic.partitions.values() if p.leader < 0]
        if leaderless:
            return f"{name}: no leader for partitions {leaderless}"
    return None


def ensure_topics(settings: IngestSettings, topics: set[str], timeout_s: float = 10.0) -> list[str]:
    """Create missing topics with ``kafka_topic_partitions`` partitions.

    Returns:
        The topics that were created.

    Raises:
        KafkaException: Kafka could not be asked (caller retries later).
    """
    return create_missing_topics(
        settings.kafka_client_config(),
        topics,
        partitions=settings.kafka_topic_partitions,
        replication_factor=settings.kafka_replication_factor,
        timeout_s=timeout_s,
    )


class KafkaSink:
    """Wraps the producer: produce, serve callbacks, track whether Kafka is reachable."""

    def __init__(self, settings: IngestSettings, metrics: IngestMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.up = False
        self.last_error: str | None = None
        self._last_error_log = 0.0
        self._fatal = False
        self.producer = self._new_producer()
        # Bumped with every new producer: delivery reports of an older one are stale.
        self.epoch = 0
        self.last_confirmed = time.monotonic()
        # Replacements since the last confirmation: the watchdog's backoff exponent.
        self.restarts_in_row = 0

    def _new_producer(self) -> Producer:
        config = producer_config(self._settings)
        config["error_cb"] = self._on_error
        config["logger"] = logging.getLogger("ingest.kafka.librdkafka")
        return Producer(config)

    def _on_error(self, err: KafkaError) -> None:
        self._metrics.kafka_errors.labels(code=err.name()).inc()
        self.last_error = f"{err.name()}: {err.str()}"
        if err.fatal():
            self._fatal = True
            _log.error("Kafka producer fatal error, recreating the producer: %s", self.last_error)
        if err.code() in _DOWN_CODES:
            self.mark(up=False)
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            _log.warning(
                "Kafka: %s (records are held and retried; MQTT backlog stays on the broker)",
                self.last_error,
            )

    def confirmed(self) -> None:
        """Kafka confirmed a record: it is up, and the producer is making progress."""
        self.last_confirmed = time.monotonic()
        self.restarts_in_row = 0
        if not self.up:
            self.mark(up=True)

    def mark(self, *, up: bool) -> None:
        """Record Kafka's state, logging transitions."""
        if up != self.up:
            if up:
                _log.info("Kafka is confirming writes")
            else:
                _log.warning(
                    "Kafka is not reachable or not confirming writes: %s",
                    self.last_error or "stalled",
                )
        self.up = up
        self._metrics.kafka_up.set(1 if up else 0)

    @property
    def fatal(self) -> bool:
        """True after a fatal producer error: records must be produced again by a new producer."""
        return self._fatal

    def replace_producer(self) -> Producer:
        """Start a new producer; returns the old one for :meth:`retire`.

        Records still queued in the old producer are the caller's to produce again.
        """
        old = self.producer
        self.producer = self._new_producer()
        self.epoch += 1
        self.restarts_in_row += 1
        self._fatal = False
        self.last_confirmed = time.monotonic()
        self._metrics.producer_restarts.inc()
        return old

    async def retire(self, box: list[Producer]) -> int:
        """Purge a replaced producer, serve its last delivery reports, destroy it off-loop.

        Args:
            box: Holds the old producer and nothing else does: destroying it (when the
                list is emptied) joins librdkafka's threads, which must not block the loop.

        Returns:
            Records the old producer still held when it was destroyed.
        """
        try:
            with contextlib.suppress(KafkaException, RuntimeError):
                box[0].purge(in_queue=True, in_flight=True, blocking=False)
            deadline = time.monotonic() + 5.0
            while len(box[0]) and time.monotonic() < deadline:
                box[0].poll(0)  # stale-epoch reports: see IngestService._produce
                await asyncio.sleep(0.05)
            left = len(box[0])
            await asyncio.to_thread(box.clear)
            return left
        finally:
            if box:  # cancelled on the way
                threading.Thread(target=box.clear, name="destroy-producer", daemon=True).start()

    def produce(self, out: Outbound, on_delivery: DeliveryCallback) -> KafkaError | None:
        """Queue one record; ``on_delivery`` runs from :meth:`poll`.

        Returns:
            None once queued; Kafka's error when the client refused the record outright
            (too large, invalid topic, ...): then ``on_delivery`` never runs for it and the
            caller decides what becomes of it (quarantine).
        """
        while True:
            try:
                self.producer.produce(
                    out.topic,
                    value=out.value,
                    key=out.key,
                    headers=out.headers,
                    timestamp=out.timestamp_ms,
                    on_delivery=on_delivery,
                )
            except BufferError:
                # Only reachable if Receive Maximum x rules exceeds the room kept for QoS 1
                # records, or their bytes exceed queue.buffering.max.kbytes: wait.
                self.producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError):
                    return err
                return KafkaError(KafkaError._INVALID_ARG, str(exc))  # noqa: SLF001
            else:
                return None

    def queued(self) -> int:
        """Records the producer holds: waiting to be sent, or sent and not yet confirmed."""
        return len(self.producer)

    def poll(self) -> int:
        """Serve delivery callbacks; returns how many ran."""
        return int(self.producer.poll(0))

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding records; returns how many are still queued."""
        return int(self.producer.flush(timeout_s))
