"""``fleetstream bench ingest``."""

from __future__ import annotations

from bench._report import Report
from bench.errors import BenchError


def run_ingest(*, vehicles: int, seconds: int) -> Report:
    """Not built yet."""
    msg = "fleetstream bench ingest is not built yet"
    raise BenchError(msg)
