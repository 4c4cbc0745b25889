"""`fleetstream simulate`: credentials, option checks before the run, labels of cut-short runs."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner, Result

from fleetstream import cli
from fleetstream.cli import app
from simulator import Fleet, FleetConfig, Format, MqttTarget, SimulatorError, _run

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


def test_mqtt_tls_set_for_the_services_is_refused_not_ignored(targets: list[MqttTarget]) -> None:
    # The simulator speaks plain TCP only: ignoring the setting sent the password in clear.
    env = {"FLEETSTREAM_MQTT_TLS": "true", "FLEETSTREAM_MQTT_PASSWORD": SECRET}
    result = _simulate("--mqtt", "mqtt://fleet@broker:8883", env=env)
    assert result.exit_code == 2
    assert "FLEETSTREAM_MQTT_TLS is set, but simulate publishes over plain TCP only" in (
        result.output
    )
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


class _StubPublisher:
    """Takes ``fail_after`` batches, then raises ``error`` (Ctrl-C, lost broker)."""

    published: list[bytes]
    fail_after = 0
    error: BaseException = KeyboardInterrupt()

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        self.acked = 0
        self.not_success: dict[int, int] = {}
        _StubPublisher.published = []

    def publish(self, batch: list[tuple[str, bytes]]) -> None:
        if len(self.published) >= self.fail_after:
            raise self.error
        self.published.extend(payload for _, payload in batch)

    def wait_acked(self, count: int, timeout_s: float) -> None:
        self.acked = count

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt(), SimulatorError("the MQTT broker closed the connection")]
)
def test_interrupted_run_still_writes_the_labels_of_what_was_published(
    error: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleets: list[Fleet] = []

    class RecordedFleet(Fleet):
        def __init__(self, config: FleetConfig) -> None:
            super().__init__(config)
            fleets.append(self)

    monkeypatch.setattr(_run, "LeanPublisher", _StubPublisher)
    monkeypatch.setattr(_run, "Fleet", RecordedFleet)
    monkeypatch.setattr("simulator._run.time.sleep", lambda _s: None)  # as fast as possible
    _StubPublisher.fail_after = 5 * 3600  # one simulated hour of 5 cars at 1 Hz
    _StubPublisher.error = error
    labels = tmp_path / "labels.jsonl"
    config = FleetConfig(vehicles=5, duration_s=4 * 3600, anomaly_rate=100.0, seed=7)
    with pytest.raises(type(error)):
        _run.run_to_mqtt(
            config,
            target=MqttTarget("broker", 1883, None, None),
            fmt=Format.V1,
            topic="fleet/{vehicle_id}/telemetry",
            qos=1,
            labels=labels,
        )
    last_ts = max(orjson.loads(p)["ts"] for p in _StubPublisher.published)
    every = fleets[0].labels()
    written = [orjson.loads(line) for line in labels.read_bytes().splitlines()]
    assert written == [lab for lab in every if lab["start_ts"] <= last_ts]
    assert written, "no label in the published hour: pick another seed"
    assert len(written) < len(every), "no label after the published hour: pick another seed"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_run_sets_the_stop_event_and_raises_nothing(signum: int) -> None:
    # Raised from the handler, the interruption could land inside the publisher's lock
    # handling and leave a lock held: `fleetstream demo` once hung in close() for good.
    before = signal.getsignal(signum)
    with cli._stop_on_signals() as stop:
        os.kill(os.getpid(), signum)
        signal.sigtimedwait([], 1.0)  # the handler runs before this returns
        assert stop.is_set()
    assert signal.getsignal(signum) is before


def test_a_set_stop_event_ends_the_run_early_with_its_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()

    class StoppingPublisher(_StubPublisher):
        """Sets the stop event once 20 messages went out (a signal in mid-run)."""

        def publish(self, batch: list[tuple[str, bytes]]) -> None:
            super().publish(batch)
            if len(self.published) >= 20:
                stop.set()

    monkeypatch.setattr(_run, "LeanPublisher", StoppingPublisher)
    monkeypatch.setattr(_StubPublisher, "fail_after", 10**9)
    config = FleetConfig(vehicles=5, duration_s=3600, rate_hz=50.0, seed=7)
    began = time.monotonic()
    report = _run.run_to_mqtt(
        config,
        target=MqttTarget("broker", 1883, None, None),
        fmt=Format.V1,
        topic="fleet/{vehicle_id}/telemetry",
        qos=1,
        labels=tmp_path / "labels.jsonl",
        stop=stop,
    )
    assert time.monotonic() - began < 5  # not the hour
    assert 20 <= report.messages < 40
    assert (tmp_path / "labels.jsonl").exists()


def test_a_rate_above_one_message_per_millisecond_is_a_usage_error(tmp_path: Path) -> None:
    # ts counts milliseconds: at 2000 Hz consecutive messages of a car shared their ts.
    result = _simulate("-n", "1", "--rate", "2000", "--output", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 2
    assert "--rate" in result.output
    ok = _simulate(
        "-n", "1", "--rate", "1000", "--duration", "0.01", "--output", str(tmp_path / "ok.jsonl")
    )
    assert ok.exit_code == 0, ok.output
