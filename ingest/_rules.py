"""Declarative bridge rules (TOML): which MQTT topics go to which Kafka topics, and back.

A rules file has ``[[mqtt_to_kafka]]`` and ``[[kafka_to_mqtt]]`` tables; see
``ingest/rules.toml`` (the default) and docs/ingest.md. Templates use ``{N}`` for MQTT
topic segment N (0-based) and ``{name}`` for a field of the normalised payload
(Kafka -> MQTT templates use ``{key}`` and ``{topic}``).
"""

from __future__ import annotations

import re
import string
import tomllib
import zlib
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Final

from ingest.errors import RulesError
from telemetry.adapters import ADAPTERS

DEFAULT_RULES: Final = "rules.toml"
HEADER_CHOICES: Final = ("mqtt_topic", "qos", "received_at", "user_properties", "rule", "dup")
_TIME_UNITS: Final = {"ms": 1, "s": 1000, "us": 0.001}
_TOPIC_OK: Final = re.compile(r"[A-Za-z0-9._-]+")
_NO_QOS_2: Final = (
    "qos = 2 is not supported for MQTT -> Kafka: paho answers a QoS 2 PUBLISH with PUBREC "
    "as soon as it reads it, before Kafka has the message, and a PUBREL after a reconnect "
    "gets no PUBCOMP, so messages would be lost; use qos = 1, which is at-least-once here "
    "(the PUBACK is sent only after Kafka confirmed the message)"
)


class ValueMode(StrEnum):
    """What the Kafka record value carries."""

    NORMALIZED = "normalized"
    RAW = "raw"


