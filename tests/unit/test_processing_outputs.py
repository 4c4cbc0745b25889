"""Processing's outputs: each role's Kafka value, its serializer and the topic it goes to."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from quixstreams.models import Topic
from quixstreams.models.serializers import SerializationContext
from quixstreams.models.serializers.json import JSONSerializer
from quixstreams.models.serializers.simple_types import BytesSerializer

from processing.outputs import (
    ALERTS,
    QUARANTINE,
    ROLES,
    SESSIONS,
    SHADOW_ALERTS,
    STATS,
    WINDOW_ALERTS,
    OutputSerializer,
    record_of,
    route,
)

pytestmark = pytest.mark.unit

ALERT = {"vehicle_id": "car-1", "kind": "overheat", "status": "raised"}
CTX = SerializationContext(topic="out", field="value")


@pytest.mark.parametrize(
    ("output", "record"),
    [
        ((STATS, {"window_start": 0}), {"window_start": 0}),
        ((SESSIONS, {"kind": "drive"}), {"kind": "drive"}),
        ((ALERTS, ALERT), ALERT),
        ((WINDOW_ALERTS, (ALERT, 60_000)), ALERT),
        ((SHADOW_ALERTS, (ALERT, 60_000)), ALERT),
        ((QUARANTINE, {"_invalid": "bad_json", "_detail": "x", "_raw": bytearray(b"{")}), b"{"),
    ],
)
def test_each_role_writes_its_record(output: tuple[str, Any], record: Any) -> None:
    assert record_of(output) == record
    assert output[0] in ROLES


def test_the_serializers_write_the_record_only() -> None:
    json_out = OutputSerializer(JSONSerializer())
    assert orjson.loads(json_out((WINDOW_ALERTS, (ALERT, 60_000)), CTX)) == ALERT
    assert orjson.loads(json_out((STATS, {"samples": 3}), CTX)) == {"samples": 3}
    raw = OutputSerializer(BytesSerializer())
    bad = {"_invalid": "bad_utf8", "_detail": "d", "_raw": b"\xff"}
    assert raw((QUARANTINE, bad), CTX) == b"\xff"
    assert json_out.extra_headers == JSONSerializer().extra_headers


class _Outputs:
    """Records what ``route`` hands to ``to_topic``."""

    def __init__(self) -> None:
        self.pick: Any = None

    def to_topic(self, topic: Any) -> _Outputs:
        self.pick = topic
        return self


def _topic(name: str) -> Topic:
    return Topic(name, value_serializer=OutputSerializer(JSONSerializer()))


def test_route_sends_each_role_to_its_topic() -> None:
    topics = {role: _topic(f"t-{role}") for role in ROLES}
    topics[WINDOW_ALERTS] = topics[ALERTS]
    outputs = _Outputs()
    route(outputs, topics)  # type: ignore[arg-type]
    for role in ROLES:
        assert outputs.pick((role, None), b"car-1", 0, []) is topics[role]


def test_route_refuses_a_role_without_a_topic() -> None:
    topics = {role: _topic(f"t-{role}") for role in ROLES - {SHADOW_ALERTS, QUARANTINE}}
    with pytest.raises(ValueError, match=r"no topic for the output roles \['quarantine', "):
        route(_Outputs(), topics)  # type: ignore[arg-type]


def test_route_refuses_a_topic_that_would_write_the_role_too() -> None:
    topics = {role: _topic(f"t-{role}") for role in ROLES}
    topics[STATS] = Topic("t-stats-json", value_serializer="json")
    outputs = _Outputs()
    with pytest.raises(ValueError, match=r"\['stats'\] do not serialize with OutputSerializer"):
        route(outputs, topics)  # type: ignore[arg-type]
    assert outputs.pick is None
