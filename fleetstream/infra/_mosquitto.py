"""The local Mosquitto, installed from Debian packages and run with the repo's config."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import subprocess
import threading
import time
from importlib import resources
from pathlib import Path
from string import Template

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleetstream.infra._process import ManagedProcess, rotate_log
from fleetstream.infra._settings import InfraSettings
from fleetstream.infra.errors import InfraError

_log = logging.getLogger(__name__)
_FILES = resources.files("fleetstream.infra") / "files"
_INSTALL_HINT = "apt-get update && apt-get install -y mosquitto mosquitto-clients"


def mosquitto_dir(settings: InfraSettings) -> Path:
    """Folder with the rendered config, persistence and log of the local Mosquitto."""
    return settings.run_dir / "mosquitto"


def log_path(settings: InfraSettings) -> Path:
    """The broker's own log (``log_dest file`` in the rendered config)."""
    return mosquitto_dir(settings) / "mosquitto.log"


def process(settings: InfraSettings) -> ManagedProcess:
    """The tracked broker process."""
    # Its config path, not just "mosquitto": a recycled pid could be a mosquitto_sub.
    return ManagedProcess(
        "mosquitto",
        mosquitto_dir(settings) / "mosquitto.pid",
        str(config_path(settings)),
        "mosquitto",
    )


def config_path(settings: InfraSettings) -> Path:
    """The rendered config the tracked broker is started with (and recognised by)."""
    return mosquitto_dir(settings) / "mosquitto.conf"


def wanted_listeners(settings: InfraSettings) -> list[str]:
    """The ``host:port`` listeners the settings ask for: anonymous, then password."""
    return [f"{settings.host}:{settings.mqtt_port}", f"{settings.host}:{settings.mqtt_auth_port}"]


def configured_listeners(settings: InfraSettings) -> list[str] | None:
    """The ``host:port`` listeners of the rendered config in the run folder, or None.

    None when there is no config yet. ``infra up`` rewrites the file only when the
    tracked broker runs with the same listeners, so it is the running broker's.
    """
    try:
        text = config_path(settings).read_text("utf-8")
    except FileNotFoundError:
        return None
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "listener":
            found.append(f"{words[2] if len(words) > 2 else '*'}:{words[1]}")
    return found


def binary() -> str:
    """Path of the mosquitto broker binary (Debian installs it in /usr/sbin)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        msg = f"mosquitto is not installed; install it with: {_INSTALL_HINT}"
        raise InfraError(msg)
    return found


def _write_password_file(passwd_tool: str, path: Path, username: str, password: str) -> None:
    """Create the broker's password file with the hash of ``username``'s password.

    The password reaches ``mosquitto_passwd`` on its standard input (as typed at its
    prompt), never on a command line, where ``ps`` shows it, and never in plain text on
    disk. (``mosquitto_passwd -U`` on a plain-text file is no alternative: it cuts the
    password at its first ':'.)

    ``InfraSettings`` has refused a user name or password that cannot be stored.

    Raises:
        InfraError: ``mosquitto_passwd`` failed; the message names neither the password
            nor the command.
    """
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    try:
        result = subprocess.run(
            [passwd_tool, str(path), username],
            input=f"{password}\n{password}\n",  # the prompt asks twice
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        msg = f"cannot run mosquitto_passwd to write the MQTT password file: {exc.strerror}"
        raise InfraError(msg) from None
    if result.returncode != 0:
        why = result.stderr.strip().replace(password, "***") or "no message"
        msg = (
            f"mosquitto_passwd could not store the password of MQTT user {username!r} "
            f"(exit {result.returncode}): {why}"
        )
        raise InfraError(msg)


def _user_name() -> str:
    """The user this process runs as, for Mosquitto to keep (never ``$USER``).

    ``getpass`` trusted ``$USER``: as root after ``su`` without ``-`` Mosquitto dropped to
    the invoking user and could not write its root-owned data folder.
    """
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a container uid with no passwd entry
        return str(os.geteuid())


def _render(settings: InfraSettings) -> Path:
    root = mosquitto_dir(settings)
    (root / "data").mkdir(parents=True, exist_ok=True)
    password_file = root / "passwd"
    passwd_tool = shutil.which("mosquitto_passwd")
    if passwd_tool is None:
        msg = f"mosquitto_passwd is missing; install it with: {_INSTALL_HINT}"
        raise InfraError(msg)
    _write_password_file(
        passwd_tool,
        password_file,
        settings.mqtt_username,
        settings.mqtt_password.get_secret_value(),
    )
    values = {
        "host": settings.host,
        "mqtt_port": settings.mqtt_port,
        "mqtt_auth_port": settings.mqtt_auth_port,
        "password_file": password_file,
        "data_dir": root / "data",
        "log_file": log_path(settings),
        "user": _user_name(),
    }
    text = Template((_FILES / "mosquitto.conf").read_text("utf-8")).substitute(values)
    config = config_path(settings)
    config.write_text(text, "utf-8")
    return config


def healthy(settings: InfraSettings, timeout_s: float = 2.0) -> bool:
    """Connect to the anonymous listener and wait for a successful CONNACK."""
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)

    def on_connect(
        _client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        if not getattr(reason, "is_failure", True):
            connected.set()

    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.mqtt_port, keepalive=5)
    except OSError:
        return False
    client.loop_start()
    try:
        return connected.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()


def start(settings: InfraSettings, timeout_s: float = 60.0) -> float:
    """Start Mosquitto unless it is already up, and wait until it accepts a connection.

    Returns:
        Seconds from launch to readiness (0 when it was already running).

    Raises:
        InfraError: Mosquitto is missing, failed to start or did not become ready.
    """
    proc = process(settings)
    if healthy(settings, timeout_s=1.0):
        if proc.pid() is None:
            _log.warning(
                "an MQTT broker not started by fleetstream answers on port %d; using it",
                settings.mqtt_port,
            )
        return 0.0
    mosquitto = binary()
    config = _render(settings)
    if proc.pid() is None:
        # Mosquitto writes its own log (a line per connection) and cannot rotate it.
        rotate_log(mosquitto_dir(settings) / "mosquitto.out")
        rotate_log(log_path(settings))
    began = time.monotonic()
    deadline = began + timeout_s
    # A broker that exits at once (port still held by a previous instance that is
    # shutting down) is started again a few times before giving up.
    for attempt in range(3):
        if proc.pid() is None:
            proc.start([mosquitto, "-c", str(config)], mosquitto_dir(settings) / "mosquitto.out")
        while time.monotonic() < deadline:
            if healthy(settings, timeout_s=0.5):
                return time.monotonic() - began
            if proc.pid() is None:
                break
            time.sleep(0.1)
        if time.monotonic() >= deadline:
            break
        _log.warning("mosquitto exited during start-up (attempt %d); retrying", attempt + 1)
        time.sleep(1.0)
    log = log_path(settings)
    out = mosquitto_dir(settings) / "mosquitto.out"
    tail = "\n".join(
        p.read_text("utf-8", errors="replace")[-2000:] for p in (out, log) if p.is_file()
    )
    with contextlib.suppress(InfraError):  # the start's failure is the news
        proc.stop(timeout_s=5)
    msg = f"Mosquitto did not become ready on port {settings.mqtt_port}:\n{tail}"
    raise InfraError(msg)
