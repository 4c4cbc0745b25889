"""Wiring: topics, Application and metrics endpoint around :func:`define_pipeline`."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaException
from prometheus_client import start_http_server
from quixstreams import Application
from quixstreams.models import TopicConfig
from quixstreams.models.serializers.json import JSONSerializer
from quixstreams.models.serializers.simple_types import BytesSerializer

from processing import outputs as roles
from processing._settings import ProcessingSettings
from processing.instance import InstanceError, claim_instance, transactional_id
from processing.lag import LagReporter
from processing.metrics import ProcessingMetrics
from processing.outputs import OutputSerializer, route
from processing.pipeline import PipelineConfig, define_pipeline
from telemetry.gctune import tune_for_service
from telemetry.logs import configure_service_logging
from telemetry.settings import load_settings
from telemetry.topics import create_missing_topics

_log = logging.getLogger("processing")


@dataclass(frozen=True, slots=True)
class ClientConfigs:
    """What the Application's Kafka clients are given."""

    broker_address: str
    consumer: dict[str, Any]
    producer: dict[str, Any]


def client_configs(settings: ProcessingSettings, instance_id: str | None) -> ClientConfigs:
    """Split the connection settings into the Application's broker and client configs.

    Args:
        settings: The service's settings.
        instance_id: This instance's stable name (:mod:`processing.instance`). Under
            exactly-once it names the producer's ``transactional.id``; ``None`` lets
            Quix draw a random one per start (see that module for why not to). With
            static membership it is also the consumer's ``group.instance.id``.
    """
    connection = settings.kafka_client_config()
    broker_address = str(connection.pop("bootstrap.servers"))
    consumer = connection
    producer = dict(connection)
    producer["linger.ms"] = settings.linger_ms()
    if instance_id is not None:
        if settings.processing_guarantee == "exactly-once":
            producer["transactional.id"] = transactional_id(
                settings.processing_consumer_group, instance_id
            )
        if settings.processing_static_membership:
            consumer["group.instance.id"] = instance_id
    return ClientConfigs(broker_address, consumer, producer)


def _create_topics(settings: ProcessingSettings) -> None:
    """Create the missing input and output topics before Quix looks for them.

    Quix would create them one at a time at about 1 s each; its changelog topics are
    left to it. When Kafka cannot be asked now, Quix's own attempt reports the problem.
    """
    try:
        created = create_missing_topics(
            settings.kafka_client_config(),
            settings.topics(),
            partitions=settings.processing_partitions,
            replication_factor=settings.processing_replication_factor,
        )
    except (KafkaException, TimeoutError) as exc:
        _log.warning("could not create the topics in one request (%r); Quix will try", exc)
        return
    if created:
        _log.info("created topics %s", ", ".join(created))


def pipeline_config(settings: ProcessingSettings, metrics: ProcessingMetrics) -> PipelineConfig:
    """The pipeline's tunables from the service's settings."""
    if settings.processing_max_future_s > settings.processing_grace_s:
        _log.warning(
            "FLEETSTREAM_PROCESSING_MAX_FUTURE_S (%s) exceeds FLEETSTREAM_PROCESSING_GRACE_S "
            "(%s): a car whose clock runs ahead by more than the grace period moves its "
            "partition's clock so far that the other cars' last records of each window "
            "are late",
            settings.processing_max_future_s,
            settings.processing_grace_s,
        )
    return PipelineConfig(
        window_ms=settings.processing_window_s * 1000,
        grace_ms=settings.processing_grace_s * 1000,
        stats_spread_ms=round(settings.processing_stats_spread_s * 1000),
        metrics=metrics,
        model_dir=settings.processing_model_dir,
        max_future_ms=round(settings.processing_max_future_s * 1000),
        odometer_resolution_km=settings.processing_odometer_resolution_km,
    )


