"""Round-trip QoS 1 messages through the real local Mosquitto."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from bench.harness import QosOnePublisher
from fleetstream import infra

pytestmark = pytest.mark.integration


def _client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def test_qos1_message_is_acknowledged_and_delivered(
    brokers: infra.InfraSettings, unique_name: str
) -> None:
    topic = f"test/{unique_name}/telemetry"
    received: list[mqtt.MQTTMessage] = []
    got = threading.Event()
    subscribed = threading.Event()

    sub = _client(f"{unique_name}-sub")

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg)
        got.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda *_args: subscribed.set()
    sub.connect(brokers.host, brokers.mqtt_port)
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    assert subscribed.wait(10)

    pub = _client(f"{unique_name}-pub")
    pub.connect(brokers.host, brokers.mqtt_port)
    pub.loop_start()
    info = pub.publish(topic, b'{"hello": 1}', qos=1)
    info.wait_for_publish(10)  # returns once the broker's PUBACK arrived
    assert info.is_published()

    assert got.wait(10)
    for client in (pub, sub):
        client.disconnect()
        client.loop_stop()
    assert [(m.topic, m.payload, m.qos) for m in received] == [(topic, b'{"hello": 1}', 1)]


def _connect_result(settings: infra.InfraSettings, password: str, client_id: str) -> ReasonCode:
    result: list[ReasonCode] = []
    done = threading.Event()
    client = _client(client_id)
    client.username_pw_set(settings.mqtt_username, password)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        result.append(reason)
        done.set()

    client.on_connect = on_connect
    client.connect(settings.host, settings.mqtt_auth_port)
    client.loop_start()
    assert done.wait(10)
    client.disconnect()
    client.loop_stop()
    return result[0]


def test_password_listener_accepts_right_and_refuses_wrong_credentials(
    brokers: infra.InfraSettings, unique_name: str
) -> None:
    good = _connect_result(brokers, brokers.mqtt_password.get_secret_value(), f"{unique_name}-good")
    bad = _connect_result(brokers, "not-the-password", f"{unique_name}-bad")
    assert not good.is_failure
    assert bad.is_failure
    assert bad.getName() in {"Not authorized", "Bad user name or password"}


def test_harness_publisher_tells_unrouted_publishes_apart(
    brokers: infra.InfraSettings, unique_name: str
) -> None:
    """A PUBACK is not a delivery: the broker answers 0x10 when nobody subscribed.

    The fault and benchmark cases count PUBACKs as "sent"; they must be able to see
    publishes the broker acknowledged without routing them anywhere.
    """
    publisher = QosOnePublisher(brokers, f"{unique_name}-pub")
    try:
        publisher.publish([(f"nobody/{unique_name}/listens", b"{}")] * 3)
        publisher.wait_acked(3, timeout_s=10)
    finally:
        publisher.close()
    assert publisher.not_success == {"No matching subscribers": 3}
    assert publisher.refused == 0
