"""Bad settings and options end the CLI with a clear message, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from fleetstream.cli import app
from fleetstream.infra import StartReport
from simulator import SimulatorError

pytestmark = pytest.mark.unit


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_unknown_log_level_is_a_usage_error(tmp_path: Path) -> None:
    result = _run(
        "models", "list", "--registry", str(tmp_path), env={"FLEETSTREAM_LOG_LEVEL": "verbose"}
    )
    assert result.exit_code == 2
    assert "FLEETSTREAM_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in (
        result.output
    )


def test_log_level_reaches_the_demo_s_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README: FLEETSTREAM_LOG_LEVEL is the level of every command; `--log-level DEBUG
    # demo` only configured the demo itself.
    seen: list[str | None] = []

    def first_service(*_args: object) -> None:
        seen.append(os.environ.get("FLEETSTREAM_LOG_LEVEL"))  # what Popen passes on
        msg = "stop at the first service"
        raise RuntimeError(msg)

    monkeypatch.delenv("FLEETSTREAM_LOG_LEVEL", raising=False)
    monkeypatch.setenv("FLEETSTREAM_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr("fleetstream.infra.up", lambda _s: StartReport(0.0, 0.0))
    monkeypatch.setattr("fleetstream.demo._check_ports_free", lambda _ports: None)
    monkeypatch.setattr("fleetstream.demo.service", first_service)
    result = _run("--log-level", "debug", "demo", "--duration", "1")
    assert result.exit_code == 1, result.output
    assert seen == ["DEBUG"]


def test_log_level_reaches_the_exec_d_streamlit(monkeypatch: pytest.MonkeyPatch) -> None:
    execs: list[dict[str, str]] = []
    monkeypatch.delenv("FLEETSTREAM_LOG_LEVEL", raising=False)
    monkeypatch.setattr("dashboard.server.os.execve", lambda _p, _a, env: execs.append(env))
    result = _run("--log-level", "WARNING", "dashboard", "--port", "8599")
    assert result.exit_code == 0, result.output
    assert [env.get("FLEETSTREAM_LOG_LEVEL") for env in execs] == ["WARNING"]


@pytest.mark.parametrize(
    "command", [["infra", "up"], ["infra", "down"], ["infra", "status"], ["infra", "jars"]]
)
def test_invalid_infra_settings_name_the_setting_not_its_value(command: list[str]) -> None:
    result = _run(*command, env={"FLEETSTREAM_KAFKA_PORT": "abc", "FLEETSTREAM_MQTT_PORT": "0"})
    assert result.exit_code == 2
    assert "FLEETSTREAM_KAFKA_PORT: Input should be a valid integer" in result.output
    assert "FLEETSTREAM_MQTT_PORT: Input should be greater than or equal to 1" in result.output
    assert "abc" not in result.output
    assert "input_value" not in result.output


@pytest.mark.parametrize("command", [["infra", "up"], ["infra", "status"], ["demo"]])
def test_a_user_name_mosquitto_cannot_store_is_an_invalid_setting(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `infra up` refused it with exit 1, after taking the lock, when it wrote the
    # password file: README promises exit 2 and a line per invalid setting.
    called: list[str] = []
    monkeypatch.setattr("fleetstream.infra.up", lambda *_a: called.append("up"))

    def status(*_a: object) -> list[object]:
        called.append("status")
        return []

    def service(*_a: object) -> None:
        called.append("service")
        msg = "a service would start"
        raise RuntimeError(msg)

    monkeypatch.setattr("fleetstream.infra.status", status)
    monkeypatch.setattr("fleetstream.demo.service", service)
    monkeypatch.setattr("fleetstream.demo._check_ports_free", lambda _ports: None)
    result = _run(
        *command,
        env={"FLEETSTREAM_MQTT_USERNAME": "ops:team", "FLEETSTREAM_MQTT_PASSWORD": "hunter2"},
    )
    assert result.exit_code == 2, result.output
    assert "error: invalid settings:\n  FLEETSTREAM_MQTT_USERNAME: " in result.output
    assert "no ':'" in result.output
    assert "hunter2" not in result.output
    assert called == []


@pytest.mark.parametrize("kind", ["ingest", "pipeline", "e2e"])
@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"FLEETSTREAM_KAFKA_PORT": "abc"}, "FLEETSTREAM_KAFKA_PORT: Input should be a valid"),
        # Read by the services the benchmark starts: refused before anything starts.
        ({"FLEETSTREAM_KAFKA_CONFIG": '{"sasl.password": "hunter2", "x": [1]}'}, "'x'"),
        ({"FLEETSTREAM_PROCESSING_WINDOW_S": "0"}, "FLEETSTREAM_PROCESSING_WINDOW_S"),
        ({"FLEETSTREAM_INGEST_STALL_S": "0"}, "FLEETSTREAM_INGEST_STALL_S"),
    ],
)
def test_bench_refuses_invalid_settings_before_it_starts_anything(
    kind: str, env: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    monkeypatch.setattr(f"bench.run_{kind}", lambda **_kw: started.append(kind))
    result = _run("bench", kind, env=env)
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "hunter2" not in result.output
    assert "input_value" not in result.output
    assert started == []


def test_demo_with_invalid_infra_settings_is_a_usage_error() -> None:
    result = _run("demo", "--duration", "5", env={"FLEETSTREAM_KAFKA_PORT": "abc"})
    assert result.exit_code == 2
    assert "FLEETSTREAM_KAFKA_PORT: Input should be a valid integer" in result.output


def test_demo_reports_any_fleetstream_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def lost_broker(*_args: object) -> None:
        msg = "the MQTT broker closed the connection"
        raise SimulatorError(msg)

    monkeypatch.setattr("fleetstream.demo.run_demo", lost_broker)
    result = _run("demo", "--duration", "5")
    assert result.exit_code == 1
    assert "error: the MQTT broker closed the connection" in result.output


@pytest.mark.parametrize("duration", ["0", "-3"])
def test_demo_duration_must_be_positive(duration: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[object] = []
    monkeypatch.setattr("fleetstream.demo.run_demo", lambda *args: ran.append(args))
    result = _run("demo", "--duration", duration)
    assert result.exit_code == 2
    assert "must be more than 0" in result.output
    assert ran == []


def test_demo_without_duration_runs_until_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[object, ...]] = []
    monkeypatch.setattr("fleetstream.demo.run_demo", lambda *args: ran.append(args))
    assert _run("demo").exit_code == 0
    assert ran[0][1] is None


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ('{bad "sasl.password": "hunter2"', "FLEETSTREAM_KAFKA_CONFIG: not valid JSON"),
        # Which setting is wrong, never its value.
        ('{"sasl.password": ["hunter2"]}', "'sasl.password'"),
    ],
)
def test_a_bad_kafka_config_is_a_usage_error_that_echoes_no_value(
    tmp_path: Path, config: str, says: str
) -> None:
    labels = tmp_path / "labels.jsonl"
    labels.write_text("")
    result = _run(
        "evaluate",
        "--labels",
        str(labels),
        "--alerts-topic",
        "vehicle-alerts",
        env={"FLEETSTREAM_KAFKA_CONFIG": config},
    )
    assert result.exit_code == 2
    assert says in result.output
    assert "hunter2" not in result.output
    assert "input_value" not in result.output
