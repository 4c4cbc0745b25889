"""Settings of the processing service (env prefix ``FLEETSTREAM_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from processing.detectors import SensorGlitch
from telemetry.settings import ENV_PREFIX, FutureLimitSettings, KafkaConnectionSettings

# With exactly-once a record is readable only after the commit, and the commit sends
# what lingers at once (librdkafka >= 1.9, its pull request 3494): a longer linger adds
# no latency and sends the changelog, one record per car and second, in fewer requests
# (docs/benchmarks-history.md, 2026-12-04).
EXACTLY_ONCE_LINGER_MS: Final = 100
# librdkafka's own default: with at-least-once, outputs are readable when written.
AT_LEAST_ONCE_LINGER_MS: Final = 5


class ProcessingSettings(KafkaConnectionSettings, FutureLimitSettings):
    """Everything ``fleetstream process`` reads from the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    processing_input_topic: str = "vehicle-telemetry"
    processing_stats_topic: str = "vehicle-stats"
    processing_sessions_topic: str = "vehicle-sessions"
    processing_alerts_topic: str = "vehicle-alerts"
    processing_shadow_alerts_topic: str = Field(
        default="vehicle-alerts.shadow",
        description="Would-be alerts of the registry's shadow model (candidate under test).",
    )
    processing_quarantine_topic: str = "vehicle-telemetry.processing-quarantine"
    processing_partitions: int = Field(
        default=4, ge=1, description="Partitions of topics processing creates."
    )
    processing_replication_factor: int = Field(default=1, ge=1)
    processing_consumer_group: str = "fleetstream-processing"
    processing_state_dir: Path = Path(".run/processing-state")
    processing_instance_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="Stable name of this instance; its exactly-once transactional id is "
        "<consumer group>.<instance id>. Default: host name and a hash of STATE_DIR.",
    )
    processing_static_membership: bool = Field(
        default=False,
        description="Join the group as a static member (group.instance.id = instance id): "
        "a restart within the session timeout gets its partitions back without a "
        "rebalance, but a stopped member holds its partitions until the timeout.",
    )
    processing_window_s: int = Field(default=60, ge=1)
    processing_grace_s: int = Field(default=10, ge=0)
    processing_stats_spread_s: float = Field(
        default=10.0,
        ge=0,
        description="A still-sending car's closed-window stats come up to this long after "
        "the close (a fixed offset per car), so that every car's stats are not computed "
        "at once; 0 = with the car's next record.",
    )
    # With exactly-once, outputs become readable only at a commit: this bounds alert
    # latency. At 10,000 cars, 0.15 s gave p99 ts->alert 390-412 ms against 529-746 ms
    # at 0.25 s, at the same CPU; 0.1 s no better (343-427 ms) for more transactions
    # (docs/benchmarks-history.md, 2026-12-04 22:59).
    processing_commit_interval_s: float = Field(default=0.15, gt=0)
    processing_guarantee: Literal["exactly-once", "at-least-once"] = "exactly-once"
    processing_linger_ms: int | None = Field(
        default=None,
        ge=0,
        le=900_000,
        description="The producer's linger.ms. Default: 100 with exactly-once (outputs are "
        "readable only at a commit, which sends at once), 5 (librdkafka's) with "
        "at-least-once (outputs are readable when written).",
    )
    # A Kafka transaction operation can block without end when the broker restarts in
    # the middle of it; after this long a stop exits hard instead of hanging.
    processing_stop_timeout_s: float = Field(default=30.0, gt=0)
    processing_odometer_resolution_km: float = Field(
        default=SensorGlitch.ODOMETER_RESOLUTION_KM,
        gt=0,
        le=10,
        allow_inf_nan=False,
        description="The step the cars' odometers count in (0.1: OBD-II and most clusters; "
        "1.0 for a source in whole km). The sensor-glitch rule tolerates one step "
        "backwards and one beyond what 300 km/h covers.",
    )
    processing_auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    processing_model_dir: Path | None = Field(
        default=None, description="Model registry folder; its promoted version scores windows."
    )
    processing_metrics_host: str = "127.0.0.1"
    processing_metrics_port: int = Field(
        default=9465, ge=0, le=65535, description="0 disables /metrics."
    )

    def linger_ms(self) -> int:
        """The producer's ``linger.ms``: the setting, else the guarantee's default."""
        if self.processing_linger_ms is not None:
            return self.processing_linger_ms
        if self.processing_guarantee == "exactly-once":
            return EXACTLY_ONCE_LINGER_MS
        return AT_LEAST_ONCE_LINGER_MS

    def topics(self) -> tuple[str, ...]:
        """The input and output topics (Quix's changelog topics not included)."""
        return (
            self.processing_input_topic,
            self.processing_stats_topic,
            self.processing_sessions_topic,
            self.processing_alerts_topic,
            self.processing_shadow_alerts_topic,
            self.processing_quarantine_topic,
        )
