"""``fleetstream bench pipeline``."""

from __future__ import annotations

from bench._report import Report
from bench.errors import BenchError


def run_pipeline(*, vehicles: int, seconds: int) -> Report:
    """Not built yet."""
    msg = "fleetstream bench pipeline is not built yet"
    raise BenchError(msg)
