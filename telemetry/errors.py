"""The root of every exception fleetstream raises on purpose."""

from __future__ import annotations


class FleetstreamError(Exception):
    """Base class for all fleetstream errors; each package derives its own from it."""
