"""Routing decisions: key, topic, timestamp, value, headers, quarantine reasons."""

from __future__ import annotations

import orjson
import pytest

from ingest import Inbound, load_rules, parse_rules, route
from simulator import FleetConfig, iter_records
from telemetry.contract import MAX_PAYLOAD_BYTES, parse

from .test_adapters import MQTTX_SAMPLE

pytestmark = pytest.mark.unit

RULES = load_rules()
FLEET = next(r for r in RULES.mqtt_to_kafka if r.name == "fleet-telemetry")
TESLA = next(r for r in RULES.mqtt_to_kafka if r.name == "mqttx-tesla")
RECORD = next(iter(iter_records(FleetConfig(vehicles=1, duration_s=1, seed=2))))


def _inbound(payload: bytes, topic: str = "fleet/veh-00000/telemetry") -> Inbound:
    return Inbound(topic, payload, 1, False, 1_800_000_000_000, [("source", "test")])


def test_v1_message_keyed_by_vehicle_stamped_with_event_time() -> None:
    out = route(FLEET, _inbound(orjson.dumps(RECORD)))
    assert out.reason is None
    assert out.topic == "vehicle-telemetry"
    assert out.key == RECORD["vehicle_id"].encode()
    assert out.timestamp_ms == RECORD["ts"]
    assert parse(out.value) == RECORD
    headers = dict(out.headers)
    assert headers["mqtt_topic"] == b"fleet/veh-00000/telemetry"
    assert headers["mqtt_qos"] == b"1"
    assert headers["received_at"] == b"1800000000000"
    assert headers["mqtt.source"] == b"test"


def test_v1_value_is_the_payload_when_compact_and_compact_json_otherwise() -> None:
    compact = orjson.dumps(RECORD)
    assert route(FLEET, _inbound(compact)).value is compact
    spaced = orjson.dumps(RECORD, option=orjson.OPT_INDENT_2)
    assert route(FLEET, _inbound(spaced)).value == compact
    twice = compact[:-1] + b',"vehicle_id":"veh-99999"}'  # a duplicate key
    out = route(FLEET, _inbound(twice))
    assert out.value == orjson.dumps({**RECORD, "vehicle_id": "veh-99999"})
    assert out.key == b"veh-99999"


def test_tesla_normalized_value_is_the_v1_record() -> None:
    rule = parse_rules(
        '[[mqtt_to_kafka]]\nmqtt="t/+"\nadapter="tesla"\ntopic="t"\nkey="{vehicle_id}"\n'
        'value="normalized"\n'
    ).mqtt_to_kafka[0]
    out = route(rule, _inbound(orjson.dumps(MQTTX_SAMPLE), "t/c1"))
    assert out.reason is None
    assert orjson.loads(out.value)["vehicle_id"] == str(MQTTX_SAMPLE["car_id"])
    assert b"car_id" not in out.value


def test_tesla_message_keeps_raw_payload() -> None:
    payload = orjson.dumps(MQTTX_SAMPLE)
    out = route(TESLA, _inbound(payload, "mqttx/simulate/tesla/client-1"))
    assert out.reason is None
    assert (out.topic, out.key, out.value) == (
        "my-vehicles",
        MQTTX_SAMPLE["car_id"].encode(),
        payload,
    )
    assert out.timestamp_ms == MQTTX_SAMPLE["timestamp"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not_json"),
        (b"[]", "not_object"),
        (orjson.dumps({**RECORD, "speed_kmh": "fast"}), "wrong_type:speed_kmh"),
        (
            orjson.dumps({k: v for k, v in RECORD.items() if k != "vehicle_id"}),
            "missing:vehicle_id",
        ),
        (b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", "oversize"),
        (b"\xc3\x28", "not_json"),
    ],
)
def test_bad_input_is_quarantined_with_reason(payload: bytes, reason: str) -> None:
    out = route(FLEET, _inbound(payload))
    assert out.quarantined
    assert out.reason == reason
    assert out.topic == "vehicle-telemetry.quarantine"
    assert out.value == payload
    headers = dict(out.headers)
    assert headers["reason"] == reason.encode()
    assert headers["detail"]
    assert headers["rule"] == b"fleet-telemetry"


def test_missing_key_and_timestamp_are_quarantined() -> None:
    rules = parse_rules(
        '[[mqtt_to_kafka]]\nmqtt="a/+"\ntopic="t"\nkey="{2}"\n'
        '[[mqtt_to_kafka]]\nmqtt="b/+"\ntopic="u"\nkey="{1}"\ntimestamp="nope:ms"\n'
    )
    no_key = route(rules.mqtt_to_kafka[0], _inbound(orjson.dumps(RECORD), "a/x"))
    assert no_key.reason == "no_key"
    no_ts = route(rules.mqtt_to_kafka[1], _inbound(orjson.dumps(RECORD), "b/x"))
    assert no_ts.reason == "no_timestamp"


