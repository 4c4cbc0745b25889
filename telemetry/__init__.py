"""Shared wire contract, settings and helpers used by every fleetstream service."""

from telemetry.errors import FleetstreamError

__all__ = ["FleetstreamError"]
