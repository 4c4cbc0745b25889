"""`fleetstream demo` runs the stack end to end on the real brokers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness import free_port
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
        # A log over 10 MiB was moved to .1 when the demo started it: this run's is new.
        f.seek(start if log.stat().st_size >= start else 0)
        processing_log = f.read().decode(errors="replace")
    assert "current model vdemo-test active" in processing_log, processing_log[-3000:]


def test_sigterm_stops_the_demo_and_every_service_it_started(
    brokers: infra.InfraSettings,
) -> None:
    demo, lines = _publishing_demo()
    pids = [int(m.group(1)) for m in re.finditer(r"started \(pid (\d+)", "".join(lines))]
    assert len(pids) == 3, "".join(lines)  # ingest, processing, dashboard
    demo.send_signal(signal.SIGTERM)
    try:
        _, rest = demo.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        # Killed, so that its services (ended by their parent-death signal) do not hold
        # the ports of the tests after this one; the failure keeps its own reason.
        demo.kill()
        _, rest = demo.communicate(timeout=30)
        pytest.fail("the demo did not stop within 120 s of SIGTERM:\n" + "".join(lines) + rest)
    assert demo.returncode == 0, "".join(lines) + rest
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == [], "".join(lines) + rest
    # Each stopped on its SIGTERM. Processing may still be importing (then the signal's
    # default action ends it: -15); it must not be killed 30 s later with code 70, as it
    # was when the signal came before Quix's run loop had started.
    for name in ("ingest", "dashboard"):
        assert f"{name} stopped (exit 0)" in rest, "".join(lines) + rest
    assert re.search(r"processing stopped \(exit (0|-15)\)", rest), "".join(lines) + rest


def test_a_service_that_dies_stops_the_demo_with_an_error(brokers: infra.InfraSettings) -> None:
    # A demo whose processing had died went on reporting "vehicle-stats +0" every 10 s.
    demo, lines = _publishing_demo()
    found = re.search(r"processing started \(pid (\d+)", "".join(lines))
    assert found is not None, "".join(lines)
    os.kill(int(found.group(1)), signal.SIGKILL)
    _, rest = demo.communicate(timeout=120)
    assert demo.returncode == 1, "".join(lines) + rest
    assert "error: processing exited with -9; see " in rest, "".join(lines) + rest
    for name in ("ingest", "dashboard"):
        assert f"{name} stopped (exit 0)" in rest, "".join(lines) + rest


def test_services_end_with_a_demo_killed_without_warning(brokers: infra.InfraSettings) -> None:
    # Orphaned by a kill -9 (or the OOM killer), they kept their ports and MQTT session,
    # and the next demo's health checks were answered by them.
    demo, lines = _publishing_demo()
    pids = [int(m.group(1)) for m in re.finditer(r"started \(pid (\d+)", "".join(lines))]
    assert len(pids) == 3, "".join(lines)
    demo.kill()
    demo.wait(30)
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [pid for pid in pids if _alive(pid)] == [], "".join(lines)


def _publishing_demo() -> tuple[subprocess.Popen[str], list[str]]:
    """A 2-car demo started and publishing, with the log lines it wrote until then."""
    # Also on a metrics port of its own: the demo waited for ingest's /healthz on 9464.
    env = {**os.environ, "FLEETSTREAM_INGEST_METRICS_PORT": str(free_port())}
    demo = subprocess.Popen(
        [sys.executable, "-m", "fleetstream", "demo", "--vehicles", "2"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert demo.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while not any("publishing 2 simulated cars" in line for line in lines):
        assert time.monotonic() < deadline and demo.poll() is None, "".join(lines)
        lines.append(demo.stderr.readline())
    return demo, lines


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited: it only waits for its parent (gone) to be reaped by init.
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
