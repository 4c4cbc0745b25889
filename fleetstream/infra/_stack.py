"""Start, stop and report the whole local broker stack."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetstream.infra import _kafka, _mosquitto
from fleetstream.infra._settings import InfraSettings
from fleetstream.infra.errors import InfraError

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What ``fleetstream infra status`` reports for one broker.

    Attributes:
        name: ``kafka`` or ``mosquitto``.
        ports: Listening ports, as text.
        pid: Pid of the process fleetstream started, None if it started none.
        rss_mb: Resident memory of that process.
        healthy: Whether the broker answered a protocol-level probe.
    """

    name: str
    ports: str
    pid: int | None
    rss_mb: float | None
    healthy: bool

    @property
    def state(self) -> str:
        """One word: healthy, external (healthy but not ours), unhealthy or stopped."""
        if self.healthy:
            return "healthy" if self.pid is not None else "external"
        return "unhealthy" if self.pid is not None else "stopped"


@dataclass(frozen=True, slots=True)
class StartReport:
    """Seconds each broker took to become ready (0.0 = it was already running)."""

    kafka_s: float
    mosquitto_s: float


def up(settings: InfraSettings | None = None) -> StartReport:
    """Start Kafka and Mosquitto if they are not running; idempotent.

    Raises:
        InfraError: A broker could not be started, or one that this run folder tracks
            runs on other ports or another host than the settings ask for (it is left
            running, its config untouched).
    """
    settings = settings or InfraSettings()
    with _exclusive(settings):
        _refuse_other_listeners(settings)
        for proc in (_mosquitto.process(settings), _kafka.process(settings)):
            if proc.resume_if_stopped():
                _log.warning("%s was frozen (SIGSTOP); resumed it with SIGCONT", proc.name)
        mosquitto_s = _mosquitto.start(settings)
        kafka_s = _kafka.start(settings)
    return StartReport(kafka_s=kafka_s, mosquitto_s=mosquitto_s)


def _refuse_other_listeners(settings: InfraSettings) -> None:
    """Refuse to touch a broker of this run folder that runs on other ports or host.

    Such a broker belongs to a stack with other settings (the same checkout, another
    shell): starting over it rewrote its config, waited for the new ports in vain and
    then stopped it.

    Raises:
        InfraError: A broker tracked in the run folder runs with other listeners.
    """
    brokers = [
        (
            _mosquitto.process(settings),
            _mosquitto.configured_listeners(settings),
            _mosquitto.wanted_listeners(settings),
        ),
        (
            _kafka.process(settings),
            _kafka.configured_listeners(settings),
            _kafka.wanted_listeners(settings),
        ),
    ]
    for proc, running, asked in brokers:
        pid = proc.pid()
        if pid is None:
            continue
        problem = listener_conflict(proc.name, pid, running, asked, settings.run_dir)
        if problem is not None:
            raise InfraError(problem)


def listener_conflict(
    name: str, pid: int, running: list[str] | None, wanted: list[str], run_dir: Path
) -> str | None:
    """Why ``up`` must leave a live tracked broker alone, or None when it may go on.

    Args:
        name: ``kafka`` or ``mosquitto``.
        pid: The live broker's pid.
        running: The ``host:port`` listeners it was started with (None: unknown).
        wanted: The ``host:port`` listeners the settings ask for.
        run_dir: The run folder that tracks it.

    Returns:
        The error message, or None when the listeners match or are unknown.
    """
    if running is None or sorted(running) == sorted(wanted):
        return None
    return (
        f"{name} (pid {pid}) from run folder {run_dir} runs on {', '.join(running)}, "
        f"but the settings ask for {', '.join(wanted)}; it was left as it is. If nothing "
        "uses it, stop it with `fleetstream infra down` (run with the settings it was "
        "started with, FLEETSTREAM_RUN_DIR included) and run `infra up` again; to run "
        "beside it, give this stack a run folder of its own: "
        "FLEETSTREAM_RUN_DIR=<another folder>"
    )


@contextlib.contextmanager
def _exclusive(settings: InfraSettings) -> Iterator[None]:
    """Hold the run folder's lock: one ``up`` or ``down`` at a time per run folder.

    Two ``up`` at once both started a broker; the loser died on the busy port after
    overwriting the winner's pid file, and ``down`` then could not stop the winner.
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with (settings.run_dir / "infra.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def down(settings: InfraSettings | None = None) -> list[str]:
    """Stop the brokers fleetstream started; returns the names of those it stopped.

    Raises:
        InfraError: A broker could not be stopped (after trying every one).
    """
    settings = settings or InfraSettings()
    stopped = []
    errors = []
    with _exclusive(settings):
        for proc in (_kafka.process(settings), _mosquitto.process(settings)):
            try:
                if proc.stop():
                    stopped.append(proc.name)
            except InfraError as exc:
                errors.append(str(exc))  # the next broker is still stopped
    if errors:
        done = f" (stopped: {', '.join(stopped)})" if stopped else ""
        msg = "; ".join(errors) + done
        raise InfraError(msg)
    return stopped


def status(settings: InfraSettings | None = None) -> list[ServiceStatus]:
    """Probe both brokers."""
    settings = settings or InfraSettings()
    kafka = _kafka.process(settings)
    mosq = _mosquitto.process(settings)
    return [
        ServiceStatus(
            name="kafka",
            ports=f"{settings.kafka_port} (controller {settings.kafka_controller_port})",
            pid=kafka.pid(),
            rss_mb=kafka.rss_mb(),
            healthy=_kafka.healthy(settings),
        ),
        ServiceStatus(
            name="mosquitto",
            ports=f"{settings.mqtt_port} (anonymous), {settings.mqtt_auth_port} (password)",
            pid=mosq.pid(),
            rss_mb=mosq.rss_mb(),
            healthy=_mosquitto.healthy(settings),
        ),
    ]
