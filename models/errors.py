"""Errors of the models package."""

from __future__ import annotations

from telemetry.errors import FleetstreamError


class ModelError(FleetstreamError):
    """A model artifact is missing, corrupt, incompatible or carries untrusted types."""


class DataError(FleetstreamError):
    """Training, backtest or archive input that cannot be read."""
