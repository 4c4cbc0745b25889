"""Fixtures of the fault suite; the broker fixtures come from tests/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.harness import write_rules
from tests.faults._scale import Scale, current

_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def scale() -> Scale:
    """The sizes of this run (``FLEETSTREAM_FAULTS_SCALE=full|ci``)."""
    return current()


@pytest.fixture(scope="session")
def rows_file() -> Path:
    """JSON-lines file every case appends its row to (``FLEETSTREAM_FAULTS_ROWS`` overrides)."""
    default = _ROOT / "test-output" / "faults" / "rows.jsonl"
    return Path(os.environ.get("FLEETSTREAM_FAULTS_ROWS", default))


@pytest.fixture
def prefix(unique_name: str) -> str:
    """MQTT topic root and Kafka topic prefix private to one test."""
    return f"fa{unique_name[-8:]}"


@pytest.fixture
def rules(tmp_path: Path, prefix: str) -> Path:
    """An ingest rules file bridging only this test's topics."""
    return write_rules(tmp_path / "rules.toml", prefix)
