"""Errors of the dashboard package."""

from __future__ import annotations

from telemetry.errors import FleetstreamError


class DashboardError(FleetstreamError):
    """Base class of dashboard errors."""


class FeedbackError(DashboardError):
    """Alert feedback could not be written to Kafka."""


class FeedError(DashboardError):
    """The Kafka feed's client stopped working; the feed builds a new one."""
