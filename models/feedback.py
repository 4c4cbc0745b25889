"""Operators' verdicts (``vehicle-alerts.feedback``) as training labels.

An acknowledged ``high_consumption`` alert confirms the windows that raised it; a false
positive says they were normal. Those windows are the ``STREAK`` windows that end at the
alert's time (the detector raises on the last of them): the label is the half-open span
``[alert_ts + 1 - STREAK * window, alert_ts + 1)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from models.dataset import LABEL_COLUMNS, read_json_lines
from models.errors import DataError
from processing.detectors import HighConsumption
from telemetry.feedback import VERDICTS, latest_feedback


def load_feedback(path: Path) -> list[dict[str, Any]]:
    """Feedback records from a JSON-lines file (e.g. an export of the topic).

    Raises:
        DataError: The file is missing or a line is not JSON.
    """
    return read_json_lines(path, "feedback")


def feedback_labels(
    records: Iterable[Mapping[str, Any]], window_ms: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label intervals from the latest verdict per alert, for the consumption model.

    Args:
        records: ``vehicle-alerts.feedback`` records (any order, repeated verdicts allowed).
        window_ms: Length of one stats window.

    Returns:
        ``(confirmed, rejected)`` label frames (columns of ``load_labels``): intervals of
        acknowledged and of false-positive ``high_consumption`` alerts.

    Raises:
        DataError: A record misses a field or has an unknown verdict.
    """
    confirmed: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    try:
        latest = latest_feedback(records)
        for record in latest:
            verdict = str(record["verdict"])
            if verdict not in VERDICTS:
                msg = f"feedback for {record['alert_id']}: unknown verdict {verdict!r}"
                raise DataError(msg)
            if record["kind"] != HighConsumption.kind:
                continue
            # The alert's ts is its window's end - 1: the label is the half-open span
            # [start, end) of exactly the STREAK windows ending there (end - STREAK
            # windows from alert_ts itself reached into a fourth window).
            end = int(record["alert_ts"]) + 1
            label = {
                "vehicle_id": str(record["vehicle_id"]),
                "kind": HighConsumption.kind,
                "start_ts": end - HighConsumption.STREAK * window_ms,
                "end_ts": end,
                "magnitude": float("nan"),
            }
            (confirmed if verdict == "acknowledged" else rejected).append(label)
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"a feedback record is incomplete or malformed: {exc!r}"
        raise DataError(msg) from exc
    return (
        pd.DataFrame(confirmed, columns=LABEL_COLUMNS),
        pd.DataFrame(rejected, columns=LABEL_COLUMNS),
    )