def build_app(
    settings: ProcessingSettings,
    metrics: ProcessingMetrics,
    instance_id: str | None = None,
) -> Application:
    """Create the Application with every output topic wired to the pipeline's outputs."""
    clients = client_configs(settings, instance_id)
    app = Application(
        broker_address=clients.broker_address,
        consumer_extra_config=clients.consumer,
        producer_extra_config=clients.producer,
        consumer_group=settings.processing_consumer_group,
        auto_offset_reset=settings.processing_auto_offset_reset,
        processing_guarantee=settings.processing_guarantee,
        commit_interval=settings.processing_commit_interval_s,
        # Quix commits after a poll; an empty poll blocked 1 s (its default), so the end
        # of a burst waited a second for its commit (unseen by read_committed readers
        # under exactly-once; its offsets uncommitted either way).
        consumer_poll_timeout=min(1.0, settings.processing_commit_interval_s),
        state_dir=settings.processing_state_dir,
        loglevel="WARNING",
    )
    config = TopicConfig(
        num_partitions=settings.processing_partitions,
        replication_factor=settings.processing_replication_factor,
    )
    _create_topics(settings)
    source = app.topic(settings.processing_input_topic, value_deserializer="bytes", config=config)
    json_out = OutputSerializer(JSONSerializer())
    stats, sessions, alerts, shadow = (
        app.topic(topic, value_serializer=json_out, config=config)
        for topic in (
            settings.processing_stats_topic,
            settings.processing_sessions_topic,
            settings.processing_alerts_topic,
            settings.processing_shadow_alerts_topic,
        )
    )
    quarantine = app.topic(
        settings.processing_quarantine_topic,
        value_serializer=OutputSerializer(BytesSerializer()),
        config=config,
    )
    pipeline = define_pipeline(app.dataframe(source), pipeline_config(settings, metrics))
    topics = {
        roles.STATS: stats,
        roles.SESSIONS: sessions,
        roles.ALERTS: alerts,
        roles.WINDOW_ALERTS: alerts,
        roles.SHADOW_ALERTS: shadow,
        roles.QUARANTINE: quarantine,
    }
    route(pipeline.outputs, topics)
    return app


_STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT})


def _stop_on_signals(app: Application, timeout_s: float) -> threading.Thread:
    """Stop ``app`` on SIGTERM/SIGINT from a thread of its own, and exit hard if it hangs.

    Python runs signal handlers in the main thread between bytecodes, so a main thread
    blocked in librdkafka never sees them: a Kafka transaction operation was seen
    blocked without end after a Kafka restart (docs/faults.md). The C-level handler
    still writes the signal's number to the wakeup fd, whichever thread it interrupts,
    so a thread of ours reads it there. A stop still running after ``timeout_s`` logs an
    ERROR and exits with code 70; with exactly-once the open transaction is then not
    committed. Must be called from the main thread.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in _STOP_SIGNALS:
        # Quix installs its own handlers in run(); until then, do not die on SIGTERM.
        signal.signal(signum, lambda *_: None)

    def hard_exit() -> None:
        _log.error(
            "processing did not stop within %.0f s (a Kafka transaction operation is "
            "stuck); exiting with code 70, the open transaction is not committed",
            timeout_s,
        )
        logging.shutdown()
        os._exit(70)

    def wait_for_signal() -> None:
        while True:
            received = os.read(read_fd, 1)
            if received and received[0] in _STOP_SIGNALS:
                break
        _log.info("%s received; stopping", signal.Signals(received[0]).name)
        timer = threading.Timer(timeout_s, hard_exit)
        timer.name = "processing-stop-deadline"
        timer.daemon = True
        timer.start()
        # Quix's run() marks itself running only once its loop starts: a stop before
        # that (SIGTERM in the first second) was undone, and the deadline killed it.
        while True:
            app.stop()
            time.sleep(0.2)

    thread = threading.Thread(target=wait_for_signal, name="processing-signals", daemon=True)
    thread.start()
    return thread


def main() -> int:
    """Run processing until SIGTERM/SIGINT; returns the exit code."""
    if not configure_service_logging():
        return 2
    settings = load_settings(ProcessingSettings, _log)
    if settings is None:
        return 2
    try:
        claim = claim_instance(settings.processing_state_dir, settings.processing_instance_id)
    except InstanceError as exc:
        _log.error("%s", exc)
        return 2
    metrics = ProcessingMetrics()
    if settings.processing_metrics_port:
        start_http_server(
            settings.processing_metrics_port,
            settings.processing_metrics_host,
            registry=metrics.registry,
        )
    app = build_app(settings, metrics, claim.instance_id)
    _log.info(
        "processing %s -> %s, %s, %s (%s, instance %s)",
        settings.processing_input_topic,
        settings.processing_stats_topic,
        settings.processing_sessions_topic,
        settings.processing_alerts_topic,
        settings.processing_guarantee,
        claim.instance_id,
    )
    lag = LagReporter(
        settings.kafka_client_config(),
        settings.processing_consumer_group,
        settings.processing_input_topic,
        metrics,
    )
    lag.start()
    _stop_on_signals(app, settings.processing_stop_timeout_s)
    tune_for_service()
    try:
        app.run()
    finally:
        lag.stop()
        claim.release()
    _log.info("processing stopped")
    return 0
