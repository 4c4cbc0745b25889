"""Pure routing: one MQTT message + one rule -> the Kafka record to write.

No I/O here, so every decision (adapter, key, topic, timestamp, quarantine reason) is
unit-tested without brokers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, cast

from ingest._rules import MqttToKafkaRule, ValueMode
from telemetry.adapters import DECODING_ADAPTERS, get_adapter
from telemetry.contract import (
    MAX_PAYLOAD_BYTES,
    QUARANTINE_MAX_BYTES,
    ContractError,
    encode,
    encode_decoded,
)

# MQTT 5 allows user properties up to the packet limit (256 MiB); copied into headers, a
# few of them made a record Kafka's client refused outright. Names and values together.
USER_PROPERTIES_MAX_BYTES: Final = 64 * 1024
# Kafka's rule for topic names; a rendered one that breaks it is refused by the client.
_KAFKA_TOPIC: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")
# A record timestamp is an int64 of milliseconds.
_TIMESTAMP_LIMIT: Final = 2**63

Headers = list[tuple[str, bytes]]


# Immutable tuples rather than frozen dataclasses: two are built per message, and a
# frozen dataclass's __init__ (object.__setattr__ per field) cost ~1 us vs ~0.25 us.
class Inbound(NamedTuple):
    """One MQTT message as the bridge sees it."""

    topic: str
    payload: bytes
    qos: int
    dup: bool
    received_ms: int
    user_properties: Sequence[tuple[str, str]] = ()


class Outbound(NamedTuple):
    """One Kafka record to produce.

    Attributes:
        topic: Kafka topic.
        key: Record key (None only for quarantine records without a derivable key).
        value: Record value.
        headers: Record headers.
        timestamp_ms: Record timestamp.
        rule: Name of the rule that produced it.
        reason: Quarantine reason code, None for a normal record.
    """

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int
    rule: str
    reason: str | None = None

    @property
    def quarantined(self) -> bool:
        """Whether this record goes to a quarantine topic."""
        return self.reason is not None


_QOS_BYTES: Final = (b"0", b"1", b"2")


def _headers(rule: MqttToKafkaRule, msg: Inbound) -> Headers:
    out: Headers = []
    for name in rule.headers:
        if name == "mqtt_topic":
            out.append(("mqtt_topic", msg.topic.encode()))
        elif name == "qos":
            out.append(("mqtt_qos", _QOS_BYTES[msg.qos]))
        elif name == "received_at":
            out.append(("received_at", b"%d" % msg.received_ms))
        elif name == "user_properties":
            if msg.user_properties:  # most messages have none: no generator for them
                out.extend((f"mqtt.{k}", v.encode()) for k, v in msg.user_properties)
        elif name == "rule":
            out.append(("rule", rule.name.encode()))
        elif name == "dup":
            out.append(("mqtt_dup", b"1" if msg.dup else b"0"))
    return out


def quarantine(
    rule: MqttToKafkaRule, msg: Inbound, reason: str, detail: str, key: bytes | None = None
) -> Outbound:
    """The quarantine record for a message the rule cannot deliver."""
    value = msg.payload
    headers: Headers = [
        ("reason", reason.encode()),
        ("detail", detail.encode("utf-8", errors="replace")[:1024]),
        ("rule", rule.name.encode()),
        ("mqtt_topic", msg.topic.encode()),
        ("mqtt_qos", str(msg.qos).encode()),
        ("received_at", str(msg.received_ms).encode()),
    ]
    if msg.user_properties:
        # Not copied: they may be what made the record too large for Kafka.
        headers.append(("user_properties_dropped", str(len(msg.user_properties)).encode()))
    if len(value) > QUARANTINE_MAX_BYTES:
        headers.append(("truncated_from_bytes", str(len(value)).encode()))
        value = value[:QUARANTINE_MAX_BYTES]
    return Outbound(rule.quarantine_topic, key, value, headers, msg.received_ms, rule.name, reason)


def route(rule: MqttToKafkaRule, msg: Inbound) -> Outbound:
    """Decide what to write to Kafka for one message matched by ``rule``."""
    parts = msg.topic.split("/")
    record: dict[str, Any] | None = None
    if rule.adapter == "raw":
        if len(msg.payload) > MAX_PAYLOAD_BYTES:
            detail = f"{len(msg.payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
            return quarantine(rule, msg, "oversize", detail)
    else:
        try:
            # Adapters build a fresh dict per payload: nothing else holds it, no copy.
            record = cast("dict[str, Any]", get_adapter(rule.adapter)(msg.payload))
        except ContractError as exc:
            return quarantine(rule, msg, exc.reason, str(exc))
    key = rule.key.render(parts, record)
    if key is None:
        return quarantine(rule, msg, "no_key", f"key template {rule.key.text!r} has no value")
    topic = rule.topic.render(parts, record)
    if topic is None:
        detail = f"topic template {rule.topic.text!r} has no value"
        return quarantine(rule, msg, "no_topic", detail, key.encode())
    if not rule.topic.static and (not _KAFKA_TOPIC.fullmatch(topic) or topic in {".", ".."}):
        detail = (
            f"topic template {rule.topic.text!r} gave {topic[:200]!r} ({len(topic)} chars), "
            "not a Kafka topic name ([A-Za-z0-9._-], at most 249 chars)"
        )
        return quarantine(rule, msg, "bad_topic", detail, key.encode())
    timestamp = msg.received_ms
    if rule.timestamp.field is not None:
        raw_ts = None if record is None else record.get(rule.timestamp.field)
        if type(raw_ts) not in (int, float):
            detail = f"timestamp field {rule.timestamp.field!r} is missing or not a number"
            return quarantine(rule, msg, "no_timestamp", detail, key.encode())
        scaled = raw_ts * rule.timestamp.scale_to_ms  # type: ignore[operator]
        # Also false for NaN and infinity (1e308 s in ms). Below 1 ms: librdkafka stamps
        # a record of timestamp 0 with the current time, and Kafka refuses negative ones.
        if not 1 <= scaled < _TIMESTAMP_LIMIT:
            detail = (
                f"timestamp field {rule.timestamp.field!r} = {raw_ts!r} is not a time "
                "after 1970-01-01T00:00:00.001Z in the int64 millisecond range"
            )
            return quarantine(rule, msg, "bad_timestamp", detail, key.encode())
        timestamp = int(scaled)
    if msg.user_properties and "user_properties" in rule.headers:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in msg.user_properties)
        if size > USER_PROPERTIES_MAX_BYTES:
            detail = (
                f"{len(msg.user_properties)} MQTT user properties of {size} bytes exceed the "
                f"{USER_PROPERTIES_MAX_BYTES}-byte limit for Kafka headers"
            )
            return quarantine(rule, msg, "oversize", detail, key.encode())
    if rule.value is ValueMode.NORMALIZED and record is not None:
        if rule.adapter in DECODING_ADAPTERS:
            value = encode_decoded(record, msg.payload)
        else:
            value = encode(record)
    else:
        value = msg.payload
    return Outbound(topic, key.encode(), value, _headers(rule, msg), timestamp, rule.name)
