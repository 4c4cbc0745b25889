"""The simulator's MQTT packets are what paho itself decodes them to."""

from __future__ import annotations

import pytest
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion

from simulator._mqtt import _split, connect_packet, publish_packet

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("qos", "packet_id", "payload"),
    [(1, 1, b'{"a": 1}'), (1, 65535, b"x" * 200), (0, 0, b""), (1, 7, bytes(range(256)) * 600)],
)
def test_publish_packet_decodes_with_paho(qos: int, packet_id: int, payload: bytes) -> None:
    raw = publish_packet(b"fleet/veh-00001/telemetry", payload, qos, packet_id)
    (header, body), *_ = _split(raw)[0]
    assert _split(raw)[1] == len(raw)
    decoded = paho_packet.decode_publish(header, body, MQTTProtocolVersion.MQTTv5)
    assert (decoded.topic, decoded.qos, decoded.mid, decoded.payload) == (
        b"fleet/veh-00001/telemetry",
        qos,
        packet_id,
        payload,
    )
    assert not decoded.dup
    assert not decoded.retain


def test_split_keeps_a_cut_packet_for_the_next_read() -> None:
    packets = [publish_packet(b"t", bytes([i]) * 300, 1, i + 1) for i in range(3)]
    stream = b"".join(packets)
    cut = len(packets[0]) + 5
    first, used = _split(stream[:cut])
    assert [body[-1] for _h, body in first] == [0]
    assert used == len(packets[0])
    rest, used_rest = _split(stream[used:])
    assert [body[-1] for _h, body in rest] == [1, 2]
    assert used + used_rest == len(stream)


def test_connect_packet_fields() -> None:
    raw = connect_packet("sim-1", 30, "fleet", "secret")
    (header, body), *_ = _split(raw)[0]
    assert header == 0x10
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0x02 | 0x80 | 0x40  # clean start, user name, password
    assert body[8:10] == b"\x00\x1e"
    assert body[10] == 0  # no properties
    assert body[11:] == b"\x00\x05sim-1\x00\x05fleet\x00\x06secret"
