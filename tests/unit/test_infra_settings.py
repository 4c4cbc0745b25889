"""Pure checks of the infra settings and templates."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import psutil
import pytest

from fleetstream.infra import (
    KAFKA_VERSION,
    InfraError,
    InfraSettings,
    ServiceStatus,
    StartReport,
    _kafka,
    _mosquitto,
    _stack,
)
from fleetstream.infra._process import ManagedProcess, rotate_log, wait_until

pytestmark = pytest.mark.unit


def test_env_prefix_overrides_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_KAFKA_PORT", "19092")
    monkeypatch.setenv("FLEETSTREAM_MQTT_PASSWORD", "s3cret")
    settings = InfraSettings()
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.mqtt_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_invalid_port_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_MQTT_PORT", "70000")
    with pytest.raises(ValueError, match="mqtt_port"):
        InfraSettings()


@pytest.mark.parametrize("name", ["server.properties", "mosquitto.conf"])
def test_templates_only_use_known_placeholders(name: str) -> None:
    text = (resources.files("fleetstream.infra") / "files" / name).read_text("utf-8")
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    known = {
        "host",
        "kafka_port",
        "controller_port",
        "data_dir",
        "default_partitions",
        "mqtt_port",
        "mqtt_auth_port",
        "password_file",
        "log_file",
        "user",
    }
    assert placeholders <= known
    assert placeholders


def test_broker_throttles_are_raised() -> None:
    text = (resources.files("fleetstream.infra") / "files" / "mosquitto.conf").read_text("utf-8")
    inflight = int(re.search(r"^max_inflight_messages (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    queued = int(re.search(r"^max_queued_messages (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    assert inflight > 20
    assert queued > 1000


@pytest.mark.parametrize(
    ("pid", "healthy", "state"),
    [
        (1, True, "healthy"),
        (None, True, "external"),
        (1, False, "unhealthy"),
        (None, False, "stopped"),
    ],
)
def test_service_state(pid: int | None, healthy: bool, state: str) -> None:
    assert ServiceStatus("kafka", "9092", pid, None, healthy).state == state


def test_checkout_keeps_run_and_cache_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETSTREAM_RUN_DIR", raising=False)
    monkeypatch.delenv("FLEETSTREAM_CACHE_DIR", raising=False)
    settings = InfraSettings()
    root = Path(__file__).resolve().parents[2]
    assert settings.run_dir == root / ".run"
    assert settings.cache_dir == root / ".cache"


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])  # noqa: S104 - refused, not bound
def test_a_non_routable_host_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    # Kafka refused to start: it advertises the same address to its clients.
    monkeypatch.setenv("FLEETSTREAM_HOST", host)
    with pytest.raises(ValueError, match="clients can reach"):
        InfraSettings()


def test_up_and_down_take_turns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Two `infra up` at once both started a broker and lost track of one of them.
    inside: list[int] = []
    overlaps: list[int] = []

    def start(_settings: InfraSettings) -> float:
        inside.append(1)
        if len(inside) > 1:
            overlaps.append(len(inside))
        time.sleep(0.2)
        inside.pop()
        return 0.0

    monkeypatch.setattr(_mosquitto, "start", start)
    monkeypatch.setattr(_kafka, "start", start)
    settings = InfraSettings(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    threads = [threading.Thread(target=_stack.up, args=(settings,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


def test_a_frozen_broker_is_resumed(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", tmp_path / "sleeper.pid", "sleep")
    pid = proc.start(["sleep", "30"], tmp_path / "sleeper.out")
    try:
        os.kill(pid, signal.SIGSTOP)
        assert wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 5)
        assert proc.resume_if_stopped()
        assert wait_until(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED, 5)
        assert not proc.resume_if_stopped()
    finally:
        proc.stop(timeout_s=5)


def test_a_broker_another_running_process_started_is_stopped_without_waiting_for_its_reaping(
    tmp_path: Path,
) -> None:
    # As when `make demo` started the brokers and `infra down` runs in another terminal:
    # the stopped broker stays a zombie of the demo, and waiting for it to vanish timed
    # out after 40 s with a traceback, leaving Mosquitto running.
    pid_file = tmp_path / "sleeper.pid"
    starter = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pathlib import Path; "
            "from fleetstream.infra._process import ManagedProcess; "
            f"ManagedProcess('sleeper', Path({str(pid_file)!r}), 'sleep').start("
            f"['sleep', '60'], Path({str(tmp_path / 'sleeper.out')!r})); "
            "print('started', flush=True); time.sleep(60)"
        )],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert starter.stdout is not None
        assert starter.stdout.readline().strip() == "started"
        proc = ManagedProcess("sleeper", pid_file, "sleep")
        pid = proc.pid()
        assert pid is not None
        began = time.monotonic()
        assert proc.stop(timeout_s=20)
        assert time.monotonic() - began < 5
        assert not pid_file.exists()
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # the starter's to reap
        assert proc.pid() is None
    finally:
        starter.kill()
        starter.wait()


def test_a_recycled_pid_of_another_mosquitto_program_is_not_our_broker(tmp_path: Path) -> None:
    settings = InfraSettings(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    ours = _mosquitto.process(settings)
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "mosquitto_sub", "-t", "#"]
    )
    try:
        ours.pid_file.parent.mkdir(parents=True, exist_ok=True)
        ours.pid_file.write_text(f"{other.pid}\n")
        assert ours.pid() is None
        assert _kafka.process(settings).marker.endswith("server.properties")
    finally:
        other.kill()
        other.wait()


def _fake_mvn(bin_dir: Path, script: str) -> None:
    """An ``mvn`` on PATH whose copy-dependencies runs ``script`` with $LIBS set."""
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in -Dlibs.dir=*) LIBS="${a#-Dlibs.dir=}";; esac; done\n'
        f"{script}\n"
    )
    mvn.chmod(0o755)


def test_jars_cut_short_never_count_as_present_and_a_later_fetch_completes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first jar of a copy cut short used to mark the cache complete for good.
    settings = InfraSettings(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    jar = f"kafka_2.13-{KAFKA_VERSION}.jar"
    _fake_mvn(tmp_path / "bin", f'touch "$LIBS/{jar}"; echo "JAVA_HOME is gone" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    with pytest.raises(InfraError, match="JAVA_HOME is gone"):
        _kafka.ensure_jars(settings)
    assert not _kafka.jars_present(settings)
    assert not (settings.kafka_libs_dir / jar).exists()

    (tmp_path / "bin" / "mvn").unlink()
    (tmp_path / "bin").rmdir()
    _fake_mvn(tmp_path / "bin", f'touch "$LIBS/{jar}" "$LIBS/kafka-clients.jar"')
    _kafka.ensure_jars(settings)
    assert _kafka.jars_present(settings)
    assert sorted(p.name for p in settings.kafka_libs_dir.iterdir()) == sorted(
        [".complete", jar, "kafka-clients.jar"]
    )
    assert not settings.kafka_libs_dir.with_name("libs.partial").exists()


def test_a_failed_start_shows_only_its_own_output(tmp_path: Path) -> None:
    log = tmp_path / "kafka.out"
    log.write_text("ERROR from a start last week\n")
    since = log.stat().st_size
    assert _kafka._tail(log, since) == "(no output)"
    with log.open("a") as f:
        f.write("ERROR this start\n")
    assert _kafka._tail(log, since) == "ERROR this start"


def test_down_stops_the_other_broker_when_one_cannot_be_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Kafka run by another user raised out of `down`, and Mosquitto was never stopped.
    settings = InfraSettings(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    stopped: list[str] = []

    class Broker:
        def __init__(self, name: str, refuse: bool) -> None:
            self.name, self.refuse = name, refuse

        def stop(self) -> bool:
            if self.refuse:
                msg = f"not permitted to stop {self.name} (pid 1): it runs as another user"
                raise InfraError(msg)
            stopped.append(self.name)
            return True

    monkeypatch.setattr(_kafka, "process", lambda _s: Broker("kafka", refuse=True))
    monkeypatch.setattr(_mosquitto, "process", lambda _s: Broker("mosquitto", refuse=False))
    with pytest.raises(InfraError, match=r"not permitted to stop kafka.*\(stopped: mosquitto\)"):
        _stack.down(settings)
    assert stopped == ["mosquitto"]


@pytest.mark.parametrize("recovering", [True, False])
def test_a_broker_recovering_its_logs_is_waited_for_past_the_start_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recovering: bool
) -> None:
    # After a crash a broker with much data recovers its logs for longer than the
    # timeout: it was killed mid-recovery, and the next start began the recovery again.
    settings = InfraSettings(
        run_dir=tmp_path / "run", cache_dir=tmp_path / "cache", kafka_start_timeout_s=1.0
    )
    # Recovery is logged at INFO: server.log (kafka.out only gets WARN and up), which
    # rolls over at 20 MiB.
    log = _kafka.kafka_dir(settings) / "logs" / "server.log"
    log.parent.mkdir(parents=True)
    log.write_text("x" * 10_000 + "\n")  # the start reads on from here; a roll restarts it
    ready_at: list[float] = []

    class Broker:
        pid_value: int | None = None

        def pid(self) -> int | None:
            return self.pid_value

        def start(self, _argv: list[str], _log: Path) -> None:
            self.pid_value = 1
            ready_at.append(time.monotonic() + 3.0)

            def write() -> None:
                line = "[LogLoader partition=t-0] Recovering unflushed segment 0\n"
                log.write_text("")  # rolled over
                while time.monotonic() < ready_at[0]:
                    with log.open("a") as f:
                        f.write(line if recovering else "INFO still starting\n")
                    time.sleep(0.1)

            threading.Thread(target=write, daemon=True).start()

        def stop(self, timeout_s: float = 0.0) -> bool:
            self.pid_value = None
            return True

    monkeypatch.setattr(_kafka, "process", lambda _s: Broker())
    monkeypatch.setattr(_kafka, "ensure_jars", lambda _s: None)
    monkeypatch.setattr(_kafka, "_render", lambda _s: tmp_path / "server.properties")
    monkeypatch.setattr(_kafka, "_format_storage", lambda _s, _c: None)
    monkeypatch.setattr(_kafka, "_java", lambda: "java")
    monkeypatch.setattr(
        _kafka,
        "healthy",
        lambda _s, timeout_s=0.0: bool(ready_at) and time.monotonic() > ready_at[0],
    )
    if recovering:
        assert _kafka.start(settings) > 2.5
    else:
        with pytest.raises(InfraError, match=r"did not become ready on \S+ within \d+ s"):
            _kafka.start(settings)


def test_a_log_over_its_limit_is_moved_aside_at_a_start(tmp_path: Path) -> None:
    log = tmp_path / "mosquitto.log"
    rotate_log(log, max_bytes=10)  # none yet: nothing to do
    log.write_bytes(b"x" * 10)
    rotate_log(log, max_bytes=10)
    assert log.read_bytes() == b"x" * 10  # at the limit: kept
    (tmp_path / "mosquitto.log.1").write_bytes(b"older")
    log.write_bytes(b"y" * 11)
    rotate_log(log, max_bytes=10)
    assert not log.exists()
    assert (tmp_path / "mosquitto.log.1").read_bytes() == b"y" * 11  # one generation kept


def test_a_broker_whose_pid_file_was_never_written_is_found_and_stopped(tmp_path: Path) -> None:
    # A Ctrl-C between the broker's start and its pid file's write left a broker that
    # `down` could not see and `up` took for a foreign one.
    marker = str(tmp_path / "server.properties")
    program = Path(sys.executable).name
    proc = ManagedProcess("sleeper", tmp_path / "sleeper.pid", marker, program)
    pid = proc.start([sys.executable, "-c", "import time; time.sleep(30)", marker],
                     tmp_path / "sleeper.out")  # fmt: skip
    try:
        proc.pid_file.unlink()
        assert ManagedProcess("sleeper", proc.pid_file, marker).pid() is None  # not searched
        assert proc.pid() == pid
        assert proc.pid_file.read_text().strip() == str(pid)
        assert proc.stop(timeout_s=5)
        assert proc.pid() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_only_the_broker_itself_is_found_not_a_tool_given_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kafka's storage formatter runs `java ... --config=<the broker's config>`: found by
    # a substring, an `infra down` during a first start killed it mid-format.
    marker = str(tmp_path / "server.properties")
    program = Path(sys.executable).name
    tool = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", f"--config={marker}"]
    )
    try:
        assert ManagedProcess("kafka", tmp_path / "kafka.pid", marker, program).pid() is None
    finally:
        tool.kill()
        tool.wait()
    # Relative folders are made absolute: the marker of another checkout's broker.
    monkeypatch.chdir(tmp_path)
    settings = InfraSettings(run_dir=Path("run"), cache_dir=Path("cache"))
    assert settings.run_dir == tmp_path / "run"
    assert Path(_kafka.process(settings).marker).is_absolute()


class _LiveBroker:
    """A tracked broker that is alive (a fake: no process is started)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopped = False

    def pid(self) -> int:
        return 4242

    def resume_if_stopped(self) -> bool:
        return False

    def stop(self, timeout_s: float = 30.0) -> bool:
        self.stopped = True
        return True