def test_raw_adapter_uses_topic_segment_and_receive_time() -> None:
    rule = parse_rules(
        '[[mqtt_to_kafka]]\nmqtt="raw/+"\nadapter="raw"\ntopic="r"\nkey="{1}"\n'
    ).mqtt_to_kafka[0]
    out = route(rule, _inbound(b"\x00\x01anything", "raw/dev-9"))
    assert (out.key, out.value, out.timestamp_ms, out.reason) == (
        b"dev-9",
        b"\x00\x01anything",
        1_800_000_000_000,
        None,
    )


def test_oversize_quarantine_value_is_truncated_and_marked() -> None:
    rule = parse_rules(
        '[[mqtt_to_kafka]]\nmqtt="raw/+"\nadapter="raw"\ntopic="r"\nkey="{1}"\n'
    ).mqtt_to_kafka[0]
    out = route(rule, _inbound(b"x" * 2_000_000, "raw/dev-9"))
    assert out.reason == "oversize"
    assert len(out.value) == 512 * 1024
    assert dict(out.headers)["truncated_from_bytes"] == b"2000000"


@pytest.mark.parametrize(
    "segment",
    ["c" * 600, "car 1", "car:1", "ü", ".."],
    ids=["600-chars", "space", "colon", "non-ascii", "dot-dot"],
)
def test_a_templated_topic_that_is_no_kafka_topic_name_is_quarantined(segment: str) -> None:
    rule = parse_rules(
        '[[mqtt_to_kafka]]\nmqtt="fleet/+/telemetry"\ntopic="{1}"\nkey="{vehicle_id}"\n'
        'quarantine_topic="q"\n'
    ).mqtt_to_kafka[0]
    out = route(rule, _inbound(orjson.dumps(RECORD), f"fleet/{segment}/telemetry"))
    assert out.reason == "bad_topic"
    assert out.topic == "q"
    assert b"not a Kafka topic name" in dict(out.headers)["detail"]
    ok = route(rule, _inbound(orjson.dumps(RECORD), f"fleet/{'c' * 249}/telemetry"))
    assert (ok.reason, ok.topic) == (None, "c" * 249)


@pytest.mark.parametrize(
    ("sent", "unit"),
    [
        ("1e308", "s"),
        ("-1e308", "ms"),
        ("9223372036854775808", "ms"),
        ("10000000000000000", "s"),
        # librdkafka would stamp 0 with the current time; Kafka refuses negative times.
        ("0", "ms"),
        ("0.0004", "s"),
        ("-5", "s"),
    ],
)
def test_a_timestamp_beyond_int64_milliseconds_or_before_1970_is_quarantined(
    sent: str, unit: str
) -> None:
    rule = parse_rules(
        f'[[mqtt_to_kafka]]\nmqtt="fleet/+/telemetry"\ntopic="t"\nkey="{{vehicle_id}}"\n'
        f'timestamp="sent:{unit}"\n'
    ).mqtt_to_kafka[0]
    payload = orjson.dumps(RECORD)[:-1] + b',"sent":' + sent.encode() + b"}"
    out = route(rule, _inbound(payload))
    assert out.reason == "bad_timestamp"
    assert out.key == RECORD["vehicle_id"].encode()
    fine = orjson.dumps(RECORD)[:-1] + b',"sent":1700000000}'
    assert route(rule, _inbound(fine)).timestamp_ms == 1700000000 * (1000 if unit == "s" else 1)


def test_user_properties_over_the_header_limit_are_quarantined() -> None:
    big = [(f"k{i}", "x" * 65000) for i in range(2)]
    msg = Inbound("fleet/veh-00000/telemetry", orjson.dumps(RECORD), 1, False, 1, big)
    out = route(FLEET, msg)
    assert out.reason == "oversize"
    assert b"user properties" in dict(out.headers)["detail"]
    assert not any(name.startswith("mqtt.") for name, _ in out.headers)
    small = Inbound(msg.topic, msg.payload, 1, False, 1, [("k", "x" * 60000)])
    assert route(FLEET, small).reason is None
    # A rule that does not copy them into headers does not care.
    rule = parse_rules(
        '[[mqtt_to_kafka]]\nmqtt="fleet/+/telemetry"\ntopic="t"\nkey="{vehicle_id}"\n'
        'headers=["mqtt_topic"]\n'
    ).mqtt_to_kafka[0]
    assert route(rule, msg).reason is None
