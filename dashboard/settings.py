"""Settings of the dashboard (env prefix ``FLEETSTREAM_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from telemetry.settings import ENV_PREFIX, FutureLimitSettings, KafkaConnectionSettings


class DashboardSettings(KafkaConnectionSettings, FutureLimitSettings):
    """Everything ``fleetstream dashboard`` reads from the environment.

    The Kafka connection (``FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS``, ``..._CONFIG``,
    ``..._PASSWORD``) is shared with every other service, and
    ``FLEETSTREAM_PROCESSING_MAX_FUTURE_S`` with processing.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    dashboard_telemetry_topic: str = "vehicle-telemetry"
    dashboard_stats_topic: str = "vehicle-stats"
    dashboard_sessions_topic: str = "vehicle-sessions"
    dashboard_alerts_topic: str = "vehicle-alerts"
    dashboard_feedback_topic: str = "vehicle-alerts.feedback"
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8501, ge=1, le=65535)
    dashboard_refresh_s: float = Field(
        default=2.0, ge=0.5, description="How often the live part of the page re-renders."
    )
    dashboard_backfill: int = Field(
        default=5000,
        ge=0,
        description="Records per partition of stats/sessions/alerts/feedback read on start.",
    )
    dashboard_telemetry_backfill: int = Field(
        default=500, ge=0, description="Records per partition of telemetry read on start."
    )
    dashboard_telemetry_sample_ms: int = Field(
        default=2000,
        ge=0,
        description="Keep at most one telemetry record per car per interval (event time).",
    )
    dashboard_windows_per_car: int = Field(
        default=720, ge=1, description="Stats windows kept per car (12 h of 60 s windows)."
    )
    dashboard_samples_per_car: int = Field(
        default=900, ge=1, description="Sampled telemetry records kept per car."
    )
    dashboard_sessions_per_car: int = Field(default=100, ge=1)
    dashboard_max_alerts: int = Field(default=5000, ge=1, description="Alert episodes kept.")
    dashboard_max_cars: int = Field(default=10_000, ge=1, description="Cars kept.")
    dashboard_online_s: float = Field(
        default=120.0, gt=0, description="A car is online if it reported within this time."
    )
    dashboard_kpi_window_s: float = Field(
        default=3600.0, gt=0, description="Consumption and completeness KPIs cover this time."
    )
    dashboard_map_style: str = Field(
        default="light",
        description="Base map: light, dark, road, satellite (need internet), or none.",
    )
