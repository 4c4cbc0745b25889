"""`fleetstream demo` runs the stack end to end on the real brokers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fleetstream import infra

pytestmark = pytest.mark.integration


def test_demo_publishes_through_ingest_into_kafka(brokers: infra.InfraSettings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleetstream", "demo", "--vehicles", "5", "--duration", "6"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"published (\d+) messages; vehicle-telemetry grew by (\d+) records", result.stderr
    )
    assert match, result.stderr
    assert int(match.group(1)) == 30
    assert int(match.group(2)) == 30
