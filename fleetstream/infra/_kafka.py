"""The local single-node Kafka (KRaft), run from jars resolved from Maven Central."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path
from string import Template
from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from fleetstream.infra._process import ManagedProcess, rotate_log
from fleetstream.infra._settings import KAFKA_VERSION, InfraSettings
from fleetstream.infra.errors import InfraError

_log = logging.getLogger(__name__)
_FILES = resources.files("fleetstream.infra") / "files"


def kafka_dir(settings: InfraSettings) -> Path:
    """Folder with the rendered config, data and logs of the local Kafka."""
    return settings.run_dir / "kafka"


def process(settings: InfraSettings) -> ManagedProcess:
    """The tracked broker process."""
    # Its config path, not just "kafka.Kafka": a recycled pid could be another Kafka.
    pid_file = kafka_dir(settings) / "kafka.pid"
    return ManagedProcess("kafka", pid_file, str(config_path(settings)), "java")


def config_path(settings: InfraSettings) -> Path:
    """The rendered config the tracked broker is started with (and recognised by)."""
    return kafka_dir(settings) / "server.properties"


def wanted_listeners(settings: InfraSettings) -> list[str]:
    """The ``host:port`` listeners the settings ask for: clients, then controller."""
    return [settings.kafka_bootstrap, f"{settings.host}:{settings.kafka_controller_port}"]


def configured_listeners(settings: InfraSettings) -> list[str] | None:
    """The ``host:port`` listeners of the rendered config in the run folder, or None.

    None when there is no config yet. ``infra up`` rewrites the file only when the
    tracked broker runs with the same listeners, so it is the running broker's.
    """
    try:
        text = config_path(settings).read_text("utf-8")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "listeners":
            # PLAINTEXT://host:port,CONTROLLER://host:port
            return [item.partition("://")[2] for item in value.strip().split(",")]
    return []


# Written last, once Maven has copied every jar: a copy cut short (Ctrl-C, a full disk)
# used to count as complete because its first jar was there, and Kafka then failed on
# missing classes at every start.
_COMPLETE: Final = ".complete"


def jars_present(settings: InfraSettings) -> bool:
    """Whether the broker jars are already in the cache, all of them."""
    return (settings.kafka_libs_dir / _COMPLETE).is_file()


def ensure_jars(settings: InfraSettings) -> None:
    """Resolve the broker jars with Maven into the cache folder unless they are there.

    One process at a time per cache folder: ``infra jars`` next to an ``up`` (or two
    checkouts sharing the cache) must not start Kafka on a folder still being filled.

    Raises:
        InfraError: Maven is missing or the resolution failed.
    """
    if jars_present(settings):
        return
    lock_path = settings.kafka_libs_dir.parent / "jars.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not jars_present(settings):  # another process may have fetched them
                _fetch_jars(settings)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fetch_jars(settings: InfraSettings) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = (
            "Maven (mvn) is needed once to fetch the Kafka jars; install it (apt-get install maven)"
        )
        raise InfraError(msg)
    libs = settings.kafka_libs_dir
    # Copied into a folder of their own, then moved into place jar by jar (a running
    # Kafka keeps the files it has open), the marker last.
    partial = libs.with_name(libs.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _log.info("resolving Kafka %s jars from Maven Central into %s", KAFKA_VERSION, libs)
    with resources.as_file(_FILES / "pom.xml") as pom:
        result = subprocess.run(
            [
                *(mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"),
                f"-Dlibs.dir={partial}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    main_jar = partial / f"kafka_2.13-{KAFKA_VERSION}.jar"
    if result.returncode != 0 or not main_jar.is_file():
        # mvn's own complaints (a JAVA_HOME that is gone) go to stderr.
        output = (result.stdout + result.stderr)[-3000:]
        msg = f"mvn could not resolve the Kafka jars (exit {result.returncode}):\n{output}"
        raise InfraError(msg)
    libs.mkdir(parents=True, exist_ok=True)
    jars = sorted(partial.glob("*.jar"))
    for jar in jars:
        os.replace(jar, libs / jar.name)
    (libs / _COMPLETE).write_text("".join(f"{jar.name}\n" for jar in jars))
    shutil.rmtree(partial, ignore_errors=True)


def _render(settings: InfraSettings) -> Path:
    root = kafka_dir(settings)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    values = {
        "host": settings.host,
        "kafka_port": settings.kafka_port,
        "controller_port": settings.kafka_controller_port,
        "data_dir": root / "data",
        "default_partitions": settings.kafka_default_partitions,
    }
    text = Template((_FILES / "server.properties").read_text("utf-8")).substitute(values)
    config = config_path(settings)
    config.write_text(text, "utf-8")
    (root / "log4j2.properties").write_text(
        (_FILES / "log4j2.properties").read_text("utf-8"), "utf-8"
    )
    return config


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        msg = (
            "Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)"
        )
        raise InfraError(msg)
    return found


def _jvm_flags(settings: InfraSettings) -> list[str]:
    root = kafka_dir(settings)
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return [
        f"-Xms{min(256, settings.kafka_heap_mb)}m",
        f"-Xmx{settings.kafka_heap_mb}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={root / 'logs'}",
        f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}",
        # Native compression libs unpack into tmp; /tmp may be mounted noexec.
        f"-Djava.io.tmpdir={tmp}",
        f"-DZstdTempFolder={tmp}",
        f"-Dorg.xerial.snappy.tempdir={tmp}",
        "-cp",
        f"{settings.kafka_libs_dir}/*",
    ]


def _format_storage(settings: InfraSettings, config: Path) -> None:
    if (kafka_dir(settings) / "data" / "meta.properties").is_file():
        return
    cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    # Static controller.quorum.voters: 4.1 rejects --standalone here.
    result = subprocess.run(
        [
            _java(),
            *_jvm_flags(settings),
            "kafka.tools.StorageTool",
            "format",
            # "=" form: a random id may start with "-", which argparse would read as a flag.
            f"--cluster-id={cluster_id}",
            f"--config={config}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        msg = f"formatting Kafka storage failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        raise InfraError(msg)


def healthy(settings: InfraSettings, timeout_s: float = 2.0) -> bool:
    """Ask the broker for cluster metadata; True when it answers with a broker."""
    admin = AdminClient(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "socket.timeout.ms": int(timeout_s * 1000),
            # A probe of a stopped broker is expected to fail; don't log each refusal.
            "log_level": 0,
        }
    )
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return len(metadata.brokers) > 0


def start(settings: InfraSettings) -> float:
    """Start the broker unless it is already up, and wait until it answers metadata requests.

    Returns:
        Seconds from launch to readiness (0 when it was already running).

    Raises:
        InfraError: The broker failed to start or did not become ready in time.
    """
    proc = process(settings)
    if proc.pid() is not None and healthy(settings):
        return 0.0
    if proc.pid() is None and healthy(settings):
        _log.warning(
            "a Kafka not started by fleetstream answers on %s; using it", settings.kafka_bootstrap
        )
        return 0.0
    ensure_jars(settings)
    config = _render(settings)
    _format_storage(settings, config)
    began = time.monotonic()
    log_file = kafka_dir(settings) / "logs" / "kafka.out"
    if proc.pid() is None:
        rotate_log(log_file)
    # The file keeps every start's output: a failure shows only this start's.
    since = log_file.stat().st_size if log_file.exists() else 0
    if proc.pid() is None:
        proc.start([_java(), *_jvm_flags(settings), "kafka.Kafka", str(config)], log_file)
    timeout_s = settings.kafka_start_timeout_s
    deadline, cap = began + timeout_s, began + _RECOVERY_CAP * timeout_s
    # Recovery is logged at INFO, which goes to server.log (kafka.out gets WARN and up).
    server_log = kafka_dir(settings) / "logs" / "server.log"
    read = server_log.stat().st_size if server_log.exists() else 0
    while time.monotonic() < deadline:
        if healthy(settings, timeout_s=1.0):
            return time.monotonic() - began
        if proc.pid() is None:
            break
        # After a crash a broker with much data first recovers its logs, for longer
        # than the timeout: it was killed mid-recovery, and every retry started over.
        read, recovering = _recovery_since(server_log, read)
        if recovering:
            deadline = min(cap, max(deadline, time.monotonic() + timeout_s))
        time.sleep(0.2)
    tail = _tail(log_file, since)
    with contextlib.suppress(InfraError):  # the start's failure is the news
        proc.stop(timeout_s=5)
    msg = (
        f"Kafka did not become ready on {settings.kafka_bootstrap} within "
        f"{time.monotonic() - began:.0f} s (FLEETSTREAM_KAFKA_START_TIMEOUT_S={timeout_s:g}, "
        f"up to {_RECOVERY_CAP}x that while it recovers its logs); last output:\n{tail}"
    )
    raise InfraError(msg)


# What the broker logs (server.log, INFO) while it loads and recovers its logs
# (LogLoader, "Recovering unflushed segment", "Loading producer state"), a few lines per
# partition at every start; the start waits while they keep coming.
_RECOVERY: Final = re.compile(rb"LogLoader|[Rr]ecover|Loading producer state")
_RECOVERY_CAP: Final = 10


def _recovery_since(path: Path, offset: int) -> tuple[int, bool]:
    """The end of ``path``, and whether what was written after ``offset`` shows recovery.

    A file shorter than ``offset`` was rolled over (log4j2, 20 MiB): read from its start.
    """
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                offset = 0
            f.seek(offset)
            new = f.read()
    except FileNotFoundError:
        return offset, False
    return offset + len(new), _RECOVERY.search(new) is not None


def _tail(path: Path, since: int = 0, lines: int = 30) -> str:
    """The last ``lines`` lines written to ``path`` after its first ``since`` bytes."""
    try:
        with path.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"
