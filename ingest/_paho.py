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

aiomqtt's connection handling, subscribe/publish and its message iterator (which we
only use to learn about disconnects) keep working unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.client import CallbackOnConnect_v2
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


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

    def deliver(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        on_message(message)

    paho.on_message = deliver


def send_ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    """Send the PUBACK (QoS 1) or PUBCOMP (QoS 2) for ``mid``."""
    _paho(client).ack(mid, qos)


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
