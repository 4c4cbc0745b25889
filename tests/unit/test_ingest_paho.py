"""The paho adjustments in ingest/_paho.py behave exactly like paho's own code."""

from __future__ import annotations

import socket

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest._paho import BufferedSocket, _SharedTableProperties

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


def test_buffered_socket_serves_small_reads_from_one_recv() -> None:
    left, right = socket.socketpair()
    left.setblocking(False)
    try:
        right.sendall(b"\x32\x05hello" + b"x" * 100)
        sock = BufferedSocket(left)
        assert sock.recv(1) == b"\x32"
        assert sock.pending() == 106
        assert sock.recv(1) == b"\x05"
        assert sock.recv(5) == b"hello"
        assert sock.recv(1000) == b"x" * 100
        assert sock.pending() == 0
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        right.close()
        assert sock.recv(1) == b""  # EOF passes through: paho sees the closed connection
        assert sock.fileno() == left.fileno()
    finally:
        left.close()
