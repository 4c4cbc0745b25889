"""Create missing Kafka topics in one admin request."""

from __future__ import annotations

import time
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
        The topics this call created (one created meanwhile by someone else is not); the
        broker lists each of them by the time this returns.

    Raises:
        KafkaException: Kafka could not be asked, or refused a creation.
        TimeoutError: A creation was not confirmed within ``timeout_s``, or the created
            topics did not appear in the broker's metadata within ``timeout_s``.
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
    _wait_visible(admin, created, timeout_s)
    return created


def _wait_visible(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    """Wait until the broker's metadata lists ``topics``.

    KRaft confirms a creation once the controller committed it; the broker answering
    metadata requests learns of it a moment later, and a client that lists or uses the
    topic in between is told it does not exist (a CI run saw exactly that).

    Raises:
        TimeoutError: The topics were not listed within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    pending = set(topics)
    while pending:
        pending -= set(admin.list_topics(timeout=timeout_s).topics)
        if not pending:
            return
        if time.monotonic() > deadline:
            msg = f"created topics not listed by the broker after {timeout_s} s: {sorted(pending)}"
            raise TimeoutError(msg)
        time.sleep(0.05)
