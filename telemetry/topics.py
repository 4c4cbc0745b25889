"""Create missing Kafka topics in one admin request."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


def create_missing_topics(
    client_config: dict[str, Any],
    topics: Iterable[str],
    *,
    partitions: int,
    replication_factor: int,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create those of ``topics`` Kafka does not have, all in one request.

    One request for all of them, waited on their futures: Quix Streams creates topics
    one at a time and sleeps a second before each confirmation, about 1 s per topic at
    every first start.

    Args:
        client_config: librdkafka settings (bootstrap servers and security).
        topics: The topic names.
        partitions: Partitions of each created topic.
        replication_factor: Replication factor of each created topic.
        timeout_s: Limit for the metadata request and for each creation.

    Returns:
        The topics this call created (one created meanwhile by someone else is not).

    Raises:
        KafkaException: Kafka could not be asked, or refused a creation.
        TimeoutError: A creation was not confirmed within ``timeout_s``.
    """
    admin = AdminClient(client_config)
    missing = sorted(set(topics) - set(admin.list_topics(timeout=timeout_s).topics))
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=partitions, replication_factor=replication_factor)
            for t in missing
        ],
        request_timeout=timeout_s,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        else:
            created.append(topic)
    return created
