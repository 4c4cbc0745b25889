"""The paho adjustments in ingest/_paho.py behave exactly like paho's own code."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest._paho import _SharedTableProperties

pytestmark = pytest.mark.unit


def _props(**values: object) -> Properties:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(p, name, value)
    return p


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"UserProperty": [("a", "1"), ("b", "2")], "ContentType": "json"},
        {"MessageExpiryInterval": 30, "ResponseTopic": "r/1", "CorrelationData": b"\x00"},
    ],
)
def test_shared_table_properties_decode_like_paho(values: dict[str, object]) -> None:
    raw = _props(**values).pack()  # type: ignore[no-untyped-call]
    ours = _SharedTableProperties(PacketTypes.PUBLISH)
    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    assert ours.unpack(raw)[1] == theirs.unpack(raw)[1]  # type: ignore[no-untyped-call]
    assert str(ours) == str(theirs)
    # Reused for a message without properties, nothing of the previous one is left.
    ours.unpack(Properties(PacketTypes.PUBLISH).pack())  # type: ignore[no-untyped-call]
    assert str(ours) == str(Properties(PacketTypes.PUBLISH))  # type: ignore[no-untyped-call]
