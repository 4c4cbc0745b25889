"""``fleetstream bench``: throughput and latency on the real local brokers, next to baselines.

Every figure is measured next to a baseline run on the same machine in the same
invocation and reported as a ratio, because shared machines drift.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bench._report import Report, Row, Target
from bench.errors import BenchError, HarnessError

if TYPE_CHECKING:
    from bench._e2e import run_e2e
    from bench._ingest import run_ingest
    from bench._pipeline import run_pipeline

__all__ = [
    "BenchError",
    "HarnessError",
    "Report",
    "Row",
    "Target",
    "run_e2e",
    "run_ingest",
    "run_pipeline",
]

_LAZY = {
    "run_ingest": "bench._ingest",
    "run_pipeline": "bench._pipeline",
    "run_e2e": "bench._e2e",
}


def __getattr__(name: str) -> Any:
    # Each benchmark pulls in heavy peers (quixstreams, simulator); import only the one run.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'bench' has no attribute {name!r}"
    raise AttributeError(msg)
