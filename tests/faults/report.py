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


def latest_rows(path: Path, scale: str) -> list[dict[str, Any]]:
    """The last row of every case run at ``scale``, in the order the cases first ran."""
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            row = orjson.loads(line)
            if row.get("scale") == scale:
                rows.pop(row["case"], None)
                rows[row["case"]] = row
    return list(rows.values())


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
