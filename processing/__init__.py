"""Processing: per-car window statistics, sessions and anomaly alerts (Quix Streams).

Run it with ``fleetstream process`` or ``python -m processing``.

The service entry points are imported lazily (PEP 562), so readers of the pure modules
(``processing.stats``, ``processing.sessions``, ``processing.detectors``; the dashboard,
for one) do not load Quix Streams and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from processing._main import build_app, main
    from processing._settings import ProcessingSettings
    from processing.pipeline import Pipeline, PipelineConfig, define_pipeline

_LAZY: Final = {
    "build_app": "processing._main",
    "main": "processing._main",
    "ProcessingSettings": "processing._settings",
    "Pipeline": "processing.pipeline",
    "PipelineConfig": "processing.pipeline",
    "define_pipeline": "processing.pipeline",
}

__all__ = [
    "Pipeline",
    "PipelineConfig",
    "ProcessingSettings",
    "build_app",
    "define_pipeline",
    "main",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'processing' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)
