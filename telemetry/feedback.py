"""The ``vehicle-alerts.feedback`` wire record: operators' verdicts on alerts.

The dashboard writes one record per click; training reads them back as labels. The
latest record of an ``alert_id`` (by ``ts``) is the verdict that counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, TypedDict

Verdict = Literal["acknowledged", "false_positive"]
VERDICTS: Final = ("acknowledged", "false_positive")


class FeedbackRecord(TypedDict):
    """One ``vehicle-alerts.feedback`` record."""

    alert_id: str
    episode_id: str
    vehicle_id: str
    kind: str
    alert_ts: int
    verdict: str
    ts: int
    source: str


def latest_feedback(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The record per ``alert_id`` that counts: the latest by ``ts`` (ties: the later one).

    ``false_positive`` marks a wrong detection (a negative for training), ``acknowledged``
    a seen and believed one (a confirmed positive).
    """
    latest: dict[str, Mapping[str, Any]] = {}
    for record in records:
        alert_id = str(record["alert_id"])
        if alert_id not in latest or int(record["ts"]) >= int(latest[alert_id]["ts"]):
            latest[alert_id] = record
    return list(latest.values())


def latest_verdicts(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The verdict per ``alert_id`` that counts (see :func:`latest_feedback`)."""
    return {str(r["alert_id"]): str(r["verdict"]) for r in latest_feedback(records)}
