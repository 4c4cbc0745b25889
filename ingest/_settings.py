"""Settings of the ingest service (env prefix ``FLEETSTREAM_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from telemetry.settings import ENV_PREFIX, KafkaConnectionSettings, MqttConnectionSettings


class IngestSettings(KafkaConnectionSettings, MqttConnectionSettings):
    """Everything ``fleetstream ingest`` reads from the environment.

    Connection fields (``FLEETSTREAM_MQTT_*``, ``FLEETSTREAM_KAFKA_*``) are shared with
    the other services; the rest are specific to ingest.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    mqtt_client_id: str = Field(
        default="fleetstream-ingest",
        description="Fixed client id: the persistent session (and its backlog) belongs to it. "
        "Give every ingest process its own.",
    )
    mqtt_receive_maximum: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="MQTT 5 Receive Maximum: messages the broker may have in flight to us "
        "unacknowledged. Bounds ingest memory; the broker queues the rest.",
    )
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    ingest_qos0_max_queued: int = Field(
        default=20_000,
        ge=0,
        description="QoS 0 messages that may wait for Kafka at most (Kafka down or slower "
        "than MQTT); further QoS 0 messages are dropped and counted in "
        "fleetstream_ingest_dropped_total. QoS 0 has no acknowledgement that could make the "
        "broker hold them, and QoS 1 messages keep their own room in the queue.",
    )
    ingest_rules_file: Path | None = Field(
        default=None, description="Rules file; default: the packaged one."
    )
    ingest_state_dir: Path = Field(
        default=Path(".run/ingest-state"),
        description="Where ingest records the MQTT filters its session holds, so that a "
        "later process under the same client id unsubscribes from those its rules dropped.",
    )
    ingest_metrics_host: str = "127.0.0.1"
    ingest_metrics_port: int = Field(
        default=9464, ge=0, le=65535, description="0 disables /metrics and /healthz."
    )
    ingest_stall_s: float = Field(
        default=10.0,
        gt=0,
        description="Unacknowledged for longer than this = Kafka is not confirming.",
    )
    ingest_producer_restart_s: float = Field(
        default=20.0,
        gt=0,
        description="Records queued but none confirmed for this long, while a fresh client "
        "has found Kafka answering with every partition led for this long too: the producer "
        "is replaced and its records produced again.",
    )
    ingest_reconnect_min_s: float = Field(default=0.5, gt=0)
    ingest_reconnect_max_s: float = Field(default=30.0, gt=0)
    ingest_shutdown_timeout_s: float = Field(default=30.0, gt=0)
    kafka_topic_partitions: int = Field(
        default=4,
        ge=1,
        description="Partitions of topics ingest creates (targets, quarantine, commands).",
    )
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_linger_ms: int = Field(default=5, ge=0)
    kafka_batch_messages: int = Field(default=10_000, ge=1)
    # Measured on the 2-core benchmark machine: lz4 cost ingest ~10 us per message and
    # the broker (which decompresses every batch to validate it) 3-4x its CPU; over a
    # slow link or for disk, set lz4 or zstd (docs/ingest.md).
    kafka_compression: str = Field(default="none", pattern="^(none|gzip|snappy|lz4|zstd)$")
