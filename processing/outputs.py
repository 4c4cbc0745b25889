"""What processing writes to Kafka: one stream of ``(role, payload)`` outputs.

Quix runs every step as a Python call and pickles the value into every extra branch at
a fork. With one branch per output topic, each window's stats passed five filters and
four copies on the way out; in a profile of the 10 s after a window close at 10,000 cars
that routing cost more than the stats themselves (docs/benchmarks-history.md). So every
output travels in one stream, ``to_topic`` picks the topic by role, and the topic's
serializer (:class:`OutputSerializer`) writes the payload's Kafka value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from quixstreams.dataframe import StreamingDataFrame
from quixstreams.models import Topic
from quixstreams.models.serializers import SerializationContext, Serializer

from telemetry.contract import QUARANTINE_MAX_BYTES

# Roles, and what their payload is.
STATS: Final = "stats"  # a WindowStats dict
SESSIONS: Final = "sessions"  # a SessionRecord dict
ALERTS: Final = "alerts"  # an AlertRecord dict from the per-record detectors
WINDOW_ALERTS: Final = "window_alerts"  # (AlertRecord dict, window start) of a closed window
SHADOW_ALERTS: Final = "shadow_alerts"  # the same, from the shadow model
QUARANTINE: Final = "quarantine"  # the invalid record: {"_invalid", "_detail", "_raw"}
ROLES: Final = frozenset((STATS, SESSIONS, ALERTS, WINDOW_ALERTS, SHADOW_ALERTS, QUARANTINE))
WINDOWED: Final = frozenset((WINDOW_ALERTS, SHADOW_ALERTS))

Output = tuple[str, Any]


def record_of(output: Output) -> Any:
    """The Kafka value of an output: a JSON-serialisable record, or bytes (quarantine)."""
    role, payload = output
    if role in WINDOWED:
        return payload[0]
    if role == QUARANTINE:
        # Cut as ingest cuts it: with its reason headers, it must stay under Kafka's limit.
        return bytes(payload["_raw"][:QUARANTINE_MAX_BYTES])
    return payload


class OutputSerializer(Serializer):
    """A topic's value serializer for outputs: ``inner`` applied to :func:`record_of`.

    Args:
        inner: The serializer of the records, e.g. Quix's ``JSONSerializer()``.
    """

    def __init__(self, inner: Serializer) -> None:
        self._inner = inner

    @property
    def extra_headers(self) -> Any:
        """The inner serializer's extra headers."""
        return self._inner.extra_headers

    def __call__(self, value: Output, ctx: SerializationContext) -> str | bytes:
        """Serialize the record of ``value``."""
        return self._inner(record_of(value), ctx)


def route(outputs: StreamingDataFrame, topics: Mapping[str, Topic]) -> None:
    """Send every output to its role's topic.

    Args:
        outputs: The pipeline's outputs.
        topics: A topic per role; each must serialize values with :class:`OutputSerializer`.

    Raises:
        ValueError: A role has no topic, or a topic would write the ``(role, payload)``
            pair itself (its value serializer is not an :class:`OutputSerializer`).
    """
    missing = ROLES - topics.keys()
    if missing:
        msg = f"no topic for the output roles {sorted(missing)}"
        raise ValueError(msg)
    # Quix keeps the serializer private; a plain JSON one would write ["stats", {...}]
    # to the topic, which every consumer would then refuse.
    plain = sorted(
        role
        for role, topic in topics.items()
        if not isinstance(getattr(topic, "_value_serializer", None), OutputSerializer)
    )
    if plain:
        msg = f"the topics of the output roles {plain} do not serialize with OutputSerializer"
        raise ValueError(msg)
    by_role = dict(topics)
    outputs.to_topic(lambda value, _key, _ts, _headers: by_role[value[0]])