@dataclass(frozen=True, slots=True)
class Template:
    """A ``str.format``-style template over topic segments and payload fields.

    Attributes:
        text: The template as written.
        segments: Topic segment indexes it uses.
        fields: Payload fields it uses.
    """

    text: str
    segments: tuple[int, ...]
    fields: tuple[str, ...]
    parts: tuple[str | int | tuple[str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse and check a template.

        Raises:
            ValueError: The template is malformed.
        """
        segments: list[int] = []
        fields: list[str] = []
        # Literal text as str, a topic segment as int, a payload field as a 1-tuple.
        parts: list[str | int | tuple[str]] = []
        for literal, name, spec, conversion in string.Formatter().parse(text):
            if literal:
                parts.append(literal)
            if name is None:
                continue
            if spec or conversion:
                msg = f"placeholder {{{name}}} may not have a format spec or conversion"
                raise ValueError(msg)
            if name.isdigit():
                segments.append(int(name))
                parts.append(int(name))
            elif name.isidentifier():
                fields.append(name)
                parts.append((name,))
            else:
                msg = f"placeholder {{{name}}} is neither a topic segment number nor a field name"
                raise ValueError(msg)
        return cls(text, tuple(segments), tuple(fields), tuple(parts))

    @property
    def static(self) -> bool:
        """True when the template has no placeholders."""
        return not self.segments and not self.fields

    def render(self, topic_parts: list[str], payload: dict[str, Any] | None) -> str | None:
        """Fill the template; None when a segment or field is missing or empty."""
        if self.static:
            return self.text
        out: list[str] = []
        for part in self.parts:
            if type(part) is str:
                out.append(part)
            elif type(part) is int:
                if part >= len(topic_parts) or not topic_parts[part]:
                    return None
                out.append(topic_parts[part])
            else:
                value = None if payload is None else payload.get(part[0])  # type: ignore[index]
                if value is None or value == "":
                    return None
                out.append(str(value))
        return "".join(out)


@dataclass(frozen=True, slots=True)
class TimestampSpec:
    """Where the Kafka record timestamp comes from: a payload field with a unit, or receive time."""

    field: str | None
    scale_to_ms: float = 1.0

    @classmethod
    def parse(cls, text: str) -> TimestampSpec:
        """Parse ``receive`` or ``<field>:<ms|s|us>``.

        Raises:
            ValueError: Malformed spec.
        """
        if text == "receive":
            return cls(None)
        name, _, unit = text.partition(":")
        unit = unit or "ms"
        if not name.isidentifier() or unit not in _TIME_UNITS:
            msg = f"timestamp must be 'receive' or '<field>:<ms|s|us>', got {text!r}"
            raise ValueError(msg)
        return cls(name, _TIME_UNITS[unit])


@dataclass(frozen=True, slots=True)
class MqttToKafkaRule:
    """One MQTT -> Kafka bridge."""

    name: str
    mqtt: str
    share_group: str | None
    qos: int
    adapter: str
    topic: Template
    key: Template
    timestamp: TimestampSpec
    value: ValueMode
    headers: tuple[str, ...]
    quarantine_topic: str

    @property
    def subscription(self) -> str:
        """The filter to subscribe to (with the MQTT 5 shared-subscription prefix if any)."""
        if self.share_group:
            return f"$share/{self.share_group}/{self.mqtt}"
        return self.mqtt


@dataclass(frozen=True, slots=True)
class KafkaToMqttRule:
    """One Kafka -> MQTT bridge (e.g. commands to cars)."""

    name: str
    kafka: str
    mqtt: Template
    qos: int
    group: str
    offset_reset: str


@dataclass(frozen=True, slots=True)
class RuleSet:
    """All rules of one ingest process."""

    mqtt_to_kafka: tuple[MqttToKafkaRule, ...]
    kafka_to_mqtt: tuple[KafkaToMqttRule, ...]
    source: str

    def subscriptions(self) -> tuple[str, ...]:
        """The distinct subscriptions of the MQTT -> Kafka rules, in rule order."""
        return tuple(dict.fromkeys(r.subscription for r in self.mqtt_to_kafka))

    def overlapping_subscriptions(self) -> list[tuple[str, str]]:
        """Pairs of subscriptions some topic name matches both.

        The broker sends a client one copy of a message per subscription it matches
        (Mosquitto 2 does), so such rules need subscription identifiers to tell the
        copies apart (see docs/ingest.md).
        """
        subs = self.subscriptions()
        return [
            (a, b)
            for i, a in enumerate(subs)
            for b in subs[i + 1 :]
            if filters_overlap(_plain_filter(a), _plain_filter(b))
        ]


_MAX_SUBSCRIPTION_ID: Final = 268_435_455  # MQTT 5: a variable byte integer, 1 and up


def subscription_ids(subscriptions: tuple[str, ...]) -> dict[str, int]:
    """An MQTT 5 subscription identifier per subscription, the same in every run.

    Messages the broker queued for a persistent session carry the identifiers of the
    subscriptions they were queued under, from before a restart: numbering by rule order
    would give them to another subscription after an edit of the rules.
    """
    ids: dict[str, int] = {}
    taken: set[int] = set()
    for sub in subscriptions:
        sub_id = zlib.crc32(sub.encode()) % _MAX_SUBSCRIPTION_ID + 1
        while sub_id in taken:  # a collision: deterministic for the same rules
            sub_id = sub_id % _MAX_SUBSCRIPTION_ID + 1
        taken.add(sub_id)
        ids[sub] = sub_id
    return ids


def _plain_filter(subscription: str) -> str:
    """The topic filter of a subscription, without a ``$share/<group>/`` prefix."""
    if subscription.startswith("$share/"):
        return subscription.split("/", 2)[2]
    return subscription


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic name matches both MQTT topic filters ``a`` and ``b``.

    Errs towards True (e.g. ``+`` is taken to match ``$SYS`` too): a false overlap only
    costs subscription identifiers, a missed one writes messages twice.
    """
    la, lb = a.split("/"), b.split("/")
    for x, y in zip(la, lb, strict=False):
        if x == "#" or y == "#":
            return True
        if "+" not in (x, y) and x != y:
            return False
    # "a/#" also matches "a": a longer filter overlaps if all it adds is "#".
    longer = la if len(la) > len(lb) else lb
    return len(la) == len(lb) or longer[min(len(la), len(lb)) :] == ["#"]


def _line_of(text: str, table: str, index: int, key: str | None) -> int | None:
    """1-based line of the index-th ``[[table]]`` (or of ``key`` inside it)."""
    lines = text.splitlines()
    header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
    starts = [i for i, line in enumerate(lines) if header.match(line)]
    if index >= len(starts):
        return None
    start = starts[index]
    if key is None:
        return start + 1
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i in range(start + 1, len(lines)):
        if lines[i].lstrip().startswith("["):
            break
        if key_re.match(lines[i]):
            return i + 1
    return start + 1


class _Table:
    """Typed access to one rule table that reports errors with their line."""

    def __init__(
        self, data: dict[str, Any], text: str, source: str, table: str, index: int
    ) -> None:
        self.data = data
        self.text = text
        self.source = source
        self.table = table
        self.index = index

    def fail(self, key: str | None, reason: str) -> RulesError:
        line = _line_of(self.text, self.table, self.index, key)
        return RulesError(self.source, line, f"[[{self.table}]] #{self.index + 1}: {reason}")

    def get(
        self, key: str, kind: type, default: Any = ..., choices: tuple[Any, ...] | None = None
    ) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(None, f"missing required key '{key}'")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"'{key}' must be {kind.__name__}, got {type(value).__name__}")
        if choices is not None and value not in choices:
            raise self.fail(
                key, f"'{key}' must be one of {', '.join(map(str, choices))}, got {value!r}"
            )
        return value

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.fail(key, f"unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")


_M2K_KEYS: Final = {
    "name", "mqtt", "share_group", "qos", "adapter", "topic", "key", "timestamp", "value",
    "headers", "quarantine_topic",
}  # fmt: skip
_K2M_KEYS: Final = {"name", "kafka", "mqtt", "qos", "group", "offset_reset"}


_MQTT_TOPIC_MAX_BYTES: Final = 65_535
# Code points the MQTT spec says a string should not hold and Mosquitto refuses in a
# topic (mosquitto_validate_utf8): control characters and non-characters. A PUBLISH or
# SUBSCRIBE with one is a malformed packet, and the broker drops the whole connection.
_MQTT_REFUSED_CHARS: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` (a topic name or filter) is not one MQTT brokers accept, or None."""
    if len(topic.encode()) > _MQTT_TOPIC_MAX_BYTES:
        return f"the MQTT topic would be {len(topic.encode())} bytes (at most 65535)"
    refused = _MQTT_REFUSED_CHARS.search(topic)
    if refused is not None:
        return f"the MQTT topic contains U+{ord(refused.group()):04X}, which MQTT brokers refuse"
    return None


def valid_levels(topic_filter: str) -> bool:
    """Whether the wildcards of a topic filter are where MQTT allows them.

    ``+`` only as a whole level, ``#`` only as the whole last level.
    """
    levels = topic_filter.split("/")
    return all(
        ("+" not in level or level == "+")
        and ("#" not in level or (level == "#" and i == len(levels) - 1))
        for i, level in enumerate(levels)
    )


def _check_filter(t: _Table, filt: str) -> None:
    problem = topic_problem(filt)
    if problem is not None:
        raise t.fail("mqtt", problem)
    if not valid_levels(filt):
        raise t.fail("mqtt", f"invalid MQTT topic filter {filt!r}")
    if filt.startswith("$share/"):
        raise t.fail("mqtt", "use share_group = '...' instead of a $share/ prefix")


def _parse_m2k(t: _Table) -> MqttToKafkaRule:
    t.check_keys(_M2K_KEYS)
    mqtt_filter = t.get("mqtt", str)
    _check_filter(t, mqtt_filter)
    adapter = t.get("adapter", str, "v1", choices=(*sorted(ADAPTERS), "raw"))
    value = ValueMode(
        t.get("value", str, "raw" if adapter == "raw" else "normalized", choices=tuple(ValueMode))
    )
    if adapter == "raw" and value is ValueMode.NORMALIZED:
        raise t.fail("value", "adapter 'raw' has no normalised value; use value = 'raw'")
    templates: dict[str, Template] = {}
    for key in ("topic", "key"):
        try:
            templates[key] = Template.parse(t.get(key, str))
        except ValueError as exc:
            raise t.fail(key, str(exc)) from None
        if adapter == "raw" and templates[key].fields:
            raise t.fail(key, "adapter 'raw' does not parse the payload: use topic segments only")
    try:
        timestamp = TimestampSpec.parse(t.get("timestamp", str, "receive"))
    except ValueError as exc:
        raise t.fail("timestamp", str(exc)) from None
    if adapter == "raw" and timestamp.field is not None:
        raise t.fail("timestamp", "adapter 'raw' does not parse the payload: use 'receive'")
    headers = t.get("headers", list, ["mqtt_topic", "qos", "received_at", "user_properties"])
    for header in headers:
        if header not in HEADER_CHOICES:
            raise t.fail(
                "headers", f"unknown header {header!r} (choose from {', '.join(HEADER_CHOICES)})"
            )
    topic = templates["topic"]
    default_quarantine = f"{topic.text}.quarantine" if topic.static else None
    quarantine = t.get("quarantine_topic", str, default_quarantine)
    if quarantine is None:
        raise t.fail("topic", "a templated topic needs an explicit quarantine_topic")
    for name in ([topic.text] if topic.static else []) + [quarantine]:
        if not _TOPIC_OK.fullmatch(name):
            raise t.fail("topic", f"{name!r} is not a valid Kafka topic name")
    share_group = t.get("share_group", str, None)
    if share_group is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", share_group):
        raise t.fail("share_group", "share_group must be [A-Za-z0-9_-]+")
    qos = t.get("qos", int, 1, choices=(0, 1, 2))
    if qos == 2:
        raise t.fail("qos", _NO_QOS_2)
    return MqttToKafkaRule(
        name=t.get("name", str, f"rule-{t.index + 1}"),
        mqtt=mqtt_filter,
        share_group=share_group,
        qos=qos,
        adapter=adapter,
        topic=topic,
        key=templates["key"],
        timestamp=timestamp,
        value=value,
        headers=tuple(headers),
        quarantine_topic=quarantine,
    )


def _parse_k2m(t: _Table) -> KafkaToMqttRule:
    t.check_keys(_K2M_KEYS)
    try:
        template = Template.parse(t.get("mqtt", str))
    except ValueError as exc:
        raise t.fail("mqtt", str(exc)) from None
    if template.segments or set(template.fields) - {"key", "topic"}:
        raise t.fail("mqtt", "Kafka -> MQTT templates may only use {key} and {topic}")
    if "+" in template.text or "#" in template.text:
        raise t.fail("mqtt", "an MQTT topic to publish to cannot contain wildcards")
    # The placeholders' values are checked per command; the template's own text here.
    problem = topic_problem(template.text)
    if problem is not None:
        raise t.fail("mqtt", problem)
    kafka = t.get("kafka", str)
    if not _TOPIC_OK.fullmatch(kafka):
        raise t.fail("kafka", f"{kafka!r} is not a valid Kafka topic name")
    return KafkaToMqttRule(
        name=t.get("name", str, f"command-{t.index + 1}"),
        kafka=kafka,
        mqtt=template,
        qos=t.get("qos", int, 1, choices=(0, 1, 2)),
        group=t.get("group", str, "fleetstream-ingest-commands"),
        offset_reset=t.get("offset_reset", str, "earliest", choices=("earliest", "latest")),
    )


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse a rules document.

    Raises:
        RulesError: With the line and the reason of the first problem.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        if match:
            line: int | None = int(match.group(1))
        elif "end of document" in str(exc):
            line = max(1, len(text.splitlines()))
        else:
            line = None
        raise RulesError(source, line, str(exc)) from None
    for key in data:
        if key not in {"mqtt_to_kafka", "kafka_to_mqtt"}:
            line = next((i + 1 for i, ln in enumerate(text.splitlines()) if key in ln), None)
            raise RulesError(
                source, line, f"unknown section '{key}' (expected mqtt_to_kafka, kafka_to_mqtt)"
            )
    m2k_tables = data.get("mqtt_to_kafka", [])
    k2m_tables = data.get("kafka_to_mqtt", [])
    if not isinstance(m2k_tables, list) or not isinstance(k2m_tables, list):
        raise RulesError(
            source, None, "use [[mqtt_to_kafka]] / [[kafka_to_mqtt]] (arrays of tables)"
        )
    m2k = tuple(
        _parse_m2k(_Table(d, text, source, "mqtt_to_kafka", i)) for i, d in enumerate(m2k_tables)
    )
    k2m = tuple(
        _parse_k2m(_Table(d, text, source, "kafka_to_mqtt", i)) for i, d in enumerate(k2m_tables)
    )
    if not m2k and not k2m:
        raise RulesError(
            source, None, "no rules: add at least one [[mqtt_to_kafka]] or [[kafka_to_mqtt]]"
        )
    names = [r.name for r in m2k] + [r.name for r in k2m]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise RulesError(source, None, f"rule name {duplicate!r} is used twice")
    return RuleSet(m2k, k2m, source)


def load_rules(path: Path | None = None) -> RuleSet:
    """Load a rules file, or the default shipped with the package.

    Raises:
        RulesError: The file is missing or invalid.
    """
    if path is None:
        text = (resources.files("ingest") / DEFAULT_RULES).read_text("utf-8")
        return parse_rules(text, f"<default {DEFAULT_RULES}>")
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise RulesError(str(path), None, f"cannot read rules file: {exc}") from None
    return parse_rules(text, str(path))