def _rendered(settings: InfraSettings, monkeypatch: pytest.MonkeyPatch) -> dict[Path, str]:
    """Render both brokers' configs for ``settings`` as ``up`` does; path -> text."""
    monkeypatch.setattr("fleetstream.infra._mosquitto.shutil.which", lambda *_a, **_k: "passwd")
    monkeypatch.setattr(
        "fleetstream.infra._mosquitto.subprocess.run",
        lambda argv, **_k: subprocess.CompletedProcess(argv, 0, "", ""),
    )
    configs = [_mosquitto._render(settings), _kafka._render(settings)]
    return {path: path.read_text() for path in configs}


def test_up_leaves_a_broker_of_its_run_folder_on_other_ports_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/faults.md's "own ports" kept the default run folder: `up` took the other
    # stack's brokers for its own, rewrote their configs with the new ports, waited for
    # them in vain and then stopped them.
    running = InfraSettings(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    configs = _rendered(running, monkeypatch)
    brokers = {"mosquitto": _LiveBroker("mosquitto"), "kafka": _LiveBroker("kafka")}
    monkeypatch.setattr(_mosquitto, "process", lambda _s: brokers["mosquitto"])
    monkeypatch.setattr(_kafka, "process", lambda _s: brokers["kafka"])
    started: list[str] = []

    def starter(name: str) -> Callable[[InfraSettings], float]:
        def start(_settings: InfraSettings) -> float:
            started.append(name)
            return 1.0

        return start

    monkeypatch.setattr(_mosquitto, "start", starter("mosquitto"))
    monkeypatch.setattr(_kafka, "start", starter("kafka"))

    other = running.model_copy(update={"mqtt_port": 11883, "mqtt_auth_port": 11884})
    with pytest.raises(InfraError) as caught:
        _stack.up(other)
    message = str(caught.value)
    assert "mosquitto (pid 4242)" in message
    assert "runs on 127.0.0.1:1883, 127.0.0.1:1884" in message
    assert "ask for 127.0.0.1:11883, 127.0.0.1:11884" in message
    assert "fleetstream infra down" in message
    assert "FLEETSTREAM_RUN_DIR" in message
    other = running.model_copy(update={"kafka_port": 19092})
    with pytest.raises(InfraError, match=r"kafka \(pid 4242\).* ask for 127\.0\.0\.1:19092,"):
        _stack.up(other)
    other = running.model_copy(update={"host": "127.0.0.2"})
    with pytest.raises(InfraError, match=r"mosquitto .* ask for 127\.0\.0\.2:1883,"):
        _stack.up(other)
    assert started == []
    assert not any(b.stopped for b in brokers.values())
    assert {path: path.read_text() for path in configs} == configs

    # The same listeners: the broker is this stack's, and `up` goes on as before.
    assert _stack.up(running) == StartReport(kafka_s=1.0, mosquitto_s=1.0)
    assert started == ["mosquitto", "kafka"]


@pytest.mark.parametrize(
    ("running", "wanted", "refused"),
    [
        (["127.0.0.1:1883", "127.0.0.1:1884"], ["127.0.0.1:1883", "127.0.0.1:1884"], False),
        (["127.0.0.1:1884", "127.0.0.1:1883"], ["127.0.0.1:1883", "127.0.0.1:1884"], False),
        (None, ["127.0.0.1:1883", "127.0.0.1:1884"], False),  # no config: nothing to compare
        (["127.0.0.1:1883", "127.0.0.1:1884"], ["127.0.0.1:1883", "127.0.0.1:2884"], True),
        (["127.0.0.1:1883", "127.0.0.1:1884"], ["10.0.0.5:1883", "10.0.0.5:1884"], True),
        ([], ["127.0.0.1:9092", "127.0.0.1:9093"], True),  # a config without listeners
    ],
)
def test_listener_conflict(
    tmp_path: Path, running: list[str] | None, wanted: list[str], refused: bool
) -> None:
    problem = _stack.listener_conflict("mosquitto", 7, running, wanted, tmp_path)
    assert (problem is not None) == refused
