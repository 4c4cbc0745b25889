"""Produce to and consume from the real local Kafka."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

pytestmark = pytest.mark.integration


def test_keyed_records_round_trip_with_acks_all(
    kafka_bootstrap: str, kafka_topic: str, unique_name: str
) -> None:
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True}
    )
    delivered: list[tuple[bytes, int]] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: object) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.key(), msg.partition()))  # type: ignore[attr-defined]

    sent = {(f"car-{i % 7}".encode(), f"{i}".encode()) for i in range(300)}
    for key, value in sorted(sent):
        producer.produce(kafka_topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert errors == []
    assert len(delivered) == 300
    # Keyed records stick to one partition per key.
    by_key: dict[bytes, set[int]] = {}
    for key, partition in delivered:
        by_key.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in by_key.values())

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([kafka_topic])
    received: set[tuple[bytes, bytes]] = set()
    deadline = time.monotonic() + 60
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received.add((msg.key(), msg.value()))
    finally:
        consumer.close()
    assert received == sent
