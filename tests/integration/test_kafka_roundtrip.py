"""Produce to and consume from the real local Kafka."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from processing import ProcessingSettings
from processing._main import client_configs
from telemetry.topics import create_missing_topics

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


def test_create_missing_topics_creates_only_the_missing_ones(
    kafka_bootstrap: str, kafka_topic: str, unique_name: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    wanted = [kafka_topic, f"{unique_name}-a", f"{unique_name}-b"]
    admin = AdminClient(config)
    try:
        created = create_missing_topics(config, wanted, partitions=5, replication_factor=1)
        assert sorted(created) == [f"{unique_name}-a", f"{unique_name}-b"]
        topics = admin.list_topics(timeout=10).topics
        assert len(topics[f"{unique_name}-a"].partitions) == 5
        assert len(topics[f"{unique_name}-b"].partitions) == 5
        assert len(topics[kafka_topic].partitions) == 3  # the existing one is untouched
        assert create_missing_topics(config, wanted, partitions=5, replication_factor=1) == []
        with pytest.raises(KafkaException):
            # Kafka refuses a topic with more replicas than brokers: the error surfaces.
            create_missing_topics(config, [f"{unique_name}-c"], partitions=1, replication_factor=3)
    finally:
        for future in admin.delete_topics([f"{unique_name}-a", f"{unique_name}-b"]).values():
            future.result(timeout=30)


def test_a_commit_sends_lingering_records_at_once(
    kafka_bootstrap: str, kafka_topic: str, unique_name: str
) -> None:
    """A commit sends what lingers at once, so processing's 100 ms linger adds no latency.

    librdkafka >= 1.9 ignores linger.ms in a flush (its pull request 3494), and a commit
    flushes. Here a 30 s linger holds the record until the commit, which must then take
    well under the linger.
    """
    settings = ProcessingSettings(
        kafka_bootstrap_servers=kafka_bootstrap, processing_linger_ms=30_000
    )
    config = client_configs(settings, unique_name)
    producer = Producer({"bootstrap.servers": config.broker_address, **config.producer})
    producer.init_transactions(30)
    producer.begin_transaction()
    delivered: list[bool] = []
    producer.produce(
        kafka_topic, key=b"car-1", value=b"x", on_delivery=lambda *_: delivered.append(True)
    )
    producer.poll(2.0)
    assert delivered == [], "the record should still linger (linger.ms not applied?)"
    started = time.monotonic()
    producer.commit_transaction(30)
    took = time.monotonic() - started
    assert delivered == [True]
    assert took < 5.0, f"the commit waited {took:.1f} s for the linger"
