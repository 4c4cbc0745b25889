"""Errors raised while managing the local brokers."""

from __future__ import annotations

from telemetry.errors import FleetstreamError


class InfraError(FleetstreamError):
    """A local broker could not be installed, started, stopped or reached."""
