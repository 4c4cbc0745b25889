"""The archive against the real Kafka while its group rebalances: archivers join and leave
mid-stream, and every record still reaches a file at least once.

on_revoke runs inside consume() and commits the consumer's stored offsets. Since librdkafka
2.1 (confluentinc/librdkafka#4208) a batch moves them only when it is returned, so a
rebalance in the middle of a batch commits just what earlier batches handed over (all of it
in files by then); this test pins that with the real client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bench.harness import as_rows, create_topic
from fleetstream import infra
from models.archive import TELEMETRY, ArchiveReport, archive_topics
from models.dataset import iter_records, load_telemetry
from simulator import FleetConfig
from simulator import iter_records as simulate

pytestmark = pytest.mark.integration


def _produce_slowly(
    bootstrap: str, topic: str, rows: list[tuple[bytes | None, bytes, int]]
) -> None:
    """A steady trickle: consume() keeps collecting records whenever a rebalance arrives."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for start in range(0, len(rows), 20):
        for key, value, ts in rows[start : start + 20]:
            producer.produce(topic, key=key, value=value, timestamp=ts)
        producer.poll(0)
        time.sleep(0.1)
    assert producer.flush(30) == 0


def _wait_for_members(bootstrap: str, group: str, count: int, timeout_s: float = 30.0) -> None:
    """Until ``count`` members of ``group`` each own a partition: the rebalance is done.

    Fixed sleeps were not enough: in a CI run of 2026-12-04 the third archiver left 3 s
    after it started having written nothing, its join not yet complete.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    members: list[int] = []
    while time.monotonic() < deadline:
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
        members = [len(m.assignment.topic_partitions) for m in description.members]
        if len(members) == count and all(members):
            return
        time.sleep(0.2)
    msg = f"group {group} never had {count} members owning partitions (last: {members})"
    raise AssertionError(msg)


def test_archivers_joining_and_leaving_mid_stream_skip_no_record(
    brokers: infra.InfraSettings, tmp_path: Path, unique_name: str
) -> None:
    bootstrap = brokers.kafka_bootstrap
    topic = f"{unique_name}-telemetry"
    group = f"{unique_name}-archive"
    create_topic(bootstrap, topic, partitions=6)
    records = list(simulate(FleetConfig(vehicles=12, duration_s=1800, rate_hz=0.2, seed=7)))
    reports: dict[str, ArchiveReport] = {}
    failures: list[BaseException] = []

    def archiver(name: str, stop: Callable[[], bool], idle_exit_s: float | None) -> None:
        try:
            reports[name] = archive_topics(
                {"bootstrap.servers": bootstrap},
                {topic: TELEMETRY},
                tmp_path,
                group=group,
                max_age_s=1.0,
                idle_exit_s=idle_exit_s,
                stop=stop,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test below
            failures.append(exc)

    leave = threading.Event()
    threads: list[threading.Thread] = []

    def start(name: str, stop: Callable[[], bool], idle_exit_s: float | None) -> None:
        thread = threading.Thread(target=archiver, args=(name, stop, idle_exit_s), daemon=True)
        thread.start()
        threads.append(thread)

    producing = threading.Thread(
        target=_produce_slowly, args=(bootstrap, topic, as_rows(records)), daemon=True
    )
    start("first", lambda: False, 8.0)
    producing.start()
    time.sleep(3)
    start("second", lambda: False, 8.0)  # joins: the first one's partitions are revoked
    _wait_for_members(bootstrap, group, 2)
    time.sleep(2)
    start("third", leave.is_set, None)
    _wait_for_members(bootstrap, group, 3)
    time.sleep(2)
    assert producing.is_alive(), "records stopped flowing before the last rebalance"
    leave.set()  # leaves: another rebalance
    producing.join(120)
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert all(not t.is_alive() for t in threads)

    table = load_telemetry(str(tmp_path / "telemetry"))
    archived = {(r["vehicle_id"], r["seq"]) for r in iter_records(table)}
    expected = {(r["vehicle_id"], r["seq"]) for r in records}
    missing = expected - archived
    assert not missing, f"{len(missing)} of {len(expected)} records never archived"
    written = {name: r.rows["telemetry"] for name, r in reports.items()}
    # Each one owned partitions while records flowed: the rebalances happened mid-stream.
    assert all(rows > 0 for rows in written.values()), written
    print(f"archived {len(records)} records as {written} rows")  # noqa: T201
