"""A lean MQTT 5 publisher for the simulator: QoS 0/1 PUBLISH packets written in batches.

paho publishes one packet at a time: a lock, a wake-up of its network thread and a
``send`` per message, and three or four ``recv`` calls per PUBACK. At thousands of cars
that was ~60 us of CPU per message, more than ingest spends bridging it, on the same
machine in the benchmarks. Here each slice of a tick is encoded into one buffer and
written with one ``sendall``; a reader thread parses PUBACKs from whole reads. The
broker's Receive Maximum (from its CONNACK) bounds the messages in flight.

Only what the simulator needs: plain TCP, QoS 0 and 1, no reconnect (a lost connection
ends the run with an error, as before), CONNACK properties parsed by paho.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Final

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulator.errors import SimulatorError
from telemetry.mqttwire import MalformedLength, decode_length, encode_length

_CONNECT, _CONNACK, _PUBLISH, _PUBACK = 0x10, 0x20, 0x30, 0x40
_PINGREQ, _PINGRESP, _DISCONNECT = 0xC0, 0xD0, 0xE0
_PINGREQ_PACKET: Final = bytes((_PINGREQ, 0))
_U16: Final = struct.Struct("!H")
_MAX_PACKET_ID: Final = 65535
_READ_SIZE: Final = 64 * 1024


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return _U16.pack(len(raw)) + raw


def connect_packet(
    client_id: str, keepalive_s: int, username: str | None = None, password: str | None = None
) -> bytes:
    """CONNECT, MQTT 5, clean start, no properties."""
    flags = 0x02
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    body = _string("MQTT") + bytes((5, flags)) + _U16.pack(keepalive_s) + b"\x00" + payload
    return bytes((_CONNECT,)) + encode_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, packet_id: int) -> bytes:
    """PUBLISH, MQTT 5, no properties."""
    head = _U16.pack(len(topic)) + topic + (_U16.pack(packet_id) if qos else b"") + b"\x00"
    length = encode_length(len(head) + len(payload))
    return bytes((_PUBLISH | (qos << 1),)) + length + head + payload


def _split(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The complete packets at the start of ``data`` as (header byte, body); bytes used."""
    packets: list[tuple[int, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        try:
            decoded = decode_length(data, pos + 1)
        except MalformedLength as exc:
            raise SimulatorError(str(exc)) from None
        if decoded is None:
            return packets, pos
        length, i = decoded
        if i + length > end:
            return packets, pos
        packets.append((data[pos], data[i : i + length]))
        pos = i + length
    return packets, pos


class LeanPublisher:
    """Publishes QoS 0/1 messages in batches over one MQTT 5 connection.

    Args:
        host: Broker host.
        port: Broker port.
        client_id: MQTT client id.
        qos: 0 or 1 for every message.
        username: Optional user name.
        password: Optional password.
        keepalive_s: MQTT keep-alive; a PINGREQ goes out when nothing was sent for half of it,
            and a broker silent for this long while a PUBACK or PINGRESP is due is taken
            as gone (a half-open connection otherwise hung the run until TCP gave up).
        timeout_s: Connect and CONNACK timeout.

    Raises:
        SimulatorError: The broker cannot be reached or refused the connection.
    """

    def __init__(  # noqa: PLR0917 - mirrors the target's fields
        self,
        host: str,
        port: int,
        client_id: str,
        qos: int,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        timeout_s: float = 10.0,
    ) -> None:
        self.qos = qos
        self.acked = 0
        # PUBACK reason codes other than Success, e.g. 0x10 "no matching subscribers".
        self.not_success: Counter[int] = Counter()
        self._keepalive_s = keepalive_s
        self._cond = threading.Condition()
        self._inflight: set[int] = set()
        self._next_id = 1
        self._error: str | None = None
        self._closing = False
        self._last_send = time.monotonic()
        # The later of the last packet received and the moment an answer became due (a
        # first message in flight, a ping): the broker's silence is measured from it.
        self._heard_or_asked = self._last_send
        self._ping_due = False
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            msg = f"cannot connect to MQTT broker {host}:{port}: {exc}"
            raise SimulatorError(msg) from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send_lock = threading.Lock()
        try:
            self._sock.sendall(connect_packet(client_id, keepalive_s, username, password))
            self.receive_maximum, rest = self._connack(host, port)
        except OSError as exc:
            self._sock.close()
            msg = f"MQTT broker {host}:{port} did not answer the CONNECT: {exc}"
            raise SimulatorError(msg) from exc
        except SimulatorError:
            self._sock.close()
            raise
        # Blocking from here on: the reader waits with select(), writers must not time out.
        self._sock.settimeout(None)
        self._reader = threading.Thread(
            target=self._read_loop, args=(rest,), name="sim-mqtt-reader", daemon=True
        )
        self._reader.start()

    def _connack(self, host: str, port: int) -> tuple[int, bytes]:
        data = b""
        while True:
            chunk = self._sock.recv(_READ_SIZE)
            if not chunk:
                msg = f"MQTT broker {host}:{port} closed the connection before CONNACK"
                raise SimulatorError(msg)
            data += chunk
            packets, _ = _split(data)
            if packets:
                break
        header, body = packets[0]
        if header & 0xF0 != _CONNACK or len(body) < 2:
            msg = f"MQTT broker {host}:{port} sent packet 0x{header:02x} instead of CONNACK"
            raise SimulatorError(msg)
        if body[1] >= 0x80:
            msg = f"MQTT broker {host}:{port} refused the connection: reason 0x{body[1]:02x}"
            raise SimulatorError(msg)
        props = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
        if len(body) > 2:
            props.unpack(body[2:])  # type: ignore[no-untyped-call]
        receive_max = int(getattr(props, "ReceiveMaximum", _MAX_PACKET_ID))
        # Later packets may have come in the same read.
        rest = data[1 + len(encode_length(len(body))) + len(body) :]
        return receive_max, rest

    def _read_loop(self, data: bytes) -> None:
        try:
            while True:
                packets, used = _split(data)
                data = data[used:]
                if packets:
                    self._handle(packets)
                if self._error is not None or self._closing:
                    return
                readable, _, _ = select.select([self._sock], [], [], 1.0)
                if not readable:
                    if self._broker_silent():
                        why = f"no answer from the MQTT broker for {self._keepalive_s} s"
                        self._fail(why)
                        # Unblocks a writer stuck on a full send buffer.
                        with contextlib.suppress(OSError):
                            self._sock.shutdown(socket.SHUT_RDWR)
                        return
                    self._ping_if_idle()
                    continue
                chunk = self._sock.recv(_READ_SIZE)
                if not chunk:
                    self._fail("the MQTT broker closed the connection")
                    return
                self._heard_or_asked = time.monotonic()
                self._ping_due = False
                data += chunk
        except (OSError, SimulatorError) as exc:
            self._fail(f"MQTT connection failed: {exc}")

    def _handle(self, packets: list[tuple[int, bytes]]) -> None:
        acked = 0
        ids = []
        for header, body in packets:
            kind = header & 0xF0
            if kind == _PUBACK and len(body) >= 2:
                ids.append((body[0] << 8) | body[1])
                if len(body) >= 3 and body[2]:
                    self.not_success[body[2]] += 1
                acked += 1
            elif kind == _DISCONNECT:
                reason = body[0] if body else 0
                self._fail(f"the MQTT broker disconnected us (reason 0x{reason:02x})")
            elif kind != _PINGRESP:
                self._fail(f"unexpected MQTT packet 0x{header:02x} from the broker")
        if acked:
            with self._cond:
                self._inflight.difference_update(ids)
                self.acked += acked
                self._cond.notify_all()

    def _fail(self, why: str) -> None:
        with self._cond:
            if self._error is None and not self._closing:
                self._error = why
            self._cond.notify_all()

    def _broker_silent(self) -> bool:
        """Whether nothing came for a keep-alive although a PUBACK or PINGRESP is due."""
        waiting = self._ping_due or bool(self._inflight)
        return waiting and time.monotonic() - self._heard_or_asked >= self._keepalive_s

    def _ping_if_idle(self) -> None:
        if time.monotonic() - self._last_send < self._keepalive_s / 2:
            return
        # A writer holding the lock is sending (or stuck on a full buffer): not idle.
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            self._sock.sendall(_PINGREQ_PACKET)
            self._last_send = time.monotonic()
            if not self._ping_due and not self._inflight:
                self._heard_or_asked = self._last_send
            self._ping_due = True
        finally:
            self._send_lock.release()

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)
            self._last_send = time.monotonic()

    def _take_ids(self, count: int) -> list[int]:
        """Packet ids for ``count`` messages, waiting while the broker's window is full."""
        ids: list[int] = []
        with self._cond:
            while len(ids) < count:
                if self._error is not None:
                    raise SimulatorError(self._error)
                room = self.receive_maximum - len(self._inflight)
                if room <= 0:
                    self._cond.wait(1.0)
                    continue
                if not self._inflight and not self._ping_due:
                    self._heard_or_asked = time.monotonic()
                for _ in range(min(room, count - len(ids))):
                    while self._next_id in self._inflight:
                        self._next_id = self._next_id % _MAX_PACKET_ID + 1
                    ids.append(self._next_id)
                    self._inflight.add(self._next_id)
                    self._next_id = self._next_id % _MAX_PACKET_ID + 1
        return ids

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(topic, payload)`` pairs in order.

        Raises:
            SimulatorError: The connection is gone.
        """
        if self._error is not None:
            raise SimulatorError(self._error)
        if not self.qos:
            self._write(b"".join(publish_packet(t.encode(), p, 0, 0) for t, p in messages))
            return
        at = 0
        while at < len(messages):
            ids = self._take_ids(min(len(messages) - at, max(1, self.receive_maximum // 2)))
            batch = messages[at : at + len(ids)]
            self._write(
                b"".join(
                    publish_packet(t.encode(), p, 1, i)
                    for (t, p), i in zip(batch, ids, strict=True)
                )
            )
            at += len(ids)

    def _write(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError as exc:
            self._fail(f"MQTT connection failed: {exc}")
            raise SimulatorError(self._error or str(exc)) from exc

    def wait_acked(self, count: int, timeout_s: float) -> None:
        """Wait until ``count`` QoS 1 messages were acknowledged (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.acked < count and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        """Send DISCONNECT and close the socket."""
        with self._cond:
            self._closing = True
        with contextlib.suppress(OSError):  # already gone
            self._send(bytes((_DISCONNECT, 0)))
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(5)
        self._sock.close()
