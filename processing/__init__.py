"""Processing: per-car window statistics, sessions and anomaly alerts (Quix Streams).

Run it with ``fleetstream process`` or ``python -m processing``.
"""

from processing._main import build_app, main
from processing._settings import ProcessingSettings
from processing.pipeline import Pipeline, PipelineConfig, define_pipeline

__all__ = [
    "Pipeline",
    "PipelineConfig",
    "ProcessingSettings",
    "build_app",
    "define_pipeline",
    "main",
]
