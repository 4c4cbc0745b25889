"""The bridges fleetstream ingest is compared with, each run as its own process.

``python -m bench mqtt-source|naive --filter F --topic T ...``:

- ``mqtt-source``: quixstreams' own ``MQTTSource`` in a Quix ``Application`` (the
  in-ecosystem peer), keyed by car, stamped with the payload time, value unchanged.
- ``naive``: the "custom development" bridge: paho-mqtt subscriber whose ``on_message``
  produces the payload and flushes the producer before returning, so the PUBACK (sent
  by paho after the callback) also follows the Kafka write.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import Producer
from paho.mqtt.enums import CallbackAPIVersion
from quixstreams import Application
from quixstreams.sources.community.mqtt import MQTTSource

from telemetry.logs import configure_logging

_log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("kind", choices=["mqtt-source", "naive"])
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--filter", required=True, help="MQTT topic filter.")
    parser.add_argument("--topic", required=True, help="Kafka topic.")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--client-id", required=True)
    parser.add_argument(
        "--state-dir", default="state", help="MQTTSource's state folder (Application's default)."
    )
    return parser


def main(argv: list[str]) -> int:
    """Run one peer bridge until SIGTERM."""
    configure_logging("INFO")
    args = _parser().parse_args(argv)
    if args.kind == "mqtt-source":
        _run_mqtt_source(args)
    else:
        _run_naive(args)
    return 0


def _vehicle_key(_msg: Any, payload: Any) -> str:
    return str(payload["vehicle_id"])


def _payload_ts(_msg: Any, payload: Any) -> int:
    return int(payload["ts"])


# Module level: MQTTSource runs in a spawned process, so its setters must pickle.
def _run_mqtt_source(args: argparse.Namespace) -> None:
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"{args.client_id}-group",
        auto_create_topics=False,
        state_dir=args.state_dir,
    )
    source = MQTTSource(
        topic=args.filter,
        client_id=args.client_id,
        server=args.mqtt_host,
        port=args.mqtt_port,
        version="5",
        tls_enabled=False,
        key_setter=_vehicle_key,
        timestamp_setter=_payload_ts,
        qos=1,
    )
    topic = app.topic(args.topic, key_serializer="str", value_serializer="bytes")
    app.add_source(source, topic=topic)
    app.run()


def _run_naive(args: argparse.Namespace) -> None:
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True})

    def on_message(_client: Any, _userdata: Any, msg: Any) -> None:
        payload = json.loads(msg.payload)
        producer.produce(
            args.topic, key=payload["vehicle_id"], value=msg.payload, timestamp=payload["ts"]
        )
        # The naive way to be sure before paho sends the PUBACK: wait for this one write.
        producer.flush()

    def on_connect(client: Any, *_args: Any) -> None:
        client.subscribe(args.filter, qos=1)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5
    )
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(args.mqtt_host, args.mqtt_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    producer.flush(10)
