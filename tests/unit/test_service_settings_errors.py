"""Each service started directly (`python -m …`, as in docker-compose) refuses bad settings
with one clear line per setting and exit code 2: no traceback, and never a value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

SERVICES = ["ingest", "processing", "dashboard"]


def _run(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("module", SERVICES)
def test_an_invalid_setting_is_named_without_its_value(module: str) -> None:
    # pydantic's own message, logged before, repeated the input: here a password.
    result = _run(module, FLEETSTREAM_KAFKA_CONFIG='{"sasl.password": ["hunter2"]}')
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "FLEETSTREAM_KAFKA_CONFIG" in output
    assert "hunter2" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("module", SERVICES)
def test_an_invalid_log_level_is_a_clear_error(module: str) -> None:
    result = _run(module, FLEETSTREAM_LOG_LEVEL="verbose")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "FLEETSTREAM_LOG_LEVEL must be one of" in output
    assert "Traceback" not in output
