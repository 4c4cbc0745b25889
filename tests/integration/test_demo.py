"""`fleetstream demo` runs the stack end to end on the real brokers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleetstream import infra
from models import DEFAULT_REGISTRY
from models.registry import promote, save
from tests.unit.models_builders import META, forest

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


def test_a_model_promoted_in_the_default_registry_reaches_the_demo(
    brokers: infra.InfraSettings, tmp_path: Path
) -> None:
    # `fleetstream models promote` writes to ./models/registry by default: the demo started
    # from the same folder must score with it (it ran on rules only before).
    registry = tmp_path / DEFAULT_REGISTRY
    save(forest(), META, registry, version="vdemo-test")
    promote(registry, "vdemo-test")
    log = brokers.run_dir / "demo" / "processing.log"
    start = log.stat().st_size if log.exists() else 0
    env = {k: v for k, v in os.environ.items() if k != "FLEETSTREAM_PROCESSING_MODEL_DIR"}
    result = subprocess.run(
        [sys.executable, "-m", "fleetstream", "demo", "--vehicles", "2", "--duration", "8"],
        capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"processing scores with the model promoted in {registry.resolve()}" in result.stderr
    with log.open("rb") as f:
        f.seek(start)
        processing_log = f.read().decode(errors="replace")
    assert "current model vdemo-test active" in processing_log, processing_log[-3000:]
