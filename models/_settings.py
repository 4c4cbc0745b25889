"""Settings of the archive service (env prefix ``FLEETSTREAM_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from telemetry.settings import ENV_PREFIX, KafkaConnectionSettings


class ArchiveSettings(KafkaConnectionSettings):
    """Everything ``fleetstream archive`` reads from the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    archive_dir: Path = Field(default=Path("archive"), description="Archive root folder.")
    archive_telemetry_topic: str = "vehicle-telemetry"
    archive_stats_topic: str = "vehicle-stats"
    archive_consumer_group: str = Field(
        default="fleetstream-archive", description="Its committed offsets are the progress."
    )
    archive_max_rows: int = Field(
        default=1_000_000, ge=1, description="Rows buffered before files are written."
    )
    archive_max_age_s: float = Field(
        default=600.0, gt=0, description="Longest time a record waits in memory."
    )
    archive_metrics_host: str = "127.0.0.1"
    # Off by default: `fleetstream archive --until-idle` is also a one-off batch job.
    archive_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it."
    )
