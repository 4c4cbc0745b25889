"""read_json_topic: reads every partition to the end offsets taken at the start, fails loudly."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError

from models.errors import DataError
from processing import evaluate
from processing.evaluate import read_json_topic

pytestmark = pytest.mark.unit

TOPIC = "vehicle-alerts.feedback"


@dataclass
class Message:
    """The part of a confluent_kafka Message the reader uses."""

    partition_: int
    offset_: int
    value_: bytes | None = None
    error_: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self.error_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def value(self) -> bytes | None:
        return self.value_


def eof(partition: int, offset: int) -> Message:
    return Message(partition, offset, error_=KafkaError(KafkaError._PARTITION_EOF))


def record(partition: int, offset: int, **fields: Any) -> Message:
    return Message(partition, offset, orjson.dumps({"at": [partition, offset], **fields}))


@dataclass
class TopicMeta:
    partitions: dict[int, object]
    error: KafkaError | None = None


@dataclass
class Script:
    """What the fake consumer answers: watermarks per partition, then batches."""

    watermarks: dict[int, tuple[int, int]]
    batches: list[list[Message]]
    exists: bool = True
    configs: list[dict[str, Any]] = field(default_factory=list)
    assigned: list[Any] = field(default_factory=list)
    closed: bool = False


class FakeConsumer:
    script: Script

    def __init__(self, config: dict[str, Any]) -> None:
        self.script.configs.append(config)
        self._batches: Iterator[list[Message]] = iter(self.script.batches)

    def list_topics(self, topic: str, timeout: float) -> Any:
        topics = (
            {topic: TopicMeta(dict.fromkeys(self.script.watermarks))} if self.script.exists else {}
        )
        return type("Meta", (), {"topics": topics})()

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return self.script.watermarks[tp.partition]

    def assign(self, partitions: list[Any]) -> None:
        self.script.assigned += [(tp.partition, tp.offset) for tp in partitions]

    def consume(self, _n: int, _timeout: float) -> list[Message]:
        return next(self._batches, [])

    def close(self) -> None:
        self.script.closed = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeConsumer]]:
    monkeypatch.setattr(evaluate, "Consumer", FakeConsumer)
    yield FakeConsumer


def test_reads_every_partition_to_its_end_offset_however_slow_the_start(
    fake: type[FakeConsumer],
) -> None:
    # Partition 1 ends with a transaction marker at offset 2 (committed data up to 1).
    fake.script = Script(
        watermarks={0: (0, 2), 1: (0, 3), 2: (5, 5)},
        batches=[[] for _ in range(20)]  # assignment takes long: nothing for a while
        + [[record(0, 0), record(1, 0)], [record(1, 1), eof(1, 3)], [record(0, 1), record(0, 2)]],
    )
    out = read_json_topic({"bootstrap.servers": "b:9092", "security.protocol": "SSL"}, TOPIC)
    # Partition 0's offset 2 was written after the read began: not read.
    assert [r["at"] for r in out] == [[0, 0], [1, 0], [1, 1], [0, 1]]
    assert fake.script.assigned == [(0, -2), (1, -2)]  # from the beginning; 2 is empty
    [config] = fake.script.configs
    assert config["security.protocol"] == "SSL"
    assert config["isolation.level"] == "read_committed"
    assert fake.script.closed


@pytest.mark.parametrize(
    ("batches", "match"),
    [
        ([[Message(0, -1, error_=KafkaError(KafkaError._TRANSPORT))]], "reading Kafka topic"),
        ([[Message(0, 0, b"not json")]], "offset 0: not JSON"),
        ([[Message(0, 0, b"[1]")]], "not a JSON object"),
    ],
)
def test_errors_and_bad_records_fail_loudly(
    fake: type[FakeConsumer], batches: list[list[Message]], match: str
) -> None:
    fake.script = Script(watermarks={0: (0, 1)}, batches=batches)
    with pytest.raises(DataError, match=match):
        read_json_topic({"bootstrap.servers": "b:9092"}, TOPIC)
    assert fake.script.closed


def test_a_missing_topic_is_an_error(fake: type[FakeConsumer]) -> None:
    fake.script = Script(watermarks={}, batches=[], exists=False)
    with pytest.raises(DataError, match="does not exist"):
        read_json_topic({"bootstrap.servers": "b:9092"}, TOPIC)


def test_an_empty_topic_reads_nothing(fake: type[FakeConsumer]) -> None:
    fake.script = Script(watermarks={0: (0, 0), 1: (4, 4)}, batches=[])
    assert read_json_topic({"bootstrap.servers": "b:9092"}, TOPIC) == []


def test_a_read_that_never_reaches_the_end_times_out(fake: type[FakeConsumer]) -> None:
    fake.script = Script(watermarks={0: (0, 5)}, batches=[[record(0, 0)]])
    with pytest.raises(DataError, match=r"timed out with partitions \[0\]"):
        read_json_topic({"bootstrap.servers": "b:9092"}, TOPIC, timeout_s=0.2)
