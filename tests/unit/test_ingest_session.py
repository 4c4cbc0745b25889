"""Ingest notices a broker that lost its MQTT session (no broker needed)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackOnConnect_v2
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ingest._paho import guard_write_registration, watch_session_present
from ingest._rules import load_rules
from ingest._service import IngestService, next_reconnect_delay
from ingest._settings import IngestSettings
from ingest.errors import BackgroundTaskError

pytestmark = pytest.mark.unit


def _connack(client: aiomqtt.Client, session_present: bool, rc: int = 0) -> None:
    paho = client._client
    on_connect = cast("CallbackOnConnect_v2", paho.on_connect)
    reason = ReasonCode(PacketTypes.CONNACK, identifier=rc)
    on_connect(paho, None, mqtt.ConnectFlags(session_present), reason, None)


def test_session_present_flag_reaches_the_callback_and_aiomqtt_still_connects() -> None:
    async def scenario() -> list[bool]:
        client = aiomqtt.Client("127.0.0.1", 1)  # aiomqtt needs a running loop
        seen: list[bool] = []
        watch_session_present(client, seen.append)
        _connack(client, session_present=True)
        assert client._connected.done()  # aiomqtt's own handler ran
        _connack(client, session_present=False, rc=0x87)  # refused: not reported
        return seen

    assert asyncio.run(scenario()) == [True]


def test_a_lost_session_after_the_first_connect_is_an_error_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = IngestService(
        IngestSettings(ingest_metrics_port=0, mqtt_client_id="ingest-x"), load_rules(None)
    )
    with caplog.at_level(logging.INFO, logger="ingest"):
        service._on_connack(False)  # first connect of a new client id: normal
        service._on_connack(True)
        service._on_connack(False)  # the broker forgot us
    assert service.metrics.mqtt_sessions_lost._value.get() == 1
    errors = [r for r in caplog.records if r.name == "ingest" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "no longer has the session of ingest-x" in errors[0].getMessage()


def test_write_registration_is_skipped_for_a_socket_closed_meanwhile() -> None:
    """A PUBACK queued as the broker drops the connection must not log a traceback."""

    async def scenario() -> tuple[bool, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        client = aiomqtt.Client("127.0.0.1", 1)
        guard_write_registration(client)
        paho = client._client
        assert paho.on_socket_register_write is not None
        live, peer = socket.socketpair()
        dead, peer2 = socket.socketpair()
        with live, peer, peer2:
            paho._sock = live
            paho.on_socket_register_write(paho, None, live)
            await asyncio.sleep(0.01)
            registered = loop.remove_writer(live.fileno())
            # paho forgets and closes the socket before the scheduled registration runs.
            paho._sock = dead
            paho.on_socket_register_write(paho, None, dead)
            paho._sock = None
            dead.close()
            await asyncio.sleep(0.01)
        return registered, errors

    registered, errors = asyncio.run(scenario())
    assert registered
    assert errors == []


def test_reconnect_waits_double_with_jitter_and_never_exceed_the_cap() -> None:
    delays = [0.5]
    for _ in range(40):
        delays.append(next_reconnect_delay(delays[-1], 30.0))
    assert all(d <= 30.0 for d in delays)
    assert max(delays) > 24.0  # it does reach the cap's neighbourhood
    assert 0.8 <= delays[1] <= 1.0  # 0.5 doubled, at most 20 % shorter


def test_pubacks_released_while_connecting_reach_the_new_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A resumed session's queued messages can arrive in the same read as the CONNACK,
    # before the connect returns; a message no rule takes is acknowledged at once. Its
    # PUBACK was dropped (no client yet) and held a Receive Maximum slot for good.
    service = IngestService(IngestSettings(ingest_metrics_port=0), load_rules(None))
    sent: list[tuple[object, list[tuple[int, int]]]] = []
    monkeypatch.setattr(
        "ingest._service.send_acks", lambda client, batch: sent.append((client, batch))
    )

    class Connecting:
        async def __aenter__(self) -> Connecting:
            service._on_publish("old/filter/x", b"{}", 1, False, 7, None)
            return self

        async def __aexit__(self, *_exc: object) -> None:
            return None

    client = Connecting()

    async def connected(_client: object) -> None:
        service._stop.set()

    async def nothing(*_args: object) -> None:
        return None

    monkeypatch.setattr(service, "_make_client", lambda: client)
    monkeypatch.setattr(service, "_subscribe", nothing)
    monkeypatch.setattr(service, "_until_disconnect_or_stop", connected)
    monkeypatch.setattr(service, "_drain", nothing)
    asyncio.run(service._mqtt_loop())
    assert sent == [(client, [(7, 1)])]
    assert service.metrics.acked._value.get() == 1


def test_a_vital_background_task_that_ends_stops_the_service_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The Kafka poll loop sends every PUBACK: dead, ingest looked alive and acknowledged
    # nothing again. It stops instead, and the broker redelivers.
    service = IngestService(IngestSettings(ingest_metrics_port=0), load_rules(None))

    async def broken_probe() -> None:
        msg = "a bug"
        raise RuntimeError(msg)

    async def until_stopped() -> None:
        await service._stop.wait()

    monkeypatch.setattr(service, "_probe_loop", broken_probe)
    monkeypatch.setattr(service, "_mqtt_loop", until_stopped)
    with (
        caplog.at_level(logging.ERROR, logger="ingest"),
        pytest.raises(BackgroundTaskError, match="kafka-probe ended: RuntimeError"),
    ):
        asyncio.run(asyncio.wait_for(service.run(), timeout=30))
    assert any("stopping ingest" in r.getMessage() for r in caplog.records)


def test_only_short_topics_are_kept_in_the_rule_cache() -> None:
    # 100,000 cached 64 KiB topics (fleet/<anything>/telemetry) would have held ~6.5 GB.
    service = IngestService(IngestSettings(ingest_metrics_port=0), load_rules(None))
    long_topic = f"fleet/{'x' * 60_000}/telemetry"
    assert [r.name for r in service._rules_for(long_topic)] == [
        r.name for r in service._rules_for("fleet/car-1/telemetry")
    ]
    assert list(service._topic_rules) == ["fleet/car-1/telemetry"]
