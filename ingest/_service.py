"""The ingest service: MQTT -> Kafka with ack-after-Kafka, and Kafka -> MQTT commands."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ingest._acks import OrderedAcker, Pending
from ingest._kafka import KafkaSink, ensure_topics, is_transient, kafka_problem
from ingest._metrics import IngestMetrics, serve_http
from ingest._paho import (
    UndecodableProperties,
    guard_write_registration,
    send_acks,
    take_over_acks_and_delivery,
    watch_session_present,
    watch_unsubacks,
)
from ingest._routing import Inbound, Outbound, quarantine, route
from ingest._rules import (
    KafkaToMqttRule,
    MqttToKafkaRule,
    RuleSet,
    subscription_ids,
    topic_problem,
)
from ingest._settings import IngestSettings
from ingest._subscriptions import SubscriptionRecord
from ingest.errors import BackgroundTaskError, FatalConnectError
from telemetry.contract import QUARANTINE_MAX_BYTES

_log = logging.getLogger("ingest")
_T = TypeVar("_T")
# CONNACK/SUBACK codes retrying cannot fix: bad credentials, not authorised, banned,
# unsupported shared subscriptions (3.1.1: 4, 5; MQTT 5: 0x86, 0x87, 0x8A, 0x9E).
_FATAL_CONNECT_CODES: Final = {4, 5, 134, 135, 138}
_NO_SUBSCRIPTION: Final = 0x11  # UNSUBACK: the session did not hold the filter
_TOPIC_CACHE_MAX: Final = 100_000
# Longer topics are matched every time: 100,000 of the 64 KiB topics a publisher may send
# (through fleet/+/telemetry) would have held ~6.5 GB.
_TOPIC_CACHE_MAX_LEN: Final = 256
# A crashed command loop is restarted after 1 s, doubling up to 60 s while it keeps crashing.
_COMMAND_RESTART_MIN_S = 1.0
_COMMAND_RESTART_MAX_S: Final = 60.0


async def _finish_in_thread(fn: Callable[..., _T], *args: object) -> _T:
    """``asyncio.to_thread`` that, when cancelled, still waits for the thread to return.

    A cancelled ``to_thread`` leaves its thread running; closing a librdkafka client while
    that thread is still inside ``consume()`` corrupted the heap at exit
    (``tcache_thread_shutdown(): unaligned tcache chunk detected``).
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        raise


def _quarantine_backoff_s(attempt: int) -> float:
    """Wait before producing a refused quarantine record again: 1 s, doubling, at most 60 s."""
    return float(min(2 ** min(attempt, 6), 60))


def next_reconnect_delay(delay: float, max_s: float) -> float:
    """The wait after ``delay``: doubled, capped at ``max_s``, then up to 20 % shorter.

    The jitter keeps many clients from reconnecting in step; applied after the cap it
    made waits of up to 1.2 x ``max_s``.
    """
    return min(delay * 2, max_s) * random.uniform(0.8, 1.0)  # noqa: S311 - not for secrets


def _key_problem(key: str) -> str | None:
    """Why a command's key cannot be one level of an MQTT topic name, or None.

    The characters brokers refuse anywhere are checked on the whole topic
    (:func:`ingest._rules.topic_problem`).
    """
    if "/" in key or "+" in key or "#" in key:
        return "the key contains '/', '+' or '#'"
    return None


def _reason_value(rc: object) -> int:
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else -1


