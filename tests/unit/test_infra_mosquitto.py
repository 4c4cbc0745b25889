"""The Mosquitto password file is made without the password on any command line."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fleetstream.infra import InfraError, InfraSettings, _mosquitto
from telemetry.settings import settings_problems

pytestmark = pytest.mark.unit

SECRET = "Hunter2-TopSecret"  # noqa: S105 - a test value


class _FakeRun:
    """Stands in for ``subprocess.run``; records argv and the file as the tool saw it."""

    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.returncode = returncode
        self.stderr = stderr
        self.calls: list[list[str]] = []
        self.stdin: list[object] = []
        self.modes: list[int] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append([str(a) for a in argv])
        self.stdin.append(kwargs.get("input"))
        for arg in argv[1:]:
            if Path(arg).is_file():
                self.modes.append(stat.S_IMODE(Path(arg).stat().st_mode))
        if kwargs.get("check") and self.returncode:
            raise subprocess.CalledProcessError(self.returncode, argv, "", self.stderr)
        return subprocess.CompletedProcess(argv, self.returncode, "", self.stderr)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InfraSettings:
    monkeypatch.setenv("FLEETSTREAM_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("FLEETSTREAM_MQTT_USERNAME", "fleet")
    monkeypatch.setenv("FLEETSTREAM_MQTT_PASSWORD", SECRET)
    monkeypatch.setattr(
        "fleetstream.infra._mosquitto.shutil.which", lambda *_a, **_k: "/usr/bin/mosquitto_passwd"
    )
    return InfraSettings()


def test_password_goes_to_mosquitto_passwd_on_stdin_not_in_argv(
    settings: InfraSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeRun()
    monkeypatch.setattr("fleetstream.infra._mosquitto.subprocess.run", fake)
    _mosquitto._render(settings)
    assert fake.calls, "mosquitto_passwd was not run"
    for argv in fake.calls:
        assert not any(SECRET in arg for arg in argv), argv
    assert fake.calls == [
        ["/usr/bin/mosquitto_passwd", str(settings.run_dir / "mosquitto" / "passwd"), "fleet"]
    ]
    # Typed at the prompt, twice; the file is readable by this user only.
    assert fake.stdin == [f"{SECRET}\n{SECRET}\n"]
    assert fake.modes == [0o600]


def test_failing_mosquitto_passwd_is_a_clear_error_without_the_password(
    settings: InfraSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeRun(returncode=1, stderr=f"Error: something about {SECRET}\n")
    monkeypatch.setattr("fleetstream.infra._mosquitto.subprocess.run", fake)
    with pytest.raises(InfraError, match="mosquitto_passwd could not store") as caught:
        _mosquitto._render(settings)
    assert SECRET not in str(caught.value)
    assert "something about ***" in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("FLEETSTREAM_MQTT_USERNAME", "ops:team", "no ':'"),
        ("FLEETSTREAM_MQTT_USERNAME", "", "non-empty"),
        ("FLEETSTREAM_MQTT_USERNAME", "ops\nteam", "line break"),
        ("FLEETSTREAM_MQTT_PASSWORD", f"{SECRET}\nrest", "line break"),
        ("FLEETSTREAM_MQTT_PASSWORD", "", "non-empty"),
    ],
)
def test_credentials_mosquitto_cannot_store_are_invalid_settings(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    # Refused by the settings, so every command that reads them exits 2 (it was an
    # InfraError, exit 1, from `infra up` only, and only when Mosquitto was started).
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        InfraSettings()
    assert [line.split(": ", 1)[0] for line in settings_problems(caught.value)] == [variable]
    assert says in settings_problems(caught.value)[0]
    assert SECRET not in "".join(settings_problems(caught.value))


def test_a_password_with_a_colon_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_MQTT_PASSWORD", "a:b")
    assert InfraSettings().mqtt_password.get_secret_value() == "a:b"


def test_mosquitto_keeps_the_user_this_process_runs_as_not_the_one_user_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As root after `su` without `-`, $USER still named the invoking user: Mosquitto
    # dropped to it and could not write its root-owned data folder.
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    assert _mosquitto._user_name() == pwd.getpwuid(os.geteuid()).pw_name
