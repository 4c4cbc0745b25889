"""Errors of ``fleetstream bench`` and its harness."""

from telemetry.errors import FleetstreamError


class BenchError(FleetstreamError):
    """A benchmark could not run or its measurement is invalid (e.g. messages were lost)."""


class HarnessError(BenchError):
    """A service under test or benchmark misbehaved (exited, did not connect, lost data)."""