class IngestService:
    """One ingest process. ``await run()`` until SIGTERM/SIGINT or :meth:`stop`.

    Args:
        settings: Service settings.
        rules: Bridge rules.
    """

    def __init__(self, settings: IngestSettings, rules: RuleSet) -> None:
        self.settings = settings
        self.rules = rules
        self.metrics = IngestMetrics(r.name for r in rules.mqtt_to_kafka)
        self.sink = KafkaSink(settings, self.metrics)
        self.acker = OrderedAcker(self._send_acks)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._topics_ready = asyncio.Event()
        self._stopping = False
        self._crashed: str | None = None  # why a vital background task ended
        # Once subscribed, the broker must keep our session until it expires.
        self._had_session = False
        self._session_present = False
        self._topic_rules: dict[str, tuple[MqttToKafkaRule, ...]] = {}
        self._subscribed = SubscriptionRecord(settings.ingest_state_dir, settings.mqtt_client_id)
        self._held: frozenset[str] | None = None  # the record as last read or written
        self._unsuback: list[ReasonCode] = []  # reason codes of the latest UNSUBACK
        # The broker sends one copy of a message per subscription it matches: with
        # overlapping filters, each copy names its subscription by identifier and goes
        # to that subscription's rules only. Off otherwise, since an identifier makes
        # every PUBLISH carry properties (~2 us each to decode, see _paho._fast_properties).
        overlaps = rules.overlapping_subscriptions()
        self._sub_ids: dict[str, int] = {}
        if overlaps:
            self._sub_ids = subscription_ids(rules.subscriptions())
            _log.info(
                "overlapping MQTT filters (%s): subscribing with subscription identifiers "
                "so that each rule writes a message once",
                "; ".join(f"{a} and {b}" for a, b in overlaps),
            )
        self._received = self.metrics.received.counts
        self._produced = self.metrics.produced.counts
        self._last_failure_log = 0.0
        self._qos0_max = settings.ingest_qos0_max_queued
        self._dropped_unlogged = 0
        self._last_dropped_topic = ""
        self._last_drop_log = float("-inf")  # the first drop is reported at once
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._kafka_answering_since: float | None = None
        self._closing = False
        self._confirmed_in_poll = False
        # Command rules whose loop crashed and has not made progress since: rule -> error.
        self._commands_down: dict[str, str] = {}

    # ---------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        """Ask the service to stop: no new messages, finish and acknowledge the in-flight ones."""
        self._stop.set()

    def _on_vital_task_done(self, task: asyncio.Task[None]) -> None:
        """Stop the service when a task it cannot run without ends before a stop."""
        if task.cancelled() or self._stop.is_set():
            return
        exc = task.exception()
        self._crashed = f"background task {task.get_name()} ended: {exc!r}"
        _log.error(
            "%s; stopping ingest (the broker redelivers what was not acknowledged)",
            self._crashed,
            exc_info=exc,
        )
        self.stop()

    async def run(self) -> None:
        """Run until stopped.

        Raises:
            FatalConnectError: The MQTT broker refused us for a reason retrying cannot fix.
            BackgroundTaskError: Kafka polling or probing ended (a bug): no PUBACK would
                go out again.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        http = None
        if self.settings.ingest_metrics_port:
            http = serve_http(
                self.metrics,
                self.health,
                self.settings.ingest_metrics_host,
                self.settings.ingest_metrics_port,
            )
        _log.info(
            "ingest starting: %d MQTT->Kafka rules, %d Kafka->MQTT rules, client id %s, "
            "receive maximum %d",
            len(self.rules.mqtt_to_kafka),
            len(self.rules.kafka_to_mqtt),
            self.settings.mqtt_client_id,
            self.settings.mqtt_receive_maximum,
        )
        self.metrics.mqtt_up.set(0)
        self.metrics.kafka_up.set(0)
        vital = [
            asyncio.create_task(self._poll_loop(), name="kafka-poll"),
            asyncio.create_task(self._probe_loop(), name="kafka-probe"),
        ]
        for task in vital:
            task.add_done_callback(self._on_vital_task_done)
        self._tasks = [
            *vital,
            *(
                asyncio.create_task(self._run_commands(rule), name=f"commands-{rule.name}")
                for rule in self.rules.kafka_to_mqtt
            ),
        ]
        mqtt_task = asyncio.create_task(self._mqtt_loop(), name="mqtt")
        try:
            await mqtt_task
        finally:
            self._stop.set()
            for task in (*self._tasks, *self._retiring):
                task.cancel()
            for task in (*self._tasks, *self._retiring):
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # noqa: BLE001 - logged; the others must still finish
                    if task.get_name() not in (self._crashed or ""):  # else reported already
                        _log.exception("background task %s failed", task.get_name())
            self._closing = True  # the final flush runs callbacks in a worker thread
            remaining = await asyncio.to_thread(self.sink.flush, 10.0)
            if remaining:
                # Unacknowledged QoS 1/2 messages come again from the broker; QoS 0 ones are
                # gone. Purged so that destroying the producer cannot hang the exit.
                _log.warning("%d Kafka records still unconfirmed at exit, purged", remaining)
                self.sink.producer.purge()
            if http is not None:
                http.shutdown()
            _log.info("ingest stopped (%d messages acknowledged)", self.acker.acked)
        if self._crashed is not None:
            raise BackgroundTaskError(self._crashed)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Health for /healthz: MQTT connected and Kafka confirming within the stall limit."""
        oldest = self.acker.oldest_age_s()
        detail: dict[str, Any] = {
            "mqtt_connected": self._connected.is_set(),
            "kafka_up": self.sink.up,
            "kafka_last_error": self.sink.last_error,
            "inflight": len(self.acker),
            "oldest_unacked_s": round(oldest, 3),
            "acked": self.acker.acked,
        }
        if self._commands_down:
            detail["command_loops_down"] = dict(self._commands_down)
        ok = (
            self._connected.is_set()
            and oldest < self.settings.ingest_stall_s
            and not self.sink.fatal
            and not self._commands_down
        )
        detail["status"] = "ok" if ok else "degraded"
        return ok, detail

    # --------------------------------------------------------------------- MQTT
    def _send_acks(self, batch: list[tuple[int, int]]) -> None:
        if self._client is not None:
            send_acks(self._client, batch)
            self.metrics.acked.inc(len(batch))

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.mqtt_session_expiry_s
        # Flow control: the broker sends at most this many unacknowledged messages.
        props.ReceiveMaximum = s.mqtt_receive_maximum
        tls = None
        if s.mqtt_tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(s.mqtt_ca_file) if s.mqtt_ca_file else None,
                certfile=str(s.mqtt_cert_file) if s.mqtt_cert_file else None,
                keyfile=str(s.mqtt_key_file) if s.mqtt_key_file else None,
            )
        client = aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            identifier=s.mqtt_client_id,
            username=s.mqtt_username,
            password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            keepalive=s.mqtt_keepalive_s,
            tls_params=tls,
            tls_insecure=s.mqtt_tls_insecure if s.mqtt_tls else None,
            max_inflight_messages=100,
            logger=logging.getLogger("ingest.mqtt"),
        )
        client.pending_calls_threshold = 10_000
        take_over_acks_and_delivery(client, self._on_publish)
        watch_session_present(client, self._on_connack)
        watch_unsubacks(client, self._on_unsuback)
        guard_write_registration(client)
        return client

    def _on_unsuback(self, reason_codes: list[ReasonCode]) -> None:
        self._unsuback = reason_codes

    def _on_connack(self, session_present: bool) -> None:
        """Report a session the broker lost: what it held for us is gone with it."""
        self._session_present = session_present
        if session_present:
            _log.info("MQTT session resumed")
        elif self._had_session:
            self.metrics.mqtt_sessions_lost.inc()
            _log.error(
                "the MQTT broker no longer has the session of %s (restarted without "
                "persistence, crashed before saving it, or it expired): messages it had "
                "queued for ingest and those published before ingest subscribed again are "
                "lost",
                self.settings.mqtt_client_id,
            )
        else:
            _log.info("new MQTT session (none stored for this client id)")
        self._had_session = True

    async def _mqtt_loop(self) -> None:
        s = self.settings
        delay = s.ingest_reconnect_min_s
        where = f"{s.mqtt_host}:{s.mqtt_port}"
        while not self._stop.is_set():
            client = self._make_client()
            self.metrics.mqtt_reconnects.inc()
            try:
                # Set before connecting: a resumed session's queued messages can come in
                # the same read as the CONNACK, before the connect returns, and PUBACKs
                # released then (a message no rule takes) were dropped, each holding a
                # Receive Maximum slot for the whole connection.
                self._client = client
                async with client:
                    await self._subscribe(client)
                    self._connected.set()
                    self.metrics.mqtt_up.set(1)
                    delay = s.ingest_reconnect_min_s
                    _log.info("MQTT connected to %s as %s", where, s.mqtt_client_id)
                    await self._until_disconnect_or_stop(client)
                    if self._stop.is_set():
                        await self._drain()
            except MqttConnectError as exc:
                if _reason_value(exc.rc) in _FATAL_CONNECT_CODES:
                    msg = f"MQTT broker {where} refused the connection: {exc}"
                    raise FatalConnectError(msg) from None
                _log.warning("MQTT connect to %s failed: %s; retrying in %.1f s", where, exc, delay)
            except aiomqtt.MqttError as exc:
                _log.warning(
                    "MQTT connection to %s lost: %s; reconnecting in %.1f s", where, exc, delay
                )
            finally:
                self._connected.clear()
                self.metrics.mqtt_up.set(0)
                self._client = None
                dropped = self.acker.reset()
                if dropped:
                    _log.info(
                        "%d unacknowledged messages will be redelivered by the broker", dropped
                    )
            if self._stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            delay = next_reconnect_delay(delay, s.ingest_reconnect_max_s)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        seen: dict[str, int] = {}
        for rule in self.rules.mqtt_to_kafka:
            seen[rule.subscription] = max(seen.get(rule.subscription, 0), rule.qos)
        current = frozenset(seen)
        held = self._held_filters()
        # Written ahead: whatever happens below, the record names every filter the
        # session may hold, so a later start can still drop the ones its rules lack.
        self._record_filters(held | current if self._session_present else current)
        for subscription, qos in seen.items():
            props = None
            if self._sub_ids:
                props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
                props.SubscriptionIdentifier = self._sub_ids[subscription]
            codes = await client.subscribe(subscription, qos=qos, properties=props)
            code = codes[0] if isinstance(codes, list | tuple) and codes else None
            if code is not None and _reason_value(code) >= 0x80:
                msg = f"MQTT broker refused the subscription {subscription!r}: {code}"
                raise FatalConnectError(msg)
            _log.info("subscribed to %s (QoS %d)", subscription, qos)
        kept = await self._unsubscribe_stale(client, held, current) if self._session_present else ()
        self._record_filters(current | frozenset(kept))

    def _held_filters(self) -> frozenset[str]:
        """The filters an earlier process (or connection) of this client id subscribed."""
        if self._held is None:
            loaded = self._subscribed.load()
            if loaded is None and self._session_present:
                _log.warning(
                    "resumed an MQTT session with no record of its filters (%s): any "
                    "filters dropped from the rules before this start stay subscribed",
                    self._subscribed.path,
                )
            self._held = loaded or frozenset()
        return self._held

    def _record_filters(self, filters: frozenset[str]) -> None:
        # Kept in memory too: a reconnect neither reads the file nor rewrites it unchanged.
        if filters != self._held and self._subscribed.save(filters):
            self._held = filters

    async def _unsubscribe_stale(
        self, client: aiomqtt.Client, held: frozenset[str], current: frozenset[str]
    ) -> list[str]:
        """Drop the session's filters that no rule has now; the ones the broker kept.

        A resumed session keeps the subscriptions it was made with. A rule that gained a
        share_group would get every message through its old plain filter too, and a
        renamed share_group through both groups: duplicates in Kafka; a removed rule's
        messages would come in unmatched. Dropped after the new ones exist, so no
        message finds no subscription in between.
        """
        recorded = held - current
        plain = {r.mqtt for r in self.rules.mqtt_to_kafka if r.share_group} - current
        kept: list[str] = []
        for mqtt_filter in sorted(recorded | plain):
            self._unsuback = []
            await client.unsubscribe(mqtt_filter)
            refused = [c for c in self._unsuback if _reason_value(c) >= 0x80]
            if refused:
                _log.warning(
                    "MQTT broker refused to unsubscribe from %s (%s): kept in the record, "
                    "tried again at the next start",
                    mqtt_filter,
                    refused[0],
                )
                kept.append(mqtt_filter)
            elif any(_reason_value(c) == _NO_SUBSCRIPTION for c in self._unsuback):
                _log.debug("the session did not hold %s", mqtt_filter)
            else:
                why = (
                    "no rule has it now; an earlier process of this client id subscribed"
                    if mqtt_filter in recorded
                    else "shared now; an earlier session held it"
                )
                _log.info("unsubscribed from %s (%s)", mqtt_filter, why)
        return kept

    async def _until_disconnect_or_stop(self, client: aiomqtt.Client) -> None:
        async def watch() -> None:
            # Our hook delivers messages, so this queue stays empty: the iterator only
            # tells us (by raising MqttError) that the connection is gone.
            async for _ in client.messages:
                pass

        watcher = asyncio.create_task(watch(), name="mqtt-watch")
        stopper = asyncio.create_task(self._stop.wait(), name="stop-wait")
        try:
            done, _ = await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watcher, stopper):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if watcher in done:
            watcher.result()

    async def _drain(self) -> None:
        """Graceful stop: take no new messages, wait until Kafka confirmed and we acked the rest."""
        self._stopping = True
        if self._crashed is not None:
            return  # the loop that would confirm them is gone: the broker redelivers
        deadline = time.monotonic() + self.settings.ingest_shutdown_timeout_s
        _log.info("stopping: waiting for %d in-flight messages", len(self.acker))
        while len(self.acker) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls two conditions
            await asyncio.sleep(0.02)
        if len(self.acker):
            _log.warning(
                "%d messages unconfirmed at shutdown; the broker will redeliver them",
                len(self.acker),
            )

    def _rules_for(self, topic: str) -> tuple[MqttToKafkaRule, ...]:
        rules = self._topic_rules.get(topic)
        if rules is None:
            if len(self._topic_rules) >= _TOPIC_CACHE_MAX:
                self._topic_rules.clear()
            rules = tuple(
                r for r in self.rules.mqtt_to_kafka if mqtt.topic_matches_sub(r.mqtt, topic)
            )
            if len(topic) <= _TOPIC_CACHE_MAX_LEN:
                self._topic_rules[topic] = rules
        return rules

    def _on_publish(  # noqa: PLR0917 - the hot path, no message object per PUBLISH
        self,
        topic: str,
        payload: bytes,
        qos: int,
        dup: bool,
        mid: int,
        properties: Properties | None,
    ) -> None:
        """Handle one PUBLISH as it is read from the socket (asyncio loop thread).

        Never raises: an exception here would end the MQTT connection, and the broker
        would send the same message again after every reconnect.
        """
        try:
            self._handle_publish(topic, payload, qos, dup, mid, properties)
        except Exception:  # noqa: BLE001 - logged; see above
            # Before any rule took it (those quarantine their own failures): with no
            # PUBACK the broker redelivers it on the next session.
            self.metrics.quarantine_failed.labels(rule="", reason="internal").inc()
            _log.exception("handling a message on %s failed; it stays unacknowledged", topic)

    def _handle_publish(  # noqa: PLR0917 - see _on_publish
        self,
        topic: str,
        payload: bytes,
        qos: int,
        dup: bool,
        mid: int,
        properties: Properties | None,
    ) -> None:
        if self._stopping:
            return  # not acknowledged: the broker keeps it for the next session
        received_ms = time.time_ns() // 1_000_000
        if dup:
            self.metrics.redelivered.inc()
        rules = self._rules_for(topic)
        if self._sub_ids and rules and properties is not None:
            rules = self._rules_of_copy(rules, properties)
        if not rules:
            self.metrics.unmatched.inc()
            _log.debug("no rule for topic %s", topic)
            if qos:
                self.acker.add(mid, qos, 0)
            return
        user_props: Sequence[tuple[str, str]] = ()
        if properties is not None:
            if type(properties) is UndecodableProperties:
                inbound = Inbound(topic, payload, qos, dup, received_ms)
                detail = f"MQTT 5 properties cannot be decoded: {properties.error}"
                work = [(r, quarantine(r, inbound, "bad_properties", detail)) for r in rules]
                self._take(mid, qos, inbound, work)
                return
            user_props = getattr(properties, "UserProperty", ())
        inbound = Inbound(topic, payload, qos, dup, received_ms, user_props)
        try:
            work = [(rule, route(rule, inbound)) for rule in rules]
        except Exception:  # noqa: BLE001 - one message must never end the connection
            work = [(rule, self._route_or_quarantine(rule, inbound)) for rule in rules]
        self._take(mid, qos, inbound, work)

    def _rules_of_copy(
        self, rules: tuple[MqttToKafkaRule, ...], properties: Properties
    ) -> tuple[MqttToKafkaRule, ...]:
        """The rules whose subscription sent this copy of a message (overlapping filters).

        A copy without an identifier (or with undecodable properties) goes to every
        matching rule: a duplicate at worst, never a loss. So does one whose identifiers
        name no current rule: it was queued through a subscription of rules since changed
        (a renamed share group is a new subscription that did not exist meanwhile).
        """
        ids = getattr(properties, "SubscriptionIdentifier", None)
        if not ids or type(properties) is UndecodableProperties:
            return rules
        return tuple(r for r in rules if self._sub_ids[r.subscription] in ids) or rules

    def _take(
        self, mid: int, qos: int, inbound: Inbound, work: list[tuple[MqttToKafkaRule, Outbound]]
    ) -> None:
        """Produce a message's records; its PUBACK waits for all of them."""
        if not qos and self.sink.queued() >= self._qos0_max:
            self._drop(inbound, work)
            return
        entry = self.acker.add(mid, qos, len(work), work=(inbound, work)) if qos else None
        for rule, out in work:
            self._received[rule.name] += 1
            try:
                self._produce(rule, inbound, out, entry)
            except Exception as exc:  # noqa: BLE001 - quarantined instead (see _on_publish)
                self._internal_error(rule, inbound, out, entry, exc)

    def _drop(self, inbound: Inbound, work: list[tuple[MqttToKafkaRule, Outbound]]) -> None:
        """Drop a QoS 0 message: the Kafka backlog is full (counted, logged every 5 s).

        Waiting for room instead blocked the event loop for as long as Kafka was away:
        no message read, no QoS 1 acknowledgement and no PINGREQ (the broker would end
        the connection after 1.5x the keepalive).
        """
        for rule, _out in work:
            self._received[rule.name] += 1
            self.metrics.dropped.labels(rule=rule.name).inc()
        self._dropped_unlogged += 1
        self._last_dropped_topic = inbound.topic
        self._report_drops()

    def _report_drops(self) -> None:
        """Log the QoS 0 messages dropped since the last report, at most every 5 s."""
        now = time.monotonic()
        if not self._dropped_unlogged or now - self._last_drop_log < 5.0:
            return
        _log.error(
            "dropped %d QoS 0 messages (the latest on %s): %d records wait for Kafka (%s), "
            "FLEETSTREAM_INGEST_QOS0_MAX_QUEUED=%d; QoS 1 messages wait at the broker instead",
            self._dropped_unlogged,
            self._last_dropped_topic,
            self.sink.queued(),
            "which answers but has not confirmed them yet"
            if self.sink.up
            else f"unreachable: {self.sink.last_error or 'not confirming'}",
            self._qos0_max,
        )
        self._last_drop_log = now
        self._dropped_unlogged = 0

    def _route_or_quarantine(self, rule: MqttToKafkaRule, inbound: Inbound) -> Outbound:
        """``route``, with a bug in it quarantining the message (reason ``internal``)."""
        try:
            return route(rule, inbound)
        except Exception as exc:  # noqa: BLE001 - logged, and the message quarantined
            _log.exception("routing a message on %s by rule %s failed", inbound.topic, rule.name)
            return quarantine(rule, inbound, "internal", f"{type(exc).__name__}: {exc}")

    def _internal_error(
        self,
        rule: MqttToKafkaRule,
        inbound: Inbound,
        out: Outbound,
        entry: Pending | None,
        exc: Exception,
    ) -> None:
        """Last resort for a record whose production raised: quarantine it, or retry later."""
        _log.error(
            "producing a record of %s for rule %s failed",
            inbound.topic,
            rule.name,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        if out.reason != "internal":
            replacement = quarantine(
                rule, inbound, "internal", f"{type(exc).__name__}: {exc}", out.key
            )
            try:
                self._produce(rule, inbound, replacement, entry)
            except Exception:  # noqa: BLE001 - logged; retried below
                _log.exception("quarantining a record of %s failed too", inbound.topic)
            else:
                return
            out = replacement
        # Never acknowledged before Kafka confirmed it: tried again, ever more slowly.
        self.metrics.quarantine_failed.labels(rule=rule.name, reason="internal").inc()
        self._retry_later(rule, inbound, out, entry, 0)

    # -------------------------------------------------------------------- Kafka
    def _produce(
        self,
        rule: MqttToKafkaRule,
        inbound: Inbound,
        out: Outbound,
        entry: Pending | None,
        attempt: int = 0,
    ) -> None:
        epoch = self.sink.epoch

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if epoch != self.sink.epoch and entry is not None:
                # From a replaced producer: _recover_producer already produced the
                # entry's records again, and only the new copies may release its PUBACK.
                return
            if err is None:
                if out.quarantined:
                    self.metrics.quarantined.labels(rule=out.rule, reason=out.reason).inc()
                else:
                    self._produced[out.rule] += 1
                if entry is not None:
                    self.metrics.latency.observe((time.monotonic_ns() - entry.received_ns) / 1e9)
                    self.acker.confirm(entry)
                if epoch == self.sink.epoch:
                    self._confirmed_in_poll = True  # told to the sink once per poll
                return
            if self._closing:
                return  # QoS 1/2: the broker redelivers it; QoS 0: lost, logged at exit
            if epoch != self.sink.epoch:
                # A QoS 0 record the replaced producer never wrote: nobody else holds it.
                self._produce(rule, inbound, out, entry)
                return
            self._delivery_failed(rule, inbound, out, entry, err, attempt=attempt)

        refused = self.sink.produce(out, on_delivery)
        if refused is not None:
            # The client refused it outright (too large, invalid topic, ...): the same
            # handling as a permanent rejection in a delivery report.
            self._delivery_failed(rule, inbound, out, entry, refused, attempt=attempt)

    def _delivery_failed(
        self,
        rule: MqttToKafkaRule,
        inbound: Inbound,
        out: Outbound,
        entry: Pending | None,
        err: KafkaError,
        *,
        attempt: int = 0,
    ) -> None:
        self.metrics.failed.labels(reason=err.name()).inc()
        now = time.monotonic()
        if now - self._last_failure_log > 5.0:
            self._last_failure_log = now
            _log.error("Kafka rejected a record for %s: %s", out.topic, err.str())
        if entry is not None and entry.generation != self.acker.generation:
            return  # the broker redelivers it on the new session
        if err.fatal() or self.sink.fatal:
            if entry is None:
                # QoS 0: nobody else holds it; by then the poll loop has a new producer.
                asyncio.get_running_loop().call_later(0.5, self._produce, rule, inbound, out, None)
            return  # _recover_producer produces every unconfirmed record again
        if not out.quarantined and not is_transient(err):
            # A permanent rejection (too large, not authorised, ...) must not stall the
            # stream: the message goes to quarantine with Kafka's reason, then is acked.
            replacement = quarantine(rule, inbound, f"kafka:{err.name()}", err.str(), out.key)
            self._produce(rule, inbound, replacement, entry)
            return
        if out.quarantined:
            # Even the quarantine record was refused: loud, counted, and retried ever
            # more slowly (never acknowledged before Kafka confirmed it).
            self.metrics.quarantine_failed.labels(rule=rule.name, reason=err.name()).inc()
            _log.error(
                "Kafka refused the quarantine record (reason %s) of a message on %s for %s "
                "(attempt %d): %s; the message stays unacknowledged, retrying in %.0f s",
                out.reason,
                inbound.topic,
                out.topic,
                attempt + 1,
                err.str(),
                _quarantine_backoff_s(attempt),
            )
            self._retry_later(rule, inbound, out, entry, attempt)
            return
        # Still retry; never acknowledge what Kafka has not confirmed.
        asyncio.get_running_loop().call_later(
            1.0, self._retry, self.sink.epoch, rule, inbound, out, entry, 0
        )

    def _retry_later(
        self,
        rule: MqttToKafkaRule,
        inbound: Inbound,
        out: Outbound,
        entry: Pending | None,
        attempt: int,
    ) -> None:
        asyncio.get_running_loop().call_later(
            _quarantine_backoff_s(attempt),
            self._retry,
            self.sink.epoch,
            rule,
            inbound,
            out,
            entry,
            attempt + 1,
        )

    def _retry(  # noqa: PLR0917 - call_later passes positional arguments only
        self,
        epoch: int,
        rule: MqttToKafkaRule,
        inbound: Inbound,
        out: Outbound,
        entry: Pending | None,
        attempt: int,
    ) -> None:
        if entry is not None and (
            entry.generation != self.acker.generation or epoch != self.sink.epoch
        ):
            # The broker redelivers it on the new session, or _recover_producer already
            # produced all of the entry's records again: a third copy could release the
            # PUBACK before the other records are confirmed.
            return
        try:
            self._produce(rule, inbound, out, entry, attempt)
        except Exception as exc:  # noqa: BLE001 - a timer callback: nobody else would see it
            self._internal_error(rule, inbound, out, entry, exc)

    def _recover_producer(self, why: str) -> None:
        # Only the list holds the old producer, so that its destruction (which joins
        # librdkafka's threads) happens where retire() empties it, off the event loop.
        old = [self.sink.replace_producer()]
        entries = self.acker.unconfirmed()
        _log.error(
            "%s: new Kafka producer, producing %d unconfirmed messages again", why, len(entries)
        )
        task = asyncio.create_task(self._retire(old), name=f"retire-producer-{self.sink.epoch}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        for entry in entries:
            inbound: Inbound
            work: list[tuple[MqttToKafkaRule, Outbound]]
            inbound, work = entry.work  # type: ignore[misc]
            entry.outstanding = len(work)
            for rule, out in work:
                self._produce(rule, inbound, out, entry)

    async def _retire(self, old: list[Producer]) -> None:
        left = await self.sink.retire(old)
        if left:
            _log.warning("the replaced producer still held %d records at destruction", left)

    async def _poll_loop(self) -> None:
        stall = self.settings.ingest_stall_s
        last_tick = 0.0
        while True:
            try:
                with self.acker.batched():
                    served = self.sink.poll()
            except Exception:  # noqa: BLE001 - a bug in a callback must not end the loop
                # The other reports wait in the producer for the next poll.
                _log.exception("a Kafka delivery callback failed")
                served = 1
            if self._confirmed_in_poll:
                self._confirmed_in_poll = False
                self.sink.confirmed()
            if self.sink.fatal:
                self._recover_producer(f"fatal producer error ({self.sink.last_error})")
            now = time.monotonic()
            if now - last_tick >= 0.5:
                last_tick = now
                self._report_drops()
                oldest = self.acker.oldest_age_s()
                self.metrics.inflight.set(len(self.acker))
                self.metrics.oldest_unacked.set(oldest)
                if oldest > stall and self.sink.up:
                    self.sink.last_error = f"no confirmation for {oldest:.0f} s"
                    self.sink.mark(up=False)
            if served:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.001 if len(self.acker) else 0.01)

    def _static_topics(self) -> set[str]:
        topics: set[str] = set()
        for rule in self.rules.mqtt_to_kafka:
            if rule.topic.static:
                topics.add(rule.topic.text)
            topics.add(rule.quarantine_topic)
        for command in self.rules.kafka_to_mqtt:
            topics.update({command.kafka, f"{command.kafka}.quarantine"})
        return topics

    async def _probe_loop(self) -> None:
        """Create our topics once Kafka answers; while Kafka looks down, ask it for metadata."""
        topics_ready = False
        while True:
            if not topics_ready:
                try:
                    created = await asyncio.to_thread(
                        ensure_topics, self.settings, self._static_topics()
                    )
                except Exception as exc:  # noqa: BLE001 - retried until Kafka answers
                    _log.warning("cannot create Kafka topics yet: %s", exc)
                else:
                    topics_ready = True
                    self._topics_ready.set()
                    if created:
                        _log.info("created Kafka topics: %s", ", ".join(created))
            await self._check_producer_progress()
            if not self.sink.up and self.acker.oldest_age_s() < self.settings.ingest_stall_s:
                try:
                    await _finish_in_thread(self.sink.producer.list_topics, None, 3)
                except Exception as exc:  # noqa: BLE001 - any failure means "still down"
                    self.sink.last_error = str(exc)
                else:
                    self.sink.mark(up=True)
            await asyncio.sleep(2.0)

    async def _check_producer_progress(self) -> None:
        """Replace a producer that confirms nothing while Kafka itself answers.

        librdkafka's idempotent producer was seen (rarely, in CI) to hold its records for
        minutes after the broker came back from a freeze or restart. A producer with
        queued records and no confirmation for ``ingest_producer_restart_s``, while a fresh
        client has found every partition led for as long, is replaced and its records are
        produced again (at worst a counted duplicate, never a loss). Each further
        replacement without a confirmation in between waits twice as long.
        """
        waiting = len(self.sink.producer)
        if not waiting:
            self.sink.restarts_in_row = 0
        limit = self.settings.ingest_producer_restart_s * 2 ** min(self.sink.restarts_in_row, 5)
        now = time.monotonic()
        quiet = now - self.sink.last_confirmed
        if not waiting or quiet < limit:
            self._kafka_answering_since = None
            return
        waiting_topics = {
            out.topic
            for entry in self.acker.unconfirmed()
            for _rule, out in entry.work[1]  # type: ignore[index]
        }
        problem = await asyncio.to_thread(
            kafka_problem, self.settings, waiting_topics or self._static_topics()
        )
        if time.monotonic() - self.sink.last_confirmed < limit:
            self._kafka_answering_since = None  # it confirmed something meanwhile
            return
        if problem is not None:
            self._kafka_answering_since = None
            self.sink.last_error = problem
            return
        # Right after an outage the producer needs a few seconds to reconnect: only a
        # producer that stays silent while Kafka has been answering for `limit` is stuck.
        if self._kafka_answering_since is None:
            self._kafka_answering_since = now
            return
        answering = now - self._kafka_answering_since
        if answering < limit:
            return
        self._kafka_answering_since = None
        self._recover_producer(
            f"Kafka has answered for {answering:.0f} s but confirmed none of {waiting} "
            f"queued records for {quiet:.0f} s"
        )

    # ------------------------------------------------------------- Kafka -> MQTT
    async def _run_commands(self, rule: KafkaToMqttRule) -> None:
        """Keep a command rule's loop running: a crash is logged, counted and restarted.

        Until the restarted loop makes progress, /healthz reports the rule as down.
        """
        delay = _COMMAND_RESTART_MIN_S
        while True:
            try:
                await self._command_loop(rule)
            except Exception as exc:  # noqa: BLE001 - logged, counted, restarted
                if rule.name not in self._commands_down:
                    delay = _COMMAND_RESTART_MIN_S  # it had recovered since the last crash
                self._commands_down[rule.name] = f"{type(exc).__name__}: {exc}"
                self.metrics.command_loop_crashes.labels(rule=rule.name).inc()
                _log.exception(
                    "the Kafka -> MQTT command loop of %s crashed; restarting in %.0f s",
                    rule.name,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _COMMAND_RESTART_MAX_S)

    def _commands_progressing(self, rule: KafkaToMqttRule) -> None:
        if self._commands_down.pop(rule.name, None) is not None:
            _log.info("the command loop of %s works again", rule.name)

    async def _command_loop(self, rule: KafkaToMqttRule) -> None:
        # A consumer subscribed to a missing topic only notices it at the next metadata
        # refresh (minutes): subscribe once our topics exist.
        await self._topics_ready.wait()
        consumer = Consumer(
            self.settings.kafka_client_config(
                **{
                    "group.id": rule.group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": rule.offset_reset,
                    "client.id": f"{self.settings.mqtt_client_id}-{rule.name}",
                    "logger": logging.getLogger("ingest.kafka.librdkafka"),
                }
            )
        )
        consumer.subscribe([rule.kafka])
        published = self.metrics.commands.labels(rule=rule.name)
        try:
            while True:
                batch = await _finish_in_thread(consumer.consume, 200, 0.5)
                records = [m for m in batch if m.error() is None]
                for m in batch:
                    if m.error() is not None and m.error().code() != KafkaError._PARTITION_EOF:  # noqa: SLF001
                        _log.warning("command consumer %s: %s", rule.name, m.error())
                if not records:
                    self._commands_progressing(rule)
                    continue
                while True:
                    await self._connected.wait()
                    client = self._client
                    if client is None:
                        continue
                    try:
                        await asyncio.gather(
                            *(self._publish_command(client, rule, m) for m in records)
                        )
                        break
                    except aiomqtt.MqttError as exc:
                        _log.warning(
                            "publishing commands of %s failed (%s); retrying", rule.name, exc
                        )
                        await asyncio.sleep(1.0)
                published.inc(len(records))
                offsets: dict[tuple[str, int], int] = {}
                for m in records:
                    tp = (m.topic(), m.partition())
                    offsets[tp] = max(offsets.get(tp, -1), m.offset() + 1)
                commit = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                try:
                    await _finish_in_thread(
                        functools.partial(consumer.commit, offsets=commit, asynchronous=False)
                    )
                except KafkaException as exc:
                    # E.g. after a rebalance, or max.poll.interval.ms passed while MQTT was
                    # down: the records come again (at-least-once), so keep going.
                    self.metrics.commands_commit_failed.labels(rule=rule.name).inc()
                    _log.warning(
                        "committing the offsets of %d commands of %s failed (%s); they may "
                        "be published again",
                        len(records),
                        rule.name,
                        exc,
                    )
                else:
                    self._commands_progressing(rule)
        finally:
            await asyncio.to_thread(consumer.close)

    async def _produce_and_wait(self, out: Outbound) -> KafkaError | None:
        """Produce one record; returns Kafka's error, None once confirmed."""
        done: asyncio.Future[KafkaError | None] = asyncio.get_running_loop().create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if not done.done():
                done.get_loop().call_soon_threadsafe(
                    lambda: None if done.done() else done.set_result(err)
                )

        epoch = self.sink.epoch
        refused = self.sink.produce(out, on_delivery)
        if refused is not None:
            return refused
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(done), 5.0)
            except TimeoutError:
                if epoch != self.sink.epoch:
                    # Its producer was replaced and may be gone before it reported.
                    return KafkaError(KafkaError._PURGE_QUEUE)  # noqa: SLF001

    async def _publish_command(
        self, client: aiomqtt.Client, rule: KafkaToMqttRule, m: Message
    ) -> None:
        key = m.key()
        try:
            text = key.decode("utf-8") if key else ""
        except UnicodeDecodeError:
            text = ""
            problem: str | None = "the key is not valid UTF-8"
        else:
            problem = _key_problem(text)
        topic = rule.mqtt.render([], {"key": text, "topic": m.topic()})
        if problem is None and topic is not None:
            problem = topic_problem(topic)
        if topic is None or problem is not None:
            reason = "bad_key" if problem is not None else "no_key"
            detail = problem or "the record has no key"
            self.metrics.commands_quarantined.labels(rule=rule.name, reason=reason).inc()
            headers = [
                ("reason", reason.encode()),
                ("detail", detail.encode()),
                ("rule", rule.name.encode()),
            ]
            value = m.value() or b""
            if len(value) > QUARANTINE_MAX_BYTES:  # as for MQTT messages: under Kafka's limit
                headers.append(("truncated_from_bytes", str(len(value)).encode()))
                value = value[:QUARANTINE_MAX_BYTES]
            out = Outbound(
                f"{rule.kafka}.quarantine",
                key,
                value,
                headers,
                m.timestamp()[1],
                rule.name,
            )
            # Until Kafka confirms: the offset is committed only after this returns.
            attempt = 0
            while (err := await self._produce_and_wait(out)) is not None:
                delay = _quarantine_backoff_s(attempt)
                self.metrics.quarantine_failed.labels(rule=rule.name, reason=err.name()).inc()
                _log.error(
                    "quarantining a command of %s failed (%s); retrying in %.0f s",
                    rule.name,
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt += 1
            return
        await client.publish(topic, m.value(), qos=rule.qos, timeout=30)
