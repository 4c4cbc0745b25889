"""What `fleetstream demo` gives the services it starts (no broker needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetstream import demo, infra
from ingest import IngestSettings

pytestmark = pytest.mark.unit


class _StartedError(Exception):
    """Stops the demo at its first service."""


def test_the_demo_ingest_session_expires_soon_after_a_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With ingest's 7-day default, a stopped demo's session kept collecting every later
    # fleet/+/telemetry message, and the next demo wrote that backlog into Kafka again.
    seen: dict[str, Any] = {}

    def first_service(name: str, _argv: list[str], _logs: Path, env: dict[str, str]) -> Any:
        seen.update(name=name, env=env)
        raise _StartedError

    monkeypatch.setenv("FLEETSTREAM_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(infra, "up", lambda _settings: infra.StartReport(0.0, 0.0))
    monkeypatch.setattr(demo, "service", first_service)
    with pytest.raises(_StartedError):
        demo._run_demo(1, 1.0, 0.0, 0)
    assert seen["name"] == "ingest"
    monkeypatch.setattr("os.environ", {**seen["env"]})
    settings = IngestSettings()
    assert settings.mqtt_session_expiry_s == demo.DEMO_SESSION_EXPIRY_S <= 3600
    assert settings.mqtt_client_id == "fleetstream-demo-ingest"
