"""`fleetstream simulate`: credentials and option checks before the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from fleetstream.cli import app
from simulator import FleetConfig, MqttTarget, SimulatorError, _run

pytestmark = pytest.mark.unit

SECRET = "s3cr#t/pw"  # noqa: S105 - a test value


def _simulate(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(app, ["simulate", *args], env=env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def targets(monkeypatch: pytest.MonkeyPatch) -> list[MqttTarget]:
    """The targets `simulate --mqtt` would publish to (no run happens)."""
    seen: list[MqttTarget] = []

    def fake_run(_config: FleetConfig, *, target: MqttTarget, **_kwargs: Any) -> _run.RunReport:
        seen.append(target)
        return _run.RunReport(0, 1.0, 1.0, 0)

    monkeypatch.setattr("simulator.run_to_mqtt", fake_run)
    for name in ("FLEETSTREAM_MQTT_USERNAME", "FLEETSTREAM_MQTT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return seen


def test_credentials_come_from_the_environment_when_the_url_has_none(
    targets: list[MqttTarget],
) -> None:
    env = {"FLEETSTREAM_MQTT_USERNAME": "fleet", "FLEETSTREAM_MQTT_PASSWORD": SECRET}
    result = _simulate("--mqtt", "mqtt://broker:1884", env=env)
    assert result.exit_code == 0, result.output
    assert targets == [MqttTarget("broker", 1884, "fleet", SECRET)]
    assert SECRET not in repr(targets[0])


def test_url_credentials_are_percent_decoded_and_win(targets: list[MqttTarget]) -> None:
    env = {"FLEETSTREAM_MQTT_USERNAME": "other", "FLEETSTREAM_MQTT_PASSWORD": "other-pw"}
    result = _simulate("--mqtt", "mqtt://op%40s:s3cr%23t%2Fpw@broker", env=env)
    assert result.exit_code == 0, result.output
    assert targets == [MqttTarget("broker", 1883, "op@s", SECRET)]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mqtts://fleet:s3cret@broker:1883", "mqtts://fleet:***@broker:1883"),
        ("fleet:s3cret@broker", "fleet:***@broker"),
        (f"mqtt://fleet:{SECRET}@broker:1883", "mqtt://fleet:***@broker:1883"),
        ("mqtt://fleet:12#s3cret@broker:1883", "mqtt://fleet:***@broker:1883"),
        ("mqtt://broker:99999", "mqtt://broker:99999"),
    ],
)
def test_bad_urls_are_usage_errors_with_the_password_hidden(
    url: str, shown: str, targets: list[MqttTarget]
) -> None:
    result = _simulate("--mqtt", url)
    assert result.exit_code == 2
    assert shown in result.output
    assert "s3cr" not in result.output
    assert targets == []


def test_unparsable_start_time_is_a_usage_error(tmp_path: Path) -> None:
    result = _simulate("--output", str(tmp_path / "out.jsonl"), "--start-time", "yesterday")
    assert result.exit_code == 2
    assert "--start-time" in result.output
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("topic", ["x/{car}", "x/{vehicle_id", "x/{}", "x/{battery_level_pct}"])
def test_topic_template_is_checked_before_connecting(topic: str, targets: list[MqttTarget]) -> None:
    result = _simulate("--mqtt", "mqtt://broker", "--topic", topic)
    assert result.exit_code == 2
    assert "--topic" in result.output
    assert targets == []


def test_fields_of_one_powertrain_are_allowed_for_a_fleet_of_that_powertrain() -> None:
    _run.check_topic("ev/{battery_level_pct:.0f}", FleetConfig(vehicles=1, ev_share=1.0))
    with pytest.raises(SimulatorError, match="battery_level_pct"):
        _run.check_topic("ev/{battery_level_pct}", FleetConfig(vehicles=1, ev_share=0.5))


@pytest.mark.parametrize("option", ["--output", "--labels"])
def test_files_in_missing_folders_are_refused_before_the_run(
    option: str, tmp_path: Path, targets: list[MqttTarget]
) -> None:
    args = ["--mqtt", "mqtt://broker"] if option == "--labels" else []
    result = _simulate(*args, option, str(tmp_path / "missing" / "file.jsonl"))
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert "does not exist" in result.output
    assert targets == []
