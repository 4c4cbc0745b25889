"""Markdown table of the latest fault rows: ``python -m tests.faults.report [full|ci]``.

Reads ``test-output/faults/rows.jsonl`` (or ``FLEETSTREAM_FAULTS_ROWS``), keeps the last
row of each case for the scale, and writes the table docs/faults.md shows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson

from bench.harness import FaultRow

_DEFAULT = Path(__file__).resolve().parents[2] / "test-output" / "faults" / "rows.jsonl"
# Table order: the order of the cases in the suite (names carry counts, so by prefix).
_ORDER = (
    "ingest_kill9",
    "kafka_stopped",
    "kafka_sigstop",
    "mosquitto_restart",
    "mosquitto_kill9",
    "ingest_fuzz",
    "processing_kill9",
    "processing_fuzz",
)


def _rank(case: str) -> int:
    return next((i for i, p in enumerate(_ORDER) if case.startswith(p)), len(_ORDER))


def latest_rows(path: Path, scale: str) -> list[dict[str, Any]]:
    """The last row of every case run at ``scale``, in the suite's order."""
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            row = orjson.loads(line)
            if row.get("scale") == scale:
                rows[row["case"]] = row  # a re-run replaces the row
    return sorted(rows.values(), key=lambda r: _rank(r["case"]))


def _passed(row: dict[str, Any]) -> str:
    # Rows written before the field existed were emitted before their checks ran.
    passed = row.get("passed")
    if passed is None:
        return "unchecked"
    return "yes" if passed else "**FAILED**"


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table: the issue's columns, whether the case passed, duration, time."""
    head = [*FaultRow.COLUMNS, "passed", "duration_s", "at (UTC)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row[c]) for c in FaultRow.COLUMNS]
        cells += [_passed(row), f"{row['duration_s']:.0f}", row["at"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def not_passed(rows: list[dict[str, Any]]) -> list[str]:
    """Cases whose latest row failed its checks or predates them."""
    return [row["case"] for row in rows if row.get("passed") is not True]


def main(argv: list[str]) -> int:
    """Write the table for the scale named in ``argv`` (default ``full``) to stdout.

    Returns:
        0, or 1 when a case's latest row did not pass its checks (named on stderr): its
        counts are in the table, marked, but are not a result.
    """
    scale = argv[0] if argv else "full"
    path = Path(os.environ.get("FLEETSTREAM_FAULTS_ROWS", _DEFAULT))
    rows = latest_rows(path, scale)
    sys.stdout.write(table(rows))
    failed = not_passed(rows)
    if failed:
        sys.stderr.write(f"cases that did not pass their checks: {', '.join(failed)}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
