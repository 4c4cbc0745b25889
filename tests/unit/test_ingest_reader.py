"""ingest/_paho.py's chunk reader decodes what paho's own reader decodes, however split."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import paho.mqtt.client as mqtt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest._paho import _GATHER_FROM, UndecodableProperties, _ChunkReader
from telemetry.mqttwire import encode_length

pytestmark = pytest.mark.unit

Seen = tuple[str, bytes, int, bool, int, str | None]


def _publish(
    topic: str, payload: bytes, qos: int, mid: int, *, dup: bool = False, **props: Any
) -> bytes:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in props.items():
        setattr(p, name, value)
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (struct.pack("!H", mid) if qos else b"")
    body += p.pack() + payload  # type: ignore[no-untyped-call]
    return bytes([0x30 | (dup << 3) | (qos << 1)]) + encode_length(len(body)) + bytes(body)


PINGRESP = b"\xd0\x00"

STREAM = [
    _publish("fleet/car-1/telemetry", b'{"a": 1}', 1, 1),
    _publish("fleet/car-2/telemetry", b"", 0, 0),
    PINGRESP,
    _publish("fleet/car-3/telemetry", b"x" * 300, 1, 65535, dup=True),
    _publish("f/\u00e9/t", b"\xff\xfe", 1, 7, UserProperty=[("k", "v"), ("a", "b")]),
    _publish("big", bytes(range(256)) * 80, 1, 9, ContentType="application/json"),
    _publish("fleet/car-4/telemetry", b"{}", 1, 2),
    # Overlapping rule filters: ingest subscribes with identifiers (a fast path decodes
    # one alone; with other properties paho's decoder does).
    _publish("fleet/car-5/telemetry", b"{}", 1, 3, SubscriptionIdentifier=2_097_151),
    _publish(
        "fleet/car-6/telemetry", b"{}", 0, 0, SubscriptionIdentifier=5, UserProperty=[("k", "v")]
    ),
]
# User properties alone (empty strings too) take the fast path; with another property,
# paho's decoder.
STREAM += [
    _publish(
        "fleet/car-7/telemetry", b"{}", 1, 4, UserProperty=[("r\u00e9gion", "\u00e9"), ("", "")]
    ),
    _publish("fleet/car-8/telemetry", b"{}", 1, 5, UserProperty=[("k", "v")], ContentType="x"),
]
MESSAGES = len(STREAM) - 1  # all but the PINGRESP


def _client() -> tuple[mqtt.Client, socket.socket]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    client._ping_t = 123.0
    return client, theirs


def _describe(props: Properties | None) -> str | None:
    return None if props is None else str(props)


def _paho_decodes(stream: bytes) -> list[Seen]:
    client, peer = _client()
    seen: list[Seen] = []

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        props = m.properties
        has = props is not None and str(props) != "[]"
        seen.append(
            (m.topic, bytes(m.payload), m.qos, bool(m.dup), m.mid, str(props) if has else None)
        )

    client.manual_ack_set(True)
    client.on_message = on_message
    peer.sendall(stream)
    while client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS and len(seen) < MESSAGES:
        pass
    peer.close()
    return seen


def _reader_decodes(chunks: Iterator[bytes]) -> tuple[list[Seen], mqtt.Client]:
    client, peer = _client()
    seen: list[Seen] = []

    def on_publish(
        topic: str, payload: bytes, qos: int, dup: bool, mid: int, props: Properties | None
    ) -> None:
        seen.append((topic, payload, qos, dup, mid, _describe(props)))

    reader = _ChunkReader(client, on_publish)
    for chunk in chunks:
        peer.sendall(chunk)
        assert reader.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    peer.close()
    return seen, client


def test_reader_decodes_like_paho_in_one_read() -> None:
    stream = b"".join(STREAM)
    seen, client = _reader_decodes(iter([stream]))
    assert seen == _paho_decodes(stream)
    assert len(seen) == MESSAGES
    assert seen[6][5] == "[SubscriptionIdentifier : [2097151]]"
    assert seen[3][0] == "f/\u00e9/t"
    assert seen[3][5] is not None and "UserProperty" in seen[3][5]
    # The PINGRESP between the publishes went to paho's own handler.
    assert client._ping_t == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=400),
    st.sampled_from([_GATHER_FROM, 8]),
)
def test_reader_decodes_like_paho_however_the_stream_is_cut(sizes: list[int], gather: int) -> None:
    # gather 8: nearly every cut packet is gathered read by read (as large ones are).
    stream = b"".join(STREAM)

    def chunks() -> Iterator[bytes]:
        at = 0
        for size in sizes:
            if at >= len(stream):
                return
            yield stream[at : at + size]
            at += size
        if at < len(stream):
            yield stream[at:]

    with patch("ingest._paho._GATHER_FROM", gather):
        seen, _ = _reader_decodes(chunks())
    assert seen == _paho_decodes(stream)


def test_a_large_packet_is_gathered_read_by_read_and_joined_once() -> None:
    # Appending every read to the partial packet copied it again each time: quadratic,
    # ~110 s of CPU for a 256 MB message.
    payload = bytes(range(256)) * 12_000
    stream = _publish("fleet/car-1/telemetry", payload, 1, 42) + STREAM[0]
    client, peer = _client()
    seen: list[Seen] = []
    reader = _ChunkReader(client, lambda *a: seen.append((*a[:5], _describe(a[5]))))
    read = 64 * 1024  # what a socket pair holds at once
    chunks = [stream[at : at + read] for at in range(0, len(stream), read)]
    for index, chunk in enumerate(chunks):
        peer.sendall(chunk)
        assert reader.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        if index < len(chunks) - 1:
            assert (len(reader._parts), reader._rest) == (index + 1, b"")
    peer.close()
    assert seen == [("fleet/car-1/telemetry", payload, 1, False, 42, None),
                    ("fleet/car-1/telemetry", b'{"a": 1}', 1, False, 1, None)]  # fmt: skip


def test_reader_reports_a_closed_socket_and_a_malformed_packet() -> None:
    client, peer = _client()
    reader = _ChunkReader(client, lambda *_: None)
    peer.close()
    assert reader.loop_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST

    client, peer = _client()
    reader = _ChunkReader(client, lambda *_: None)
    # Topic length 200 in a 4-byte packet.
    peer.sendall(b"\x32\x04\x00\xc8ab")
    assert reader.loop_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    peer.close()


@pytest.mark.parametrize("value", ["\ufeffabc", "a\x00b"])
def test_a_publish_whose_properties_paho_rejects_is_delivered_not_a_protocol_error(
    value: str,
) -> None:
    client, peer = _client()
    seen: list[tuple[bytes, int, Properties | None]] = []
    reader = _ChunkReader(
        client, lambda _t, payload, _q, _d, mid, p: seen.append((payload, mid, p))
    )
    peer.sendall(
        _publish("a", b"one", 1, 1, UserProperty=[("k", value)], ContentType="x")
        + _publish("a", b"two", 1, 2, UserProperty=[("k", "v")])
    )
    assert reader.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    (one, mid1, props1), (two, mid2, props2) = seen
    assert (one, mid1, two, mid2) == (b"one", 1, b"two", 2)
    assert isinstance(props1, UndecodableProperties)
    assert props1.error
    assert not isinstance(props2, UndecodableProperties)
    assert props2 is not None
    assert getattr(props2, "UserProperty", None) == [("k", "v")]
    peer.close()


def _with_properties(mid: int, payload: bytes, block: bytes) -> bytes:
    """A QoS 1 PUBLISH on topic "a" with a raw properties block."""
    body = b"\x00\x01a" + struct.pack("!H", mid) + encode_length(len(block)) + block + payload
    return b"\x32" + encode_length(len(body)) + body


@pytest.mark.parametrize(
    "block",
    [
        b"\x7f\x00",  # an unknown property id (KeyError in paho)
        b"\x01\x01\x01\x01",  # a property twice
        b"\x01\x02",  # PayloadFormatIndicator 2
        b"\x23\x00\x00",  # TopicAlias 0
        b"\x11\x00\x00\x00\x01",  # SessionExpiryInterval, not a PUBLISH property
    ],
    ids=["unknown-id", "twice", "format-2", "alias-0", "not-for-publish"],
)
def test_any_properties_paho_refuses_leave_the_message_delivered(block: bytes) -> None:
    # Raised out of the reader, they ended the connection and the message came back after
    # every reconnect (a broker that forwards them; Mosquitto checks most itself).
    client, peer = _client()
    seen: list[tuple[bytes, int, Properties | None]] = []
    reader = _ChunkReader(
        client, lambda _t, payload, _q, _d, mid, p: seen.append((payload, mid, p))
    )
    peer.sendall(_with_properties(1, b"one", block) + _publish("a", b"two", 1, 2))
    assert reader.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [(payload, mid) for payload, mid, _ in seen] == [(b"one", 1), (b"two", 2)]
    assert isinstance(seen[0][2], UndecodableProperties)
    peer.close()


def test_properties_running_past_the_packet_are_still_a_protocol_error() -> None:
    client, peer = _client()
    reader = _ChunkReader(client, lambda *_: None)
    # Topic "a", packet id 1, properties length 100 in a packet with 3 bytes left.
    peer.sendall(b"\x32\x08\x00\x01a\x00\x01\x64\x01\x01")
    assert reader.loop_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    peer.close()


# Characters paho refuses (U+0000, U+FEFF) often enough to matter, among any others.
_TEXT = st.text(st.one_of(st.sampled_from("a\x00\ufeff\u00e9"), st.characters()), max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_TEXT, _TEXT), max_size=4),
    st.lists(st.integers(1, 268_435_455), max_size=2),
)
# Hypothesis rarely draws U+FEFF: the cases paho refuses, always.
@example([("\ufeffk", "v")], [])
@example([("k", "v"), ("\u00e9", "x\ufeff")], [7])
@example([("k", "\x00")], [])
@example([("", "")], [1, 268_435_455])
def test_user_properties_and_subscription_ids_decode_as_paho_decodes_them(
    user: list[tuple[str, str]], ids: list[int]
) -> None:
    # Any text hypothesis makes: surrogates, U+0000 and U+FEFF included (paho refuses
    # those; the fast path must leave them to paho and its error).
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    block = b""
    for name, value in user:
        try:
            encoded = [part.encode("utf-8") for part in (name, value)]
        except UnicodeEncodeError:  # a lone surrogate: send its bytes anyway
            encoded = [part.encode("utf-8", "surrogatepass") for part in (name, value)]
        block += b"\x26" + b"".join(struct.pack("!H", len(p)) + p for p in encoded)
    for sub_id in ids:
        block += b"\x0b" + encode_length(sub_id)
    stream = _publish("t", b"{}", 1, 1)[:1]  # header byte of a QoS 1 PUBLISH
    body = struct.pack("!H", 1) + b"t" + struct.pack("!H", 1)
    body += encode_length(len(block)) + block + b"{}"
    stream += encode_length(len(body)) + body
    seen, _ = _reader_decodes(iter([stream]))
    try:
        props.unpack(encode_length(len(block)) + block)  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - whatever paho raises, the reader must flag it
        assert seen[0][5] == "[]"  # UndecodableProperties
        return
    assert seen[0][5] == (str(props) if block else None)
