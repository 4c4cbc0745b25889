"""Errors of the ingest service."""

from __future__ import annotations

from telemetry.errors import FleetstreamError


class IngestError(FleetstreamError):
    """Base class of ingest errors."""


class RulesError(IngestError):
    """A rules file is invalid.

    Attributes:
        source: File name (or a description of the source).
        line: 1-based line of the problem, when known.
        reason: What is wrong.
    """

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


class FatalConnectError(IngestError):
    """The broker refused us for a reason retrying cannot fix (e.g. bad credentials)."""


class BackgroundTaskError(IngestError):
    """A background task ingest cannot work without (Kafka polling or probing) ended.

    Without the poll loop no PUBACK goes out again, while the service looked alive; it
    stops instead, and the broker redelivers what it had not acknowledged.
    """
