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


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table: the issue's columns, then duration and run time."""
    head = [*FaultRow.COLUMNS, "duration_s", "at (UTC)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row[c]) for c in FaultRow.COLUMNS]
        cells += [f"{row['duration_s']:.0f}", row["at"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Write the table for the scale named in ``argv`` (default ``full``) to stdout."""
    scale = argv[0] if argv else "full"
    path = Path(os.environ.get("FLEETSTREAM_FAULTS_ROWS", _DEFAULT))
    sys.stdout.write(table(latest_rows(path, scale)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
