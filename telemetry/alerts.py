"""The ``vehicle-alerts`` wire record: the one field list processing writes and readers use."""

from __future__ import annotations

from typing import Any, TypedDict


class AlertFields(TypedDict):
    """Fields every alert carries, whether raised or cleared."""

    alert_id: str
    episode_id: str
    vehicle_id: str
    kind: str
    severity: str
    ts: int
    message: str
    evidence: dict[str, Any]
    detector: str


class AlertRecord(AlertFields):
    """One ``vehicle-alerts`` record; ``status`` is ``raised`` or ``cleared``."""

    status: str
