"""One bad message never ends the MQTT connection: it is quarantined (no broker needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import ingest._service as service_module
from ingest._paho import UndecodableProperties
from ingest._routing import Inbound, Outbound, route
from ingest._rules import parse_rules
from ingest._service import IngestService
from ingest._settings import IngestSettings

pytestmark = pytest.mark.unit

RAW_RULES = '[[mqtt_to_kafka]]\nname="raw"\nmqtt="raw/+"\nadapter="raw"\ntopic="r"\nkey="{1}"\n'


@pytest.fixture
def make_service() -> Iterator[Any]:
    made: list[IngestService] = []

    def make(kafka_config: dict[str, str] | None = None, rules: str = RAW_RULES) -> IngestService:
        settings = IngestSettings(
            ingest_metrics_port=0,
            kafka_bootstrap_servers="127.0.0.1:1",  # never reached: refusals are local
            kafka_config={"log_level": "0", **(kafka_config or {})},
        )
        service = IngestService(settings, parse_rules(rules))
        made.append(service)
        return service

    yield make
    for service in made:
        service.sink.producer.purge()


def _spy(service: IngestService) -> list[tuple[Outbound, KafkaError | None]]:
    """Record every record handed to the sink and whether the client took it."""
    seen: list[tuple[Outbound, KafkaError | None]] = []
    real = service.sink.produce

    def produce(out: Outbound, on_delivery: Any) -> KafkaError | None:
        result = real(out, on_delivery)
        seen.append((out, result))
        return result

    service.sink.produce = produce  # type: ignore[method-assign]
    return seen


def _props(**user: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = list(user.items())
    return props


def test_a_record_the_kafka_client_refuses_is_quarantined_without_its_user_properties(
    make_service: Any,
) -> None:
    async def scenario() -> list[tuple[Outbound, KafkaError | None]]:
        service = make_service({"message.max.bytes": "30000"})
        seen = _spy(service)
        # 20 KB payload + 15 KB of user properties: over the client's message.max.bytes.
        service._on_publish("raw/dev-1", b"x" * 20_000, 1, False, 7, _props(big="y" * 15_000))
        assert len(service.acker) == 1  # waits for Kafka, then acked
        return seen

    seen = asyncio.run(scenario())
    (first, refused), (copy, taken) = seen
    assert first.reason is None
    assert refused is not None
    assert refused.name() == "MSG_SIZE_TOO_LARGE"
    assert taken is None
    assert copy.reason == "kafka:MSG_SIZE_TOO_LARGE"
    assert copy.topic == "r.quarantine"
    headers = dict(copy.headers)
    assert headers["reason"] == b"kafka:MSG_SIZE_TOO_LARGE"
    assert headers["user_properties_dropped"] == b"1"
    assert not any(name.startswith("mqtt.") for name, _ in copy.headers)


def test_a_quarantine_record_kafka_refuses_is_retried_with_backoff_and_counted(
    make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[IngestService, list[tuple[Outbound, KafkaError | None]]]:
        service = make_service({"message.max.bytes": "1000"})
        seen = _spy(service)
        service._on_publish("raw/dev-1", b"x" * 5000, 1, False, 7, None)
        await asyncio.sleep(1.3)  # the first retry after 1 s, the next after 2 s more
        return service, seen

    service, seen = asyncio.run(scenario())
    assert [out.reason for out, _ in seen] == [
        None,
        "kafka:MSG_SIZE_TOO_LARGE",
        "kafka:MSG_SIZE_TOO_LARGE",
    ]
    assert all(err is not None for _, err in seen)
    failed = service.metrics.quarantine_failed.labels(rule="raw", reason="MSG_SIZE_TOO_LARGE")
    assert failed._value.get() == 2
    assert len(service.acker) == 1  # never acknowledged without Kafka
    assert "Kafka refused the quarantine record" in caplog.text


def test_an_exception_in_routing_quarantines_the_message_as_internal(
    make_service: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object) -> Outbound:
        msg = "cannot convert float infinity to integer"
        raise OverflowError(msg)

    monkeypatch.setattr(service_module, "route", broken)

    async def scenario() -> list[tuple[Outbound, KafkaError | None]]:
        service = make_service()
        seen = _spy(service)
        service._on_publish("raw/dev-1", b"payload", 1, False, 7, None)
        return seen

    ((out, err),) = asyncio.run(scenario())
    assert err is None
    assert out.reason == "internal"
    assert out.topic == "r.quarantine"
    assert out.value == b"payload"
    assert b"OverflowError" in dict(out.headers)["detail"]
    assert "routing a message on raw/dev-1 by rule raw failed" in caplog.text


def test_an_exception_while_producing_quarantines_the_message_as_internal(
    make_service: Any,
) -> None:
    async def scenario() -> list[Outbound]:
        service = make_service()
        seen: list[Outbound] = []
        real = service.sink.produce

        def produce(out: Outbound, on_delivery: Any) -> KafkaError | None:
            if out.reason is None:
                msg = "unexpected"
                raise RuntimeError(msg)
            seen.append(out)
            return real(out, on_delivery)

        service.sink.produce = produce
        service._on_publish("raw/dev-1", b"payload", 1, False, 7, None)
        return seen

    (out,) = asyncio.run(scenario())
    assert out.reason == "internal"
    assert out.key == b"dev-1"


def test_a_message_whose_properties_cannot_be_decoded_is_quarantined(make_service: Any) -> None:
    async def scenario() -> list[tuple[Outbound, KafkaError | None]]:
        service = make_service()
        seen = _spy(service)
        props = UndecodableProperties("MalformedPacket: Invalid UTF-8 string")
        service._on_publish("raw/dev-1", b"payload", 1, False, 7, props)
        assert len(service.acker) == 1
        return seen

    ((out, err),) = asyncio.run(scenario())
    assert err is None
    assert out.reason == "bad_properties"
    assert out.value == b"payload"
    assert b"Invalid UTF-8" in dict(out.headers)["detail"]


@pytest.mark.parametrize(
    ("code", "quarantined"),
    [
        (KafkaError.NOT_ENOUGH_REPLICAS, False),
        (KafkaError._MSG_TIMED_OUT, False),
        (KafkaError.REQUEST_TIMED_OUT, False),
        (KafkaError.MSG_SIZE_TOO_LARGE, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, True),
    ],
    ids=["not-enough-replicas", "msg-timed-out", "request-timed-out", "too-large", "denied"],
)
def test_a_transient_delivery_error_is_retried_a_permanent_one_quarantined(
    make_service: Any, code: int, quarantined: bool
) -> None:
    async def scenario() -> list[tuple[Outbound, KafkaError | None]]:
        service = make_service()
        rule = service.rules.mqtt_to_kafka[0]
        inbound = Inbound("raw/dev-1", b"payload", 0, False, 1)
        out = route(rule, inbound)
        seen = _spy(service)
        service._delivery_failed(rule, inbound, out, None, KafkaError(code))
        await asyncio.sleep(1.2)  # a retry comes after 1 s
        return seen

    reasons = [out.reason for out, _ in asyncio.run(scenario())]
    name = KafkaError(code).name()
    assert reasons == ([f"kafka:{name}"] if quarantined else [None])


def test_an_exception_in_a_delivery_callback_does_not_end_the_poll_loop(
    make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[bool, int]:
        service = make_service()
        polls = 0

        def poll() -> int:
            nonlocal polls
            polls += 1
            if polls == 1:
                msg = "a bug in on_delivery"
                raise RuntimeError(msg)
            return 0

        service.sink.poll = poll
        task = asyncio.create_task(service._poll_loop())
        await asyncio.sleep(0.2)
        alive = not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return alive, polls

    alive, polls = asyncio.run(scenario())
    assert alive
    assert polls > 1
    assert "a Kafka delivery callback failed" in caplog.text


def test_with_overlapping_filters_each_copy_goes_to_the_rules_of_its_subscription(
    make_service: Any,
) -> None:
    # Mosquitto sends one copy per matching subscription, named by its identifier.
    everything = RAW_RULES.replace('name="raw"', 'name="all"').replace('"raw/+"', '"#"')
    overlapping = RAW_RULES + everything

    def copy(*ids: int) -> Properties:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if ids:
            props.SubscriptionIdentifier = list(ids)
        return props

    async def scenario() -> list[list[str]]:
        service = make_service(rules=overlapping)
        raw, everything = service._sub_ids["raw/+"], service._sub_ids["#"]
        stale = max(raw, everything) + 1
        copies = [copy(raw), copy(everything), copy(raw, everything), copy(), copy(stale)]
        seen = _spy(service)
        rules_of = []
        for mid, props in enumerate(copies, 1):
            seen.clear()
            service._on_publish("raw/dev-1", b"{}", 1, False, mid, props)
            rules_of.append(sorted(out.rule for out, _ in seen))
        return rules_of

    assert asyncio.run(scenario()) == [
        ["raw"],
        ["all"],
        ["all", "raw"],
        ["all", "raw"],  # no identifier: every matching rule (a duplicate, never a loss)
        # A subscription of rules since changed (queued while ingest was down): every
        # matching rule, since the current subscriptions may not have had a copy.
        ["all", "raw"],
    ]
