"""The one place that reaches under aiomqtt into its paho client.

aiomqtt 2.5 has no manual-acknowledgement option and always puts messages on an
unbounded queue. Ingest needs both changed:

* ``manual_ack_set(True)``: paho then does not send the PUBACK when the message is read
  from the socket; we send it with ``ack(mid, qos)`` after Kafka confirmed the write.
  Without this a crash after the PUBACK and before Kafka would lose the message.
* the CONNACK's *session present* flag, which aiomqtt does not expose: a broker that
  forgot ingest's session (restart without persistence, crash before its autosave) has
  also forgotten the subscription and the queued messages, and ingest must say so.
* our own ``on_message``: messages are handled as they are parsed (on the asyncio loop
  thread), instead of piling up in aiomqtt's unbounded queue. Flow control is MQTT 5
  Receive Maximum, so at most that many messages are ever unacknowledged in memory.
* our own ``loop_read`` (:class:`_ChunkReader`): paho reads every packet with three or
  four ``recv`` calls (1 byte of header, the length byte by byte, the rest) and one pass
  of the event loop each, then builds an ``MQTTMessage`` and walks its callback matcher.
  The reader takes what the socket has in one ``recv``, decodes QoS 0/1 PUBLISH packets
  itself and hands every other packet, unchanged, to paho's own handler.
* PUBACKs released together are queued as one write (``send_acks``).
* a guarded write registration: aiomqtt schedules ``add_writer(fd)`` for later, and when
  a PUBACK is queued just as the broker drops the connection the socket is closed by
  then: asyncio logged a traceback (``Bad file descriptor``), and a reused fd number
  could get the callback of a dead socket. The registration is skipped when the socket
  is no longer paho's.
* a cheaper ``Properties`` for decoding PUBLISH packets: paho rebuilds its property
  tables (dicts of 27 names, ~60 ``list.index`` calls) for every message and then
  ``clear()``s 27 attributes, ~7 us per message, a tenth of ingest's per-message CPU.
  The subclass shares one prebuilt copy of those read-only tables. Properties that are
  only user properties and subscription identifiers are parsed here
  (``_fast_properties``: paho checks each character in a Python loop, ~42 us for one
  user property); any other block is parsed by paho.

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
from paho.mqtt.client import CallbackOnConnect_v2, CallbackOnUnsubscribe_v2
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry.mqttwire import MalformedLength, decode_length

# PUBACK: fixed header, remaining length 2, packet id (MQTT 5 omits reason 0x00 Success).
_PUBACK = struct.Struct("!BBH")


def _paho(client: aiomqtt.Client) -> mqtt.Client:
    return client._client  # noqa: SLF001 - see the module docstring


# topic, payload, QoS, dup flag, packet id (0 for QoS 0), MQTT 5 properties or None.
PublishHandler = Callable[[str, bytes, int, bool, int, "Properties | None"], None]

# Bytes asked of the socket per read. Receive Maximum bounds what the broker sends
# unacknowledged, so this only caps one read, not memory.
_READ_SIZE = 256 * 1024
# A packet still this many bytes short after a read is gathered read by read and joined
# once complete: appending each read to the partial packet copied it again every time,
# ~110 s of CPU for one 256 MB message (no broker limit applies by default).
_GATHER_FROM = _READ_SIZE
_PUBLISH = 0x30


def take_over_acks_and_delivery(client: aiomqtt.Client, on_publish: PublishHandler) -> None:
    """Switch ``client`` to manual acks and route incoming messages to ``on_publish``.

    Call before connecting.
    """
    paho = _paho(client)
    paho.manual_ack_set(True)
    paho_packet.Properties = _SharedTableProperties  # type: ignore[attr-defined]

    def deliver(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        # QoS 2 (after PUBREL) still comes through paho.
        on_publish(
            message.topic,
            bytes(message.payload),
            message.qos,
            bool(message.dup),
            message.mid,
            message.properties,
        )

    paho.on_message = deliver
    reader = _ChunkReader(paho, on_publish)
    # aiomqtt's reader callback calls ``client.loop_read()``: the instance attribute wins.
    paho.loop_read = reader.loop_read  # type: ignore[method-assign]


class _ChunkReader:
    """Reads what the socket holds in one call and decodes QoS 0/1 PUBLISH packets.

    A packet cut by the end of a read waits in ``_rest`` for the next one, or, when it is
    more than a read short (:data:`_GATHER_FROM`), in ``_parts`` until whole. Other packets
    (CONNACK, SUBACK, PUBACK, PINGRESP, DISCONNECT, QoS 2 flows) go to paho's
    ``_packet_handle`` exactly as paho's own reader would hand them over.
    """

    def __init__(self, paho: mqtt.Client, on_publish: PublishHandler) -> None:
        self._paho = paho
        self._on_publish = on_publish
        self._sock: object = None
        self._rest = b""
        self._parts: list[bytes] = []  # the reads of a large packet, joined once whole
        self._parts_size = 0
        self._need = 0  # the large packet's size

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read once and handle every complete packet (paho's ``loop_read`` contract)."""
        paho = self._paho
        sock = paho._sock  # noqa: SLF001
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if sock is not self._sock:
            # A new connection: a partial packet of the old one means nothing now.
            self._sock = sock
            self._rest = b""
            self._parts = []
        try:
            chunk = paho._sock_recv(_READ_SIZE)  # noqa: SLF001
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as err:
            paho._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)  # noqa: SLF001
            return paho._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)  # noqa: SLF001
        if not chunk:
            return paho._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)  # noqa: SLF001
        with paho._msgtime_mutex:  # noqa: SLF001
            paho._last_bytes_received = mqtt.time_func()  # noqa: SLF001
        if self._parts:
            self._parts.append(chunk)
            self._parts_size += len(chunk)
            if self._parts_size < self._need:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            data = b"".join(self._parts)
            self._parts = []
        else:
            data = self._rest + chunk if self._rest else chunk
        rc, used = self._handle(data)
        if rc:
            self._rest = b""
            return paho._loop_rc_handle(rc)  # noqa: SLF001
        self._keep(data[used:])
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _keep(self, rest: bytes) -> None:
        """Keep the start of a packet cut by the end of the read, for the next reads."""
        size = _packet_size(rest)
        if size is not None and size - len(rest) > _GATHER_FROM:
            self._parts, self._parts_size, self._need = [rest], len(rest), size
            self._rest = b""
        else:
            self._rest = rest

    def _handle(self, data: bytes) -> tuple[MQTTErrorCode, int]:
        """Handle the complete packets at the start of ``data``; returns (rc, bytes used)."""
        v5 = self._paho._protocol == MQTTProtocolVersion.MQTTv5  # noqa: SLF001
        on_publish = self._on_publish
        end_of_data = len(data)
        pos = 0
        while pos < end_of_data:
            header = data[pos]
            try:
                decoded_length = decode_length(data, pos + 1)
            except MalformedLength:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL, pos
            if decoded_length is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS, pos
            length, i = decoded_length
            end = i + length
            if end > end_of_data:
                return MQTTErrorCode.MQTT_ERR_SUCCESS, pos
            qos = (header >> 1) & 0x03
            if header & 0xF0 == _PUBLISH and qos < 2:
                decoded = _decode_publish(data, i, end, qos, v5=v5)
                if decoded is None:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL, pos
                topic, mid, properties, payload_at = decoded
                on_publish(topic, data[payload_at:end], qos, bool(header & 0x08), mid, properties)
            else:
                rc = self._paho_handle(header, data[pos + 1 : i], length, data[i:end])
                if rc:
                    return rc, end
                if self._paho._sock is not self._sock:  # noqa: SLF001
                    # paho closed the connection (DISCONNECT from the broker): stop here.
                    return MQTTErrorCode.MQTT_ERR_SUCCESS, end_of_data
            pos = end
        return MQTTErrorCode.MQTT_ERR_SUCCESS, pos

    def _paho_handle(
        self, header: int, length_bytes: bytes, length: int, body: bytes
    ) -> MQTTErrorCode:
        """Give one complete packet to paho, in the state its own reader leaves it in."""
        paho = self._paho
        paho._in_packet = {  # noqa: SLF001
            "command": header,
            "have_remaining": 1,
            "remaining_count": list(length_bytes),
            "remaining_mult": 128 ** len(length_bytes),
            "remaining_length": length,
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc = paho._packet_handle()  # noqa: SLF001
        except MalformedPacket as exc:
            paho._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)  # noqa: SLF001
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        paho._in_packet = {  # noqa: SLF001
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        return rc


def _packet_size(data: bytes) -> int | None:
    """The size of the packet at the start of ``data``, if its fixed header is there."""
    if not data:
        return None
    try:
        decoded = decode_length(data, 1)
    except MalformedLength:
        return None  # the next read's _handle reports it
    return None if decoded is None else decoded[1] + decoded[0]


def _decode_publish(
    data: bytes, start: int, end: int, qos: int, *, v5: bool
) -> tuple[str, int, Properties | None, int] | None:
    """Decode a PUBLISH's variable header in ``data[start:end]``.

    Returns:
        (topic, packet id, properties, where the payload starts), or None if malformed.
    """
    if end - start < 2:
        return None
    at = start + 2 + ((data[start] << 8) | data[start + 1])
    if at > end:
        return None
    # Brokers must forward valid UTF-8 only; a broken one must not stop the stream.
    topic = data[start + 2 : at].decode("utf-8", errors="replace")
    mid = 0
    if qos:
        if at + 2 > end:
            return None
        mid = (data[at] << 8) | data[at + 1]
        at += 2
    properties: Properties | None = None
    if v5:
        if at >= end:
            return None
        if data[at] == 0:  # the usual case: no properties
            at += 1
        else:
            try:
                block = decode_length(data, at)
            except MalformedLength:
                return None
            if block is None or block[1] + block[0] > end:
                return None
            block_end = block[1] + block[0]
            fast = _fast_properties(data, block[1], block_end)
            if fast is not None:
                return topic, mid, fast, block_end
            properties = _SharedTableProperties(PacketTypes.PUBLISH)
            try:
                properties.unpack(data[at:block_end])  # type: ignore[no-untyped-call]
            # KeyError: an unknown property id; MQTTException: one paho refuses (repeated,
            # out of range, not for PUBLISH). Raised, they escaped the reader and ended the
            # connection with a partial read kept.
            except (
                MalformedPacket,
                MQTTException,
                KeyError,
                IndexError,
                struct.error,
                UnicodeDecodeError,
            ) as exc:
                # The packet's framing is intact: the message is delivered (for quarantine)
                # instead of ending the connection, which would bring it back forever.
                properties = UndecodableProperties(f"{type(exc).__name__}: {exc}")
            at = block_end
    return topic, mid, properties, at


_SUBSCRIPTION_IDENTIFIER = 0x0B
_USER_PROPERTY = 0x26


def _fast_properties(data: bytes, start: int, end: int) -> Properties | None:
    """``data[start:end]`` decoded if it holds only user properties and subscription ids.

    Else None, and paho's decoder reads them.

    paho checks every character of a string in a Python loop: ~42 us for one user
    property on the slow benchmark VM, ~15 us for a lone subscription identifier (sent
    with every PUBLISH when rule filters overlap); this takes 1-3 us. Anything paho would
    refuse (not UTF-8, a surrogate, U+0000, U+FEFF) is left to paho, so that its error
    decides, as before.
    """
    user: list[tuple[str, str]] = []
    ids: list[int] = []
    at = start
    while at < end:
        ident = data[at]
        at += 1
        if ident == _USER_PROPERTY:
            name, at = _mqtt_string(data, at, end)
            if name is None:
                return None
            value, at = _mqtt_string(data, at, end)
            if value is None:
                return None
            user.append((name, value))
        elif ident == _SUBSCRIPTION_IDENTIFIER:
            try:
                decoded = decode_length(data, at)
            except MalformedLength:
                return None
            if decoded is None or decoded[0] == 0 or decoded[1] > end:
                return None
            ids.append(decoded[0])
            at = decoded[1]
        else:
            return None
    if at != end:
        return None
    properties = _FastProperties.__new__(_FastProperties)
    if user:
        properties.__dict__["UserProperty"] = user
    if ids:
        properties.__dict__["SubscriptionIdentifier"] = ids
    return properties


def _mqtt_string(data: bytes, at: int, end: int) -> tuple[str | None, int]:
    """A length-prefixed UTF-8 string at ``at`` and where it ends; None where paho decides."""
    if at + 2 > end:
        return None, at
    stop = at + 2 + ((data[at] << 8) | data[at + 1])
    if stop > end:
        return None, at
    try:
        text = data[at + 2 : stop].decode("utf-8")  # strict: refuses surrogates too
    except UnicodeDecodeError:
        return None, at
    if "\x00" in text or "\ufeff" in text:
        return None, at
    return text, stop


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


class _FastProperties(_SharedTableProperties):
    """PUBLISH properties set by :func:`_fast_properties`, built without a table copy.

    Reading a property it does not hold raises AttributeError (``getattr`` defaults
    work); paho's whole-object methods look up its class's tables.
    """

    def __getattr__(self, name: str) -> Any:
        tables = self._tables.get(PacketTypes.PUBLISH)
        if tables is None:  # no PUBLISH decoded by paho yet in this process
            tables = _SharedTableProperties(PacketTypes.PUBLISH).__dict__
        if name in tables:
            return tables[name]
        raise AttributeError(name)


class UndecodableProperties(_SharedTableProperties):
    """Stands for the MQTT 5 properties of a PUBLISH that paho cannot decode.

    paho rejects some a broker forwards (e.g. a user property starting with U+FEFF, or
    holding U+0000). The message itself is intact and is delivered with this instead.

    Attributes:
        error: What paho said.
    """

    error: str

    def __init__(self, error: str) -> None:
        super().__init__(PacketTypes.PUBLISH)
        self.__dict__["error"] = error  # paho's __setattr__ admits property names only


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


def watch_unsubacks(
    client: aiomqtt.Client, on_unsuback: Callable[[list[ReasonCode]], None]
) -> None:
    """Call ``on_unsuback(reason_codes)`` on every UNSUBACK of ``client``.

    aiomqtt's ``unsubscribe`` drops the reason codes, so a refused unsubscribe (not
    authorised, say) looked like a done one. Called before aiomqtt completes the awaited
    ``unsubscribe``, so the codes are there when it returns.
    """
    paho = _paho(client)
    original = cast("CallbackOnUnsubscribe_v2 | None", paho.on_unsubscribe)

    def on_unsubscribe(
        c: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None = None,
    ) -> None:
        on_unsuback(list(reason_codes))
        if original is not None:
            original(c, userdata, mid, reason_codes, properties)

    paho.on_unsubscribe = on_unsubscribe
