"""Rules files: the default parses; broken files are rejected with line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest import RulesError, load_rules, parse_rules
from ingest._rules import Template, TimestampSpec, ValueMode, filters_overlap, subscription_ids

pytestmark = pytest.mark.unit

GOOD = """
[[mqtt_to_kafka]]
name = "a"
mqtt = "site/+/car/+/telemetry"
share_group = "ingest"
adapter = "v1"
topic = "telemetry-{1}"
quarantine_topic = "telemetry.quarantine"
key = "{3}"
timestamp = "ts:ms"

[[kafka_to_mqtt]]
kafka = "commands"
mqtt = "fleet/{key}/commands"
"""


def test_default_rules_cover_v1_and_the_seed_demo() -> None:
    rules = load_rules()
    by_name = {r.name: r for r in rules.mqtt_to_kafka}
    fleet = by_name["fleet-telemetry"]
    assert (fleet.mqtt, fleet.adapter, fleet.topic.text, fleet.key.fields) == (
        "fleet/+/telemetry", "v1", "vehicle-telemetry", ("vehicle_id",),
    )  # fmt: skip
    assert fleet.timestamp == TimestampSpec("ts", 1.0)
    assert fleet.quarantine_topic == "vehicle-telemetry.quarantine"
    tesla = by_name["mqttx-tesla"]
    assert (tesla.mqtt, tesla.adapter, tesla.topic.text, tesla.value) == (
        "mqttx/simulate/tesla/+", "tesla", "my-vehicles", ValueMode.RAW,
    )  # fmt: skip
    assert rules.kafka_to_mqtt[0].mqtt.text == "fleet/{key}/commands"


TOPIC_PARTS = ["site", "berlin", "car", "c1", "telemetry"]


def test_full_rule() -> None:
    rules = parse_rules(GOOD)
    rule = rules.mqtt_to_kafka[0]
    assert rule.subscription == "$share/ingest/site/+/car/+/telemetry"
    assert rule.topic.render(TOPIC_PARTS, None) == "telemetry-berlin"
    assert rule.key.render(TOPIC_PARTS, None) == "c1"
    assert rules.kafka_to_mqtt[0].name == "command-1"
    assert rules.kafka_to_mqtt[0].offset_reset == "earliest"


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            '[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1}"\nadapter = "nope"\n',
            5,
            "adapter",
        ),
        (
            '[[mqtt_to_kafka]]\nmqtt = "a/#/b"\ntopic = "t"\nkey = "{1}"\n',
            2,
            "invalid MQTT topic filter",
        ),
        ('[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\n', 1, "missing required key 'key'"),
        ('[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1}"\nqos = 3\n', 5, "qos"),
        (
            '[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1}"\n\nqos = 2\n',
            6,
            "qos = 2 is not supported for MQTT -> Kafka",
        ),
        (
            '[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1}"\ncolour = "red"\n',
            5,
            "unknown key",
        ),
        ('[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1!r}"\n', 4, "conversion"),
        (
            '[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t-{vehicle_id}"\nkey = "{1}"\n',
            3,
            "quarantine_topic",
        ),
        ('[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{x}"\nadapter = "raw"\n', 4, "raw"),
        (
            '[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1}"\ntimestamp = "ts:h"\n',
            5,
            "timestamp",
        ),
        (
            '\n\n[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "bad topic"\nkey = "{1}"\n',
            5,
            "not a valid Kafka topic",
        ),
        ('[[kafka_to_mqtt]]\nkafka = "c"\nmqtt = "fleet/{vehicle}/cmd"\n', 3, "{key}"),
        ('[[kafka_to_mqtt]]\nkafka = "c"\nmqtt = "fleet/+/cmd"\n', 3, "wildcards"),
        # Characters Mosquitto refuses: every command, or the subscription, would cost
        # the connection.
        ('[[kafka_to_mqtt]]\nkafka = "c"\nmqtt = "fleet/{key}/\\u0085"\n', 3, "U+0085"),
        ('[[kafka_to_mqtt]]\nkafka = "c"\nmqtt = "fleet\\t/{key}"\n', 3, "U+0009"),
        ('[[mqtt_to_kafka]]\nmqtt = "a/\\uFDD0/+"\ntopic = "t"\nkey = "{2}"\n', 2, "U+FDD0"),
        (
            '[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1}"\nheaders = ["x"]\n',
            5,
            "unknown header",
        ),
        (
            '[[mqtt_to_kafka]]\nmqtt = "a/+"\ntopic = "t"\nkey = "{1}"\n\n'
            "[[mqtt_to_kafka]]\nmqtt = [1]\n",
            7,
            "str",
        ),
        ("x = [\n", 1, ""),
        ("[other]\n", 1, "unknown section"),
    ],
)
def test_broken_rules_name_line_and_reason(text: str, line: int, needle: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.toml")
    assert info.value.line == line, info.value
    assert needle in info.value.reason
    assert str(info.value).startswith(f"rules.toml:{line}: ")


def test_empty_and_duplicate_names() -> None:
    with pytest.raises(RulesError, match="no rules"):
        parse_rules("")
    one = '[[kafka_to_mqtt]]\nname="x"\nkafka="{0}"\nmqtt="m/{{key}}"\n'
    dup = one.format("a") + one.format("b")
    with pytest.raises(RulesError, match="used twice"):
        parse_rules(dup)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "nope.toml")


def test_template_rendering() -> None:
    template = Template.parse("fleet-{0}-{vehicle_id}")
    assert template.render(["eu", "x"], {"vehicle_id": "car-1"}) == "fleet-eu-car-1"
    assert template.render(["eu"], {"vehicle_id": None}) is None
    assert template.render([""], {"vehicle_id": "c"}) is None
    assert Template.parse("static").static


def test_qos_2_is_refused_for_mqtt_to_kafka_only_and_the_reason_says_why() -> None:
    with pytest.raises(RulesError) as info:
        parse_rules('[[mqtt_to_kafka]]\nmqtt="a/+"\ntopic="t"\nkey="{1}"\nqos=2\n')
    assert "use qos = 1" in info.value.reason
    assert "PUBACK is sent only after Kafka confirmed" in info.value.reason
    commands = parse_rules('[[kafka_to_mqtt]]\nkafka="c"\nmqtt="m/{key}"\nqos=2\n')
    assert commands.kafka_to_mqtt[0].qos == 2


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("fleet/+/telemetry", "fleet/#", True),
        ("fleet/+/telemetry", "fleet/car1/+", True),
        ("fleet/+/telemetry", "fleet/+/commands", False),
        ("fleet/#", "fleet", True),  # "#" also matches its parent level
        ("fleet/+", "fleet", False),
        ("fleet/a/b", "fleet/a", False),
        ("#", "anything/at/all", True),
        ("a/+/c", "+/b/+", True),
        ("a/b", "a/b", True),
        ("x/#", "y/#", False),
    ],
)
def test_filters_overlap(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(a, b) is overlap
    assert filters_overlap(b, a) is overlap


def test_overlapping_subscriptions_are_found_also_through_share_groups() -> None:
    base = 'adapter = "v1"\ntopic = "t"\nkey = "{1}"\n'
    rules = parse_rules(
        f'[[mqtt_to_kafka]]\nname = "a"\nmqtt = "fleet/+/telemetry"\n{base}'
        f'[[mqtt_to_kafka]]\nname = "b"\nmqtt = "fleet/+/telemetry"\n{base}'
        f'[[mqtt_to_kafka]]\nname = "c"\nmqtt = "fleet/#"\nshare_group = "g"\n{base}'
        f'[[mqtt_to_kafka]]\nname = "d"\nmqtt = "other/+"\n{base}'
    )
    assert rules.subscriptions() == ("fleet/+/telemetry", "$share/g/fleet/#", "other/+")
    assert rules.overlapping_subscriptions() == [("fleet/+/telemetry", "$share/g/fleet/#")]
    assert load_rules().overlapping_subscriptions() == []  # the packaged rules: none


def test_subscription_ids_do_not_depend_on_rule_order() -> None:
    # Queued messages carry the identifiers of the run that subscribed: they must still
    # name the same subscription after the rules were edited and ingest restarted.
    before = subscription_ids(("fleet/+/telemetry", "fleet/#", "$share/g/fleet/#"))
    after = subscription_ids(("fleet/#", "new/+", "fleet/+/telemetry"))
    assert before["fleet/#"] == after["fleet/#"]
    assert before["fleet/+/telemetry"] == after["fleet/+/telemetry"]
    assert len(set(before.values())) == 3
    assert all(1 <= i <= 268_435_455 for i in (*before.values(), *after.values()))
