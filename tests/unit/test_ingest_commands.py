"""The Kafka -> MQTT command loop survives what used to end it silently (no broker needed)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException

import ingest._service as service_module
from ingest._routing import Outbound
from ingest._rules import parse_rules
from ingest._service import IngestService
from ingest._settings import IngestSettings

pytestmark = pytest.mark.unit

RULES = parse_rules(
    '[[kafka_to_mqtt]]\nname="cmd"\nkafka="vehicle-commands"\nmqtt="fleet/{key}/commands"\n'
)
RULE = RULES.kafka_to_mqtt[0]


class FakeMessage:
    def __init__(self, key: bytes | None, offset: int = 7) -> None:
        self._key = key
        self._offset = offset

    def error(self) -> None:
        return None

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return b"unlock"

    def topic(self) -> str:
        return "vehicle-commands"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1000)


class FakeConsumer:
    """Scripted: ``batches`` are returned (or raised) one per consume() call, then nothing."""

    batches: ClassVar[list[Any]] = []
    commit_error: ClassVar[KafkaException | None] = None
    made: ClassVar[int] = 0

    def __init__(self, _config: dict[str, Any]) -> None:
        FakeConsumer.made += 1
        self.committed: list[Any] = []

    def subscribe(self, _topics: list[str]) -> None:
        pass

    def consume(self, _n: int, timeout: float) -> list[FakeMessage]:
        if FakeConsumer.batches:
            batch = FakeConsumer.batches.pop(0)
            if isinstance(batch, Exception):
                raise batch
            return list(batch)
        time.sleep(min(timeout, 0.02))
        return []

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        assert not asynchronous
        if FakeConsumer.commit_error is not None:
            raise FakeConsumer.commit_error
        self.committed.append(offsets)

    def close(self) -> None:
        pass


class FakeClient:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, qos: int, timeout: float) -> None:  # noqa: ASYNC109 - aiomqtt's signature
        self.published.append((topic, payload))


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(service_module, "Consumer", FakeConsumer)
    monkeypatch.setattr(service_module, "_COMMAND_RESTART_MIN_S", 0.1)
    FakeConsumer.batches = []
    FakeConsumer.commit_error = None
    FakeConsumer.made = 0
    settings = IngestSettings(
        ingest_metrics_port=0,
        kafka_bootstrap_servers="127.0.0.1:1",
        kafka_config={"log_level": "0"},
    )
    svc = IngestService(settings, RULES)
    svc._topics_ready.set()
    svc._client = FakeClient()  # type: ignore[assignment]
    svc._connected.set()
    yield svc
    svc.sink.producer.purge()


def test_a_failed_offset_commit_is_counted_and_the_loop_goes_on(
    service: IngestService, caplog: pytest.LogCaptureFixture
) -> None:
    FakeConsumer.batches = [[FakeMessage(b"car-1", 7)], [FakeMessage(b"car-2", 8)]]
    FakeConsumer.commit_error = KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID))

    async def scenario() -> bool:
        task = asyncio.create_task(service._command_loop(RULE))
        await asyncio.sleep(0.5)
        done = task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return done

    assert not asyncio.run(scenario())
    client = service._client
    assert isinstance(client, FakeClient)
    assert [t for t, _ in client.published] == ["fleet/car-1/commands", "fleet/car-2/commands"]
    failed = service.metrics.commands_commit_failed.labels(rule="cmd")
    assert failed._value.get() == 2
    assert service.metrics.command_loop_crashes.labels(rule="cmd")._value.get() == 0
    assert "committing the offsets of 1 commands of cmd failed" in caplog.text
    assert service.health()[0]


def test_a_crashed_command_loop_is_loud_unhealthy_and_restarted(
    service: IngestService, caplog: pytest.LogCaptureFixture
) -> None:
    FakeConsumer.batches = [RuntimeError("boom"), [FakeMessage(b"car-1")]]

    async def scenario() -> tuple[bool, dict[str, Any], bool]:
        task = asyncio.create_task(service._run_commands(RULE))
        await asyncio.sleep(0.05)
        ok_after_crash, detail = service.health()
        await asyncio.sleep(0.5)  # restarted after 0.1 s, published, committed
        ok_later = service.health()[0]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return ok_after_crash, detail, ok_later

    with caplog.at_level(logging.INFO, logger="ingest"):
        ok_after_crash, detail, ok_later = asyncio.run(scenario())
    assert not ok_after_crash
    assert detail["command_loops_down"] == {"cmd": "RuntimeError: boom"}
    assert detail["status"] == "degraded"
    assert service.metrics.command_loop_crashes.labels(rule="cmd")._value.get() == 1
    assert FakeConsumer.made == 2
    assert ok_later
    client = service._client
    assert isinstance(client, FakeClient)
    assert client.published == [("fleet/car-1/commands", b"unlock")]
    crash = next(r for r in caplog.records if "crashed" in r.getMessage())
    assert crash.levelno == logging.ERROR
    assert crash.exc_info is not None


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        (b"car\x00x", "U+0000"),
        # Mosquitto drops the connection for a topic with a control character or a
        # non-character: every ~31 s, the batch's other commands were sent again.
        (b"car\n7", "U+000A"),
        (b"car\x7f", "U+007F"),
        ("car\u0085".encode(), "U+0085"),
        ("car\ufdd0".encode(), "U+FDD0"),
        ("car\U0010ffff".encode(), "U+10FFFF"),
        (b"k" * 70_000, "65535"),
        (b"car\xff1", "UTF-8"),
        (b"a/b", "'/'"),
        (b"a#", "'#'"),
    ],
    ids=[
        "nul",
        "newline",
        "del",
        "c1",
        "nonchar",
        "plane16-nonchar",
        "too-long",
        "invalid-utf8",
        "slash",
        "hash",
    ],
)
def test_a_key_that_makes_no_mqtt_topic_is_quarantined_as_bad_key(
    service: IngestService, key: bytes, needle: str
) -> None:
    quarantined: list[Outbound] = []

    async def produce_and_wait(out: Outbound) -> None:
        quarantined.append(out)

    service._produce_and_wait = produce_and_wait  # type: ignore[method-assign]
    client = FakeClient()
    asyncio.run(service._publish_command(client, RULE, FakeMessage(key)))  # type: ignore[arg-type]
    assert client.published == []
    (out,) = quarantined
    headers = dict(out.headers)
    assert (out.topic, out.key, out.value) == ("vehicle-commands.quarantine", key, b"unlock")
    assert headers["reason"] == b"bad_key"
    assert needle in headers["detail"].decode()
    assert service.metrics.commands_quarantined.labels(rule="cmd", reason="bad_key")._value.get()


def test_a_key_with_a_byte_order_mark_is_published() -> None:
    assert service_module._key_problem("car\ufeff1") is None


def test_a_quarantined_command_too_large_for_kafka_is_truncated_and_marked(
    service: IngestService,
) -> None:
    quarantined: list[Outbound] = []

    async def produce_and_wait(out: Outbound) -> None:
        quarantined.append(out)

    class Huge(FakeMessage):
        def value(self) -> bytes:
            return b"v" * 1_000_000

    service._produce_and_wait = produce_and_wait  # type: ignore[method-assign]
    asyncio.run(service._publish_command(FakeClient(), RULE, Huge(b"a/b")))  # type: ignore[arg-type]
    (out,) = quarantined
    assert len(out.value) == 512 * 1024
    assert dict(out.headers)["truncated_from_bytes"] == b"1000000"
