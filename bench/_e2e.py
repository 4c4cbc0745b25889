"""``fleetstream bench e2e``."""

from __future__ import annotations

from bench._report import Report
from bench.errors import BenchError


def run_e2e(*, vehicles: list[int], seconds: int) -> Report:
    """Not built yet."""
    msg = "fleetstream bench e2e is not built yet"
    raise BenchError(msg)
