"""The simulator's MQTT packets are what paho itself decodes them to; a silent broker fails it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion

from simulator import SimulatorError
from simulator._mqtt import LeanPublisher, _split, connect_packet, publish_packet

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


def _silent_broker(receive_maximum: int) -> tuple[socket.socket, threading.Thread]:
    """A listener that accepts one client, sends CONNACK, then reads and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    props = bytes((0x21, 0, receive_maximum))  # Receive Maximum
    connack = bytes((0x20, 3 + len(props), 0, 0, len(props))) + props

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(connack)
            conn.settimeout(30)
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize("receive_maximum", [1, 100])
def test_a_broker_that_stops_answering_fails_the_run_instead_of_hanging_it(
    receive_maximum: int,
) -> None:
    # A half-open connection: writes still succeed, no PUBACK comes. With a full window
    # the publisher waited for packet ids for as long as TCP took to give up.
    server, thread = _silent_broker(receive_maximum)
    publisher = LeanPublisher("127.0.0.1", server.getsockname()[1], "sim-test", 1, keepalive_s=2)
    began = time.monotonic()
    try:
        with pytest.raises(SimulatorError, match="no answer from the MQTT broker for 2 s"):
            for _ in range(20):
                publisher.publish([("t/car-1", b"{}"), ("t/car-2", b"{}")])
                time.sleep(0.5)
    finally:
        publisher.close()
        server.close()
    assert time.monotonic() - began < 15  # detected after ~2-3 s; it used to hang
    thread.join(5)
