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
@pytest.mark.parametrize(
    ("env", "says"),
    [
        # pydantic's own message, logged before, repeated the input: here a password.
        (
            {"FLEETSTREAM_KAFKA_CONFIG": '{"sasl.password": ["hunter2"]}'},
            "FLEETSTREAM_KAFKA_CONFIG",
        ),
        ({"FLEETSTREAM_LOG_LEVEL": "verbose"}, "FLEETSTREAM_LOG_LEVEL must be one of"),
    ],
)
def test_a_bad_setting_is_one_clear_error_without_its_value(
    module: str, env: dict[str, str], says: str
) -> None:
    result = _run(module, **env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert says in output
    assert "hunter2" not in output
    assert "Traceback" not in output
