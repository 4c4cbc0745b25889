"""Errors of the simulator."""

from __future__ import annotations

from telemetry.errors import FleetstreamError


class SimulatorError(FleetstreamError):
    """The simulator cannot run as asked (bad option, unreachable broker)."""
