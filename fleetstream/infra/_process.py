"""Start, find and stop detached broker processes by pid file."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from fleetstream.infra.errors import InfraError

_log = logging.getLogger(__name__)

# A log over this size is moved to ``<name>.1`` (replacing the one before) when its
# process starts: the files kept every start's output for good.
LOG_ROTATE_BYTES = 10 * 1024 * 1024


def rotate_log(path: Path, max_bytes: int = LOG_ROTATE_BYTES) -> None:
    """Move ``path`` aside to ``<path>.1`` if it is over ``max_bytes``; call before a start."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > max_bytes:
            path.replace(path.with_name(path.name + ".1"))


@dataclass(frozen=True, slots=True)
class ManagedProcess:
    """A broker process that ``fleetstream infra`` started and tracks by pid file.

    Attributes:
        name: Short name used in messages (``kafka``, ``mosquitto``).
        pid_file: Where the pid is recorded.
        marker: A string the process's command line must contain, so a recycled pid
            belonging to another program is never mistaken for the broker.
        program: The name of the broker's executable (``java``, ``mosquitto``). When
            set, a running process of that program with ``marker`` as an argument
            is taken as the broker even without a pid file (a Ctrl-C between the start
            and the pid file's write left a broker nothing could stop); its pid file is
            written again.
    """

    name: str
    pid_file: Path
    marker: str
    program: str | None = None

    def pid(self) -> int | None:
        """Return the pid of the live broker process, or None if it is not running."""
        try:
            pid: int | None = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid is not None and self._is_ours(pid):
            return pid
        if self.program is None:
            return None
        found = self._find()
        if found is not None:
            _log.warning("found %s (pid %d) without its pid file; tracking it", self.name, found)
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{found}\n")
        return found

    def _is_ours(self, pid: int) -> bool:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return self.marker in " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def _find(self) -> int | None:
        """A live process of ``program`` with ``marker`` as one whole argument, if any.

        A whole argument, not a part of one: Kafka's storage formatter gets
        ``--config=<the same path>`` and must never be taken for the broker.
        """
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if (
                cmdline
                and Path(cmdline[0]).name == self.program
                and proc.info["status"] != psutil.STATUS_ZOMBIE
                and self.marker in cmdline[1:]
            ):
                return int(proc.pid)
        return None

    def resume_if_stopped(self) -> bool:
        """Send SIGCONT if the process is stopped (``SIGSTOP``, as a fault test leaves it).

        A frozen broker holds its port but never answers: ``up`` waited out its whole
        start timeout and then killed it.

        Returns:
            True if it was stopped and has been resumed.
        """
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() == psutil.STATUS_STOPPED:
                os.kill(pid, signal.SIGCONT)
                return True
        return False

    def rss_mb(self) -> float | None:
        """Resident memory of the running process in MiB, or None if it is not running."""
        pid = self.pid()
        if pid is None:
            return None
        with contextlib.suppress(psutil.NoSuchProcess):
            return float(psutil.Process(pid).memory_info().rss) / 2**20
        return None

    def start(self, argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> int:
        """Start the process detached from this one, with output appended to ``log_file``.

        Args:
            argv: Command line.
            log_file: File receiving stdout and stderr.
            env: Extra environment variables.

        Returns:
            The new pid.
        """
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as out:
            # A new session keeps the broker alive after the CLI exits and out of
            # the CLI's process group (Ctrl-C on a test run must not kill it).
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the process: SIGTERM, then SIGKILL after ``timeout_s``.

        Returns:
            True if a running process was stopped, False if none was running.

        Raises:
            InfraError: It runs as another user, or outlived SIGKILL.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            proc = psutil.Process(pid)
            # A frozen (SIGSTOP) broker, as left by a fault test, cannot act on SIGTERM.
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            if not wait_until(lambda: _ended(proc), timeout_s, 0.1):
                proc.kill()
                if not wait_until(lambda: _ended(proc), 10, 0.1):
                    msg = f"{self.name} (pid {pid}) is still running after SIGKILL"
                    raise InfraError(msg)
        except psutil.NoSuchProcess:
            pass  # ended on its own in the meantime
        except psutil.AccessDenied as exc:
            msg = f"not permitted to stop {self.name} (pid {pid}): it runs as another user"
            raise InfraError(msg) from exc
        self.pid_file.unlink(missing_ok=True)
        return True


def _ended(proc: psutil.Process) -> bool:
    """Whether the process has exited: gone, or a zombie its parent has not reaped.

    A broker started by another running process (``make demo``) becomes that process's
    zombie when stopped from here; waiting for it to disappear (psutil's ``wait``) timed
    out, raised, and left the other broker running.
    """
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return True
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)  # reaped here when it is this process's child
    return True


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll ``predicate()`` until it is truthy or ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
