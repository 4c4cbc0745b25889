"""The one place that reaches under aiomqtt into its paho client.

aiomqtt 2.5 has no manual-acknowledgement option and always puts messages on an
unbounded queue. Ingest needs both changed:

* ``manual_ack_set(True)``: paho then does not send the PUBACK when the message is read
  from the socket; we send it with ``ack(mid, qos)`` after Kafka confirmed the write.
  Without this a crash after the PUBACK and before Kafka would lose the message.
* the CONNACK's *session present* flag, which aiomqtt does not expose: a broker that
  forgot ingest's session (restart without persistence, crash before its autosave) has
  also forgotten the subscription and the queued messages, and ingest must say so.
* our own ``on_message``: messages are handled as paho parses them (on the asyncio loop
  thread), instead of piling up in aiomqtt's unbounded queue. Flow control is MQTT 5
  Receive Maximum, so at most that many messages are ever unacknowledged in memory.
* PUBACKs released together are queued as one write (``send_acks``).
* a guarded write registration: aiomqtt schedules ``add_writer(fd)`` for later, and when
  a PUBACK is queued just as the broker drops the connection the socket is closed by
  then: asyncio logged a traceback (``Bad file descriptor``), and a reused fd number
  could get the callback of a dead socket. The registration is skipped when the socket
  is no longer paho's.
* a cheaper ``Properties`` for decoding PUBLISH packets: paho rebuilds its property
  tables (dicts of 27 names, ~60 ``list.index`` calls) for every message and then
  ``clear()``s 27 attributes, ~7 us per message, a tenth of ingest's per-message CPU.
  The subclass shares one prebuilt copy of those read-only tables; parsing is paho's.

aiomqtt's connection handling, subscribe/publish and its message iterator (which we
only use to learn about disconnects) keep working unchanged.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt import _packet as paho_packet
from paho.mqtt.client import CallbackOnConnect_v2
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# PUBACK: fixed header, remaining length 2, packet id (MQTT 5 omits reason 0x00 Success).
_PUBACK = struct.Struct("!BBH")


def _paho(client: aiomqtt.Client) -> mqtt.Client:
    return client._client  # noqa: SLF001 - see the module docstring


def take_over_acks_and_delivery(
    client: aiomqtt.Client, on_message: Callable[[mqtt.MQTTMessage], None]
) -> None:
    """Switch ``client`` to manual acks and route incoming messages to ``on_message``.

    Call before connecting.
    """
    paho = _paho(client)
    paho.manual_ack_set(True)
    paho_packet.Properties = _SharedTableProperties  # type: ignore[attr-defined]

    def deliver(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        on_message(message)

    paho.on_message = deliver


class _SharedTableProperties(Properties):
    """paho's ``Properties`` with the lookup tables built once per packet type."""

    _tables: dict[int, dict[str, Any]] = {}  # noqa: RUF012 - shared on purpose

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's name
        tables = self._tables.get(packetType)
        if tables is None:
            tables = dict(Properties(packetType).__dict__)  # type: ignore[no-untyped-call]
            self._tables[packetType] = tables
        # Bypass paho's __setattr__ (it only admits property names).
        self.__dict__.update(tables)

    def clear(self) -> None:
        """Remove the properties set on this object (paho probes all 27 names)."""
        for name in [n for n in self.__dict__ if n not in self._tables[self.packetType]]:
            delattr(self, name)


def send_acks(client: aiomqtt.Client, batch: list[tuple[int, int]]) -> None:
    """Send the PUBACKs (QoS 1) or PUBCOMPs (QoS 2) of ``(mid, qos)`` pairs, in order.

    Consecutive QoS 1 PUBACKs go out as one queued write (paho writes every queued
    packet with its own ``send``); they are the same bytes ``ack()`` would queue.
    """
    paho = _paho(client)
    run: list[bytes] = []
    for mid, qos in batch:
        if qos == 1:
            run.append(_PUBACK.pack(mqtt.PUBACK, 2, mid))
            continue
        if run:
            paho._packet_queue(mqtt.PUBACK, b"".join(run), 0, 0)  # noqa: SLF001
            run = []
        paho.ack(mid, qos)
    if run:
        paho._packet_queue(mqtt.PUBACK, b"".join(run), 0, 0)  # noqa: SLF001


def guard_write_registration(client: aiomqtt.Client) -> None:
    """Register paho's write interest only while its socket is still the current one.

    Replaces aiomqtt's ``on_socket_register_write`` (same behaviour otherwise: write on
    readiness, a failed write ends the connection). Call before connecting.
    """
    paho = _paho(client)
    loop: asyncio.AbstractEventLoop = client._loop  # noqa: SLF001 - see the module docstring

    def register_write(c: mqtt.Client, _userdata: Any, sock: Any) -> None:
        def write() -> None:
            try:
                c.loop_write()
            except Exception as exc:  # noqa: BLE001 - the connection is broken: report it
                # aiomqtt makes a new future per connection: look it up now.
                disconnected: asyncio.Future[None] = client._disconnected  # noqa: SLF001
                if not disconnected.done():
                    disconnected.set_exception(exc)

        def add() -> None:
            # Runs later on the loop: the socket may be closed (and its fd reused) by now.
            current: Any = c.socket()
            fd = current.fileno() if current is sock and current is not None else -1
            if fd >= 0:
                loop.add_writer(fd, write)

        # paho may call this from aiomqtt's connect thread.
        loop.call_soon_threadsafe(add)

    paho.on_socket_register_write = register_write


def watch_session_present(client: aiomqtt.Client, on_connack: Callable[[bool], None]) -> None:
    """Call ``on_connack(session_present)`` on every accepted CONNACK of ``client``.

    Call before connecting; aiomqtt's own connect handling still runs afterwards.
    """
    paho = _paho(client)
    # aiomqtt registers a version-2 callback (flags, reason code, properties).
    original = cast("CallbackOnConnect_v2 | None", paho.on_connect)

    def on_connect(
        c: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not reason.is_failure:
            on_connack(bool(flags.session_present))
        if original is not None:
            original(c, userdata, flags, reason, properties)

    paho.on_connect = on_connect
