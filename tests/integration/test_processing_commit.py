"""Processing commits the last records of a burst within its commit interval (real Kafka).

Quix commits a checkpoint after a poll, once the commit interval has passed. A poll that
finds nothing blocks for the consumer poll timeout (1 s by default), so the records that
arrived just after a commit waited a second for the next one, with their alerts invisible
to read_committed readers: the end of every burst, every quiet partition. The service
polls for no longer than its commit interval.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from bench.harness import ProcessingRun, as_rows, create_topic, produce, simulate
from fleetstream import infra
from simulator import FleetConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BURST = 20
# The commit interval is 0.15 s (set below); a 1 s poll made this ~1 s.
LIMIT_S = 0.7


def _committed(consumer: Consumer, topic: str) -> int:
    [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=5)
    return int(tp.offset)


def test_the_end_of_a_burst_is_committed_within_the_commit_interval(
    brokers: infra.InfraSettings, tmp_path: Path
) -> None:
    bootstrap = brokers.kafka_bootstrap
    # The interval this test is about, whatever the environment exports.
    interval = {"FLEETSTREAM_PROCESSING_COMMIT_INTERVAL_S": "0.15"}
    run = ProcessingRun(bootstrap, f"pc{uuid.uuid4().hex[:10]}", tmp_path, extra_env=interval)
    topic = run.topics["input"]
    records, _ = simulate(FleetConfig(vehicles=1, duration_s=1 + BURST, rate_hz=1.0, seed=3))
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, as_rows(records[:1]))
    run.start()
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": run.group, "isolation.level": "read_committed"}
    )
    try:
        run.wait_consumed(1, timeout_s=120)
        deadline = time.monotonic() + 30
        while _committed(reader, topic) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _committed(reader, topic) == 1, run.log()
        time.sleep(1)  # idle: the next record's checkpoint is due at once
        produce(bootstrap, topic, as_rows(records[1:]))
        sent = time.monotonic()
        while _committed(reader, topic) < 1 + BURST and time.monotonic() - sent < 10:
            time.sleep(0.01)
        took = time.monotonic() - sent
        assert _committed(reader, topic) == 1 + BURST, run.log()
        assert took < LIMIT_S, f"the burst's end was committed {took:.2f} s after it was sent"
    finally:
        reader.close()
        stopped = run.stop()
    assert stopped == 0, run.log()
