"""The ``fleetstream`` command line: one entry point for every service and tool."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from fleetstream import infra
from models import DEFAULT_REGISTRY

if TYPE_CHECKING:
    import bench
from telemetry.errors import FleetstreamError
from telemetry.logs import configure_logging
from telemetry.settings import settings_problems

app = typer.Typer(
    name="fleetstream",
    help="Connected-vehicle telemetry: MQTT to Kafka without loss, per-car processing, dashboard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
infra_app = typer.Typer(
    help="Start, stop and inspect the local Kafka and Mosquitto.", no_args_is_help=True
)
app.add_typer(infra_app, name="infra")


@app.callback()
def _root(
    log_level: str = typer.Option(
        "INFO", "--log-level", envvar="FLEETSTREAM_LOG_LEVEL", help="Logging level."
    ),
) -> None:
    try:
        configure_logging(log_level)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # The processes a command starts (the demo's services, the benchmarks', the exec'd
    # Streamlit) read the level from the environment: --log-level reached none of them.
    os.environ["FLEETSTREAM_LOG_LEVEL"] = log_level.strip().upper()


@contextlib.contextmanager
def _checked_settings(what: str = "settings") -> Iterator[None]:
    """Turn invalid settings read inside the block into a clear error and exit code 2.

    The message lists each invalid setting with what is wrong; it never repeats the
    values, which may be secrets (``sasl.password`` in ``FLEETSTREAM_KAFKA_CONFIG``).

    Raises:
        typer.Exit: A setting was invalid (code 2).
    """
    try:
        yield
    except (ValidationError, SettingsError) as exc:
        _exit_invalid_settings(exc, what)


def _exit_invalid_settings(exc: ValidationError | SettingsError, what: str) -> NoReturn:
    """Print which settings are invalid and why (no values) and exit with code 2.

    Raises:
        typer.Exit: Always (code 2).
    """
    problems = "".join(f"\n  {line}" for line in settings_problems(exc))
    typer.echo(f"error: invalid {what}:{problems}", err=True)
    raise typer.Exit(2) from None


@infra_app.command("up")
def infra_up() -> None:
    """Start Kafka and Mosquitto (no-op for a broker already running) and wait until healthy."""
    with _checked_settings():
        settings = infra.InfraSettings()
    try:
        report = infra.up(settings)
    except infra.InfraError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for name, seconds in (("mosquitto", report.mosquitto_s), ("kafka", report.kafka_s)):
        typer.echo(f"{name}: " + (f"ready in {seconds:.1f} s" if seconds else "already running"))
    _print_status(infra.status(settings))


@infra_app.command("down")
def infra_down() -> None:
    """Stop the brokers that `infra up` started (data is kept in the run folder)."""
    with _checked_settings():
        settings = infra.InfraSettings()
    try:
        stopped = infra.down(settings)
    except infra.InfraError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@infra_app.command("status")
def infra_status() -> None:
    """Print ports, pids, memory and health of the local brokers; exit 1 if one is unhealthy."""
    with _checked_settings():
        settings = infra.InfraSettings()
    statuses = infra.status(settings)
    _print_status(statuses)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@infra_app.command("jars")
def infra_jars() -> None:
    """Resolve the Kafka broker jars from Maven Central into the cache (done by `up` too)."""
    with _checked_settings():
        settings = infra.InfraSettings()
    try:
        infra.ensure_jars(settings)
    except infra.InfraError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"Kafka {infra.KAFKA_VERSION} jars in {settings.kafka_libs_dir}")


def _positive(value: float | None) -> float | None:
    """Refuse a number that is not above 0 (None passes: the option was not given).

    Raises:
        typer.BadParameter: The value is 0 or negative.
    """
    if value is not None and not value > 0:
        msg = f"must be more than 0, not {value:g}"
        raise typer.BadParameter(msg)
    return value


@app.command("demo")
def demo(
    vehicles: int = typer.Option(50, "--vehicles", "-n", min=1, help="Simulated cars."),
    duration: float | None = typer.Option(
        None,
        "--duration",
        callback=_positive,
        help="Seconds (more than 0); default: until Ctrl-C.",
    ),
    anomaly_rate: float = typer.Option(
        6.0, "--anomaly-rate", help="Anomaly episodes per vehicle-day."
    ),
    seed: int = typer.Option(1, "--seed", help="Simulator seed."),
) -> None:
    """Run the local stack: brokers, ingest, processing, dashboard and a simulated fleet."""
    from fleetstream.demo import run_demo

    try:
        run_demo(vehicles, duration, anomaly_rate, seed)
    except (ValidationError, SettingsError) as exc:
        _exit_invalid_settings(exc, "settings")
    except (FleetstreamError, RuntimeError) as exc:
        # FleetstreamError: any package's own error, e.g. the simulator losing the broker.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("simulate")
def simulate(
    vehicles: int = typer.Option(10, "--vehicles", "-n", min=1, help="Number of cars."),
    duration: float = typer.Option(60.0, "--duration", min=0.001, help="Simulated seconds."),
    rate: float = typer.Option(
        1.0,
        "--rate",
        min=0.001,
        max=1000.0,
        help="Messages per car per second (at most 1000: ts counts milliseconds).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed; the same seed gives the same messages."),
    ev_share: float = typer.Option(0.6, "--ev-share", min=0.0, max=1.0, help="Fraction of EVs."),
    anomaly_rate: float = typer.Option(
        0.0, "--anomaly-rate", min=0.0, help="Expected anomaly episodes per vehicle-day."
    ),
    fmt: str = typer.Option("v1", "--format", help="Payload format: v1 or tesla."),
    mqtt_url: str | None = typer.Option(
        None,
        "--mqtt",
        help=(
            "Publish in real time to mqtt://[user:pass@]host:port; without a user in it, "
            "FLEETSTREAM_MQTT_USERNAME/FLEETSTREAM_MQTT_PASSWORD are used."
        ),
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Write JSON lines as fast as possible to this file."
    ),
    labels: Path | None = typer.Option(None, "--labels", help="Write anomaly labels (JSON lines)."),
    qos: int = typer.Option(1, "--qos", min=0, max=1, help="MQTT QoS for --mqtt."),
    topic: str | None = typer.Option(
        None, "--topic", help="MQTT topic template (default by format, uses {vehicle_id})."
    ),
    start_time: str | None = typer.Option(
        None, "--start-time", help="ISO time of the first message (--output; default 2026-01-01Z)."
    ),
) -> None:
    """Simulate EV and combustion cars with labelled anomalies, to a file or to MQTT.

    Credentials for --mqtt: in the URL (percent-encoded), or, when the URL has no user,
    from FLEETSTREAM_MQTT_USERNAME and FLEETSTREAM_MQTT_PASSWORD (not shown by ps).
    """
    from simulator import (
        FleetConfig,
        Format,
        MqttTarget,
        SimulatorError,
        check_output,
        check_topic,
        default_topic,
        run_to_file,
        run_to_mqtt,
    )
    from telemetry.settings import MqttConnectionSettings

    if (mqtt_url is None) == (output is None):
        msg = "give exactly one of --mqtt or --output"
        raise typer.BadParameter(msg)
    try:
        form = Format(fmt)
    except ValueError:
        msg = f"--format must be v1 or tesla, not {fmt!r}"
        raise typer.BadParameter(msg) from None
    config = FleetConfig(
        vehicles=vehicles,
        rate_hz=rate,
        seed=seed,
        ev_share=1.0 if form is Format.TESLA else ev_share,
        anomaly_rate=anomaly_rate,
        duration_s=duration,
        id_prefix="5YJSIM" if form is Format.TESLA else "veh",
        id_width=11 if form is Format.TESLA else 5,
    )
    if start_time is not None:
        config = replace(config, start_ms=_start_ms(start_time))
    # Everything that can be wrong with the options is found before the run starts.
    target = None
    with _usage_error("--output"):
        check_output(output, "file")
    with _usage_error("--labels"):
        check_output(labels, "file")
    if mqtt_url is not None:
        with _usage_error("--topic"):
            check_topic(topic or default_topic(form), config)
        with _checked_settings("MQTT settings"):
            mqtt = MqttConnectionSettings()
        if mqtt.mqtt_tls:
            # The services' shared setting: ignoring it would send the password in clear.
            msg = (
                "FLEETSTREAM_MQTT_TLS is set, but simulate publishes over plain TCP only; "
                "unset it for the simulator and give a plain listener in --mqtt"
            )
            raise typer.BadParameter(msg, param_hint="--mqtt")
        secret = mqtt.mqtt_password.get_secret_value() if mqtt.mqtt_password else None
        with _usage_error("--mqtt"):
            target = MqttTarget.parse(mqtt_url, mqtt.mqtt_username, secret)
    try:
        if output is not None:
            report = run_to_file(config, output, form, labels)
        else:
            assert target is not None  # noqa: S101 - set above whenever --mqtt was given
            with _stop_on_signals() as stop:
                report = run_to_mqtt(
                    config,
                    target=target,
                    fmt=form,
                    topic=topic or default_topic(form),
                    qos=qos,
                    labels=labels,
                    stop=stop,
                )
            if stop.is_set():
                raise KeyboardInterrupt  # noqa: TRY301 - reported below like Ctrl-C
    except SimulatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        where = f"; labels of the published part in {labels}" if labels is not None else ""
        typer.echo(f"interrupted{where}", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"simulated {report.messages} messages in {report.seconds:.1f} s "
        f"({report.achieved_rate:,.0f} msg/s; real-time target {report.target_rate:,.0f} msg/s), "
        f"{report.labels} anomaly labels"
    )


@contextlib.contextmanager
def _usage_error(option: str) -> Iterator[None]:
    """Turn a FleetstreamError raised by a check of ``option`` into a usage error (exit 2).

    Raises:
        typer.BadParameter: The check failed.
    """
    try:
        yield
    except FleetstreamError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{option}'") from None


def _start_ms(text: str) -> int:
    """``--start-time`` as epoch milliseconds (no zone = UTC).

    Raises:
        typer.BadParameter: Not an ISO 8601 time.
    """
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        msg = f"not an ISO 8601 time such as 2026-01-01T08:00:00Z: {text!r}"
        raise typer.BadParameter(msg, param_hint="'--start-time'") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Within the block, SIGTERM and SIGINT set the event instead of raising.

    The simulator's loop ends when it is set. An exception raised from a signal handler
    lands at an arbitrary point, inside the publisher's lock handling too, and once left
    a lock held: the run then hung in ``close()`` for good.
    """
    stop = threading.Event()
    previous: dict[int, Any] = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    except ValueError:  # not the main thread: leave the signals alone
        pass
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@app.command("ingest")
def ingest(
    rules: Path | None = typer.Option(
        None,
        "--rules",
        help="Rules file (TOML); default: FLEETSTREAM_INGEST_RULES_FILE or the packaged rules.",
    ),
    check: bool = typer.Option(
        False, "--check", help="Only validate the rules file and print the rules."
    ),
) -> None:
    """Bridge MQTT to Kafka (PUBACK after Kafka confirmed) and Kafka commands to MQTT."""
    import ingest as ingest_service

    if check:
        # The same file the service would load: --rules, else the setting.
        if rules is None:
            with _checked_settings():
                rules = ingest_service.IngestSettings().ingest_rules_file
        try:
            ruleset = ingest_service.load_rules(rules)
        except ingest_service.RulesError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"rules: {ruleset.source}")
        for r in ruleset.mqtt_to_kafka:
            typer.echo(
                f"mqtt->kafka {r.name}: {r.subscription} [{r.adapter}] -> {r.topic.text} "
                f"key={r.key.text}"
            )
        for c in ruleset.kafka_to_mqtt:
            typer.echo(f"kafka->mqtt {c.name}: {c.kafka} -> {c.mqtt.text} (QoS {c.qos})")
        return
    raise typer.Exit(ingest_service.main(rules))


@app.command("process")
def process() -> None:
    """Run the Quix Streams pipeline: vehicle-telemetry -> stats, sessions, alerts."""
    import processing

    raise typer.Exit(processing.main())


def _kafka_config(bootstrap: str) -> dict[str, Any]:
    """The shared Kafka client config (FLEETSTREAM_KAFKA_*) with ``--bootstrap`` applied.

    Raises:
        typer.Exit: The Kafka settings are invalid (code 2).
    """
    from telemetry.settings import KafkaConnectionSettings

    with _checked_settings("Kafka settings"):
        settings = KafkaConnectionSettings()
    return settings.kafka_client_config(**{"bootstrap.servers": bootstrap})


@app.command("evaluate")
def evaluate(
    labels: Path = typer.Option(
        ..., "--labels", help="Labels JSON lines from `fleetstream simulate --labels`."
    ),
    alerts_topic: str | None = typer.Option(
        None, "--alerts-topic", help="Read alerts from this Kafka topic."
    ),
    alerts: Path | None = typer.Option(
        None, "--alerts", help="Read alerts from a JSON-lines file."
    ),
    window_s: int = typer.Option(
        60,
        "--window-s",
        min=1,
        envvar="FLEETSTREAM_PROCESSING_WINDOW_S",
        help="The pipeline's window length in seconds (also FLEETSTREAM_PROCESSING_WINDOW_S; "
        "matching slack is 2 windows).",
    ),
    bootstrap: str = typer.Option(
        "127.0.0.1:9092",
        "--bootstrap",
        envvar="FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS",
        help="Kafka for --alerts-topic.",
    ),
) -> None:
    """Event-level precision, recall, F1 and detection delay of alerts against labels."""
    import orjson

    from models.errors import DataError
    from processing.evaluate import evaluate as score
    from processing.evaluate import format_scores, read_json_topic

    if (alerts_topic is None) == (alerts is None):
        msg = "give exactly one of --alerts-topic or --alerts"
        raise typer.BadParameter(msg)
    label_rows = [orjson.loads(line) for line in labels.read_bytes().splitlines() if line.strip()]
    if alerts is not None:
        alert_rows = [
            orjson.loads(line) for line in alerts.read_bytes().splitlines() if line.strip()
        ]
    else:
        try:
            alert_rows = read_json_topic(_kafka_config(bootstrap), alerts_topic or "")
        except DataError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    typer.echo(format_scores(score(label_rows, alert_rows, window_ms=window_s * 1000)))


@app.command("archive")
def archive(
    out: Path | None = typer.Option(
        None, "--out", help="Archive root (default FLEETSTREAM_ARCHIVE_DIR or ./archive)."
    ),
    tables: str = typer.Option(
        "telemetry,stats", "--tables", help="Comma-separated: telemetry, stats."
    ),
    until_idle: float | None = typer.Option(
        None, "--until-idle", min=0.1, help="Exit after this many seconds without records."
    ),
) -> None:
    """Write vehicle-telemetry and vehicle-stats to Parquet (date/powertrain partitions)."""
    import signal

    from prometheus_client import start_http_server

    from models._settings import ArchiveSettings
    from models.archive import TABLES, archive_topics
    from models.metrics import ArchiveMetrics

    with _checked_settings():
        settings = ArchiveSettings()
    wanted = [t.strip() for t in tables.split(",") if t.strip()]
    unknown = sorted(set(wanted) - set(TABLES))
    if unknown or not wanted:
        msg = f"unknown table(s) {unknown}; choose from {', '.join(TABLES)}"
        raise typer.BadParameter(msg, param_hint="--tables")
    topic_of = {
        "telemetry": settings.archive_telemetry_topic,
        "stats": settings.archive_stats_topic,
    }
    metrics = ArchiveMetrics()
    if settings.archive_metrics_port:
        start_http_server(
            settings.archive_metrics_port, settings.archive_metrics_host, registry=metrics.registry
        )
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stopping.append(signum))
    report = archive_topics(
        settings.kafka_client_config(),
        {topic_of[t]: TABLES[t] for t in wanted},
        out or settings.archive_dir,
        group=settings.archive_consumer_group,
        max_rows=settings.archive_max_rows,
        max_age_s=settings.archive_max_age_s,
        idle_exit_s=until_idle,
        stop=lambda: bool(stopping),
        metrics=metrics,
    )
    rows = ", ".join(f"{name} {count:,}" for name, count in report.rows.items())
    typer.echo(
        f"archived {rows} rows in {report.files} file(s) in {report.seconds:.1f} s; "
        f"{report.skipped} invalid record(s) skipped"
    )


# The pipeline's setting, so that offline scores judge odometers as the pipeline does.
_ODOMETER_OPTION = typer.Option(
    None,
    "--odometer-resolution-km",
    max=10.0,  # processing's own bound
    envvar="FLEETSTREAM_PROCESSING_ODOMETER_RESOLUTION_KM",
    help="The step the cars' odometers count in, as processing's setting "
    "(also FLEETSTREAM_PROCESSING_ODOMETER_RESOLUTION_KM; default 0.1).",
)


# The pipeline's window length: features, replayed alerts, feedback spans and matching
# slack all depend on it, and a pipeline refuses a model trained on other windows.
_WINDOW_OPTION = typer.Option(
    60,
    "--window-s",
    min=1,
    envvar="FLEETSTREAM_PROCESSING_WINDOW_S",
    help="The pipeline's window length in seconds, as processing's setting "
    "(also FLEETSTREAM_PROCESSING_WINDOW_S; default 60).",
)


def _odometer_resolution(value: float | None) -> float:
    """The odometer resolution for the workflow (None: the pipeline's default), checked.

    Raises:
        typer.Exit: Not a positive finite number (code 2).
    """
    from processing.detectors import SensorGlitch

    if value is None:
        return SensorGlitch.ODOMETER_RESOLUTION_KM
    try:
        SensorGlitch(value)
    except ValueError as exc:
        typer.echo(f"error: --odometer-resolution-km: {exc}", err=True)
        raise typer.Exit(2) from exc
    return value


@app.command("train")
def train(
    data: str = typer.Option(
        ...,
        "--data",
        help="Archive folder (e.g. archive/telemetry), Parquet/JSON-lines file or glob.",
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Labels JSON lines; without them only unsupervised models."
    ),
    out: Path = typer.Option(
        DEFAULT_REGISTRY,
        "--out",
        envvar="FLEETSTREAM_PROCESSING_MODEL_DIR",
        help="Registry folder the new version is written to (not promoted).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of the estimators."),
    feedback: Path | None = typer.Option(
        None,
        "--feedback",
        help="Operators' verdicts as labels: JSON lines of vehicle-alerts.feedback records.",
    ),
    feedback_topic: str | None = typer.Option(
        None,
        "--feedback-topic",
        help="Read the verdicts from this Kafka topic (e.g. vehicle-alerts.feedback).",
    ),
    bootstrap: str = typer.Option(
        "127.0.0.1:9092",
        "--bootstrap",
        envvar="FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS",
        help="Kafka for --feedback-topic.",
    ),
    odometer_resolution_km: float | None = _ODOMETER_OPTION,
    window_s: int = _WINDOW_OPTION,
) -> None:
    """Train and compare consumption models on a time split; save the best with a report."""
    from models.errors import DataError
    from models.feedback import load_feedback
    from models.workflow import run_train
    from processing.evaluate import read_json_topic

    resolution = _odometer_resolution(odometer_resolution_km)
    if feedback is not None and feedback_topic is not None:
        typer.echo("error: give --feedback or --feedback-topic, not both", err=True)
        raise typer.Exit(2)
    try:
        verdicts = None
        source = None
        if feedback is not None:
            verdicts, source = load_feedback(feedback), str(feedback)
        elif feedback_topic is not None:
            verdicts = read_json_topic(_kafka_config(bootstrap), feedback_topic)
            source = f"kafka://{bootstrap}/{feedback_topic}"
        if verdicts is not None:
            typer.echo(f"feedback: {len(verdicts)} records from {source}")
        outcome = run_train(
            data,
            labels,
            out,
            seed=seed,
            feedback=verdicts,
            feedback_source=source,
            odometer_resolution_km=resolution,
            window_ms=window_s * 1000,
        )
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for c in outcome.result.candidates:
        val = f"validation F1 {c.validation.f1:.3f}" if c.validation else "no labels"
        test = f", held-out F1 {c.test.f1:.3f}" if c.test else ""
        mark = "*" if c is outcome.result.chosen else " "
        typer.echo(f"{mark} {c.family.name:<24} {val}{test}")
    base = outcome.result.baseline_test
    if base is not None:
        typer.echo(f"  {'fixed threshold':<24} held-out F1 {base.f1:.3f}")
    typer.echo(f"saved {outcome.folder.name} in {out} (report: {outcome.folder / 'report.md'})")
    typer.echo(f"promote it with: fleetstream models promote {outcome.folder.name}")


@app.command("backtest")
def backtest(
    model: Path | None = typer.Option(
        None, "--model", help="Model version folder; omit to backtest the rules alone."
    ),
    data: str = typer.Option(..., "--data", help="Archive folder, file or glob."),
    labels: Path = typer.Option(..., "--labels", help="Labels JSON lines."),
    since: str | None = typer.Option(
        None, "--since", help="Score only labels and alerts from this ISO time (held-out range)."
    ),
    alerts_out: Path | None = typer.Option(
        None, "--alerts-out", help="Also write the replayed alerts as JSON lines."
    ),
    odometer_resolution_km: float | None = _ODOMETER_OPTION,
    window_s: int = _WINDOW_OPTION,
) -> None:
    """Replay archived history through the detectors offline; print `evaluate`'s metrics."""
    import orjson

    from models.errors import DataError, ModelError
    from models.workflow import run_backtest
    from processing.evaluate import format_scores

    resolution = _odometer_resolution(odometer_resolution_km)
    since_ms = None
    if since is not None:
        when = datetime.fromisoformat(since)
        since_ms = int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
    try:
        scores, alerts = run_backtest(
            model,
            data,
            labels,
            since_ms,
            odometer_resolution_km=resolution,
            window_ms=window_s * 1000,
        )
    except (DataError, ModelError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if alerts_out is not None:
        alerts_out.write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in alerts))
    typer.echo(format_scores(scores))


@app.command("dashboard")
def dashboard(
    host: str | None = typer.Option(
        None, "--host", help="Address to listen on (default FLEETSTREAM_DASHBOARD_HOST, 127.0.0.1)."
    ),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="Port (default FLEETSTREAM_DASHBOARD_PORT, 8501)."
    ),
) -> None:
    """Serve the live Streamlit fleet dashboard (reads stats, sessions, alerts from Kafka)."""
    from dashboard.server import main as serve

    raise typer.Exit(serve(host, port))


models_app = typer.Typer(
    help="List, promote and shadow-score versioned detector models.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
_REGISTRY_OPTION = typer.Option(
    DEFAULT_REGISTRY,
    "--registry",
    envvar="FLEETSTREAM_PROCESSING_MODEL_DIR",
    help="Registry folder (also FLEETSTREAM_PROCESSING_MODEL_DIR).",
)


@models_app.command("list")
def models_list(
    registry: Path = _REGISTRY_OPTION,
) -> None:
    """List model versions; '*' marks the promoted one, 's' the shadow candidate."""
    import orjson

    from models.errors import ModelError
    from models.registry import CURRENT, METADATA_FILE, SHADOW, current_version, list_versions

    marks: dict[str, str | None] = {}
    for pointer in (CURRENT, SHADOW):
        try:
            marks[pointer] = current_version(registry, pointer)
        except ModelError as exc:
            typer.echo(f"warning: {exc}", err=True)
            marks[pointer] = None
    current, shadow = marks[CURRENT], marks[SHADOW]
    versions = list_versions(registry)
    if not versions:
        typer.echo(f"no models in {registry}")
        return
    for version in versions:
        mark = "*" if version == current else ("s" if version == shadow else " ")
        try:
            meta = orjson.loads((registry / version / METADATA_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            meta = {}
        f1 = (meta.get("candidates", {}).get(meta.get("family"), {}).get("test") or {}).get("f1")
        detail = f"{meta.get('family', '?')}" + (
            f", held-out F1 {f1:.3f}" if f1 is not None else ""
        )
        typer.echo(f"{mark} {version}  {detail}")
    typer.echo("(* current, s shadow)")


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(..., help="Version folder name to promote."),
    registry: Path = _REGISTRY_OPTION,
) -> None:
    """Point the registry's 'current' at VERSION; a running pipeline loads it within seconds."""
    from models.errors import ModelError
    from models.registry import promote

    try:
        promote(registry, version)
    except ModelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"promoted {version}")


@models_app.command("shadow")
def models_shadow(
    version: str | None = typer.Argument(None, help="Version to score in shadow mode."),
    clear: bool = typer.Option(False, "--clear", help="Stop shadow scoring."),
    registry: Path = _REGISTRY_OPTION,
) -> None:
    """Score VERSION alongside the active model; its alerts go to vehicle-alerts.shadow."""
    from models.errors import ModelError
    from models.registry import SHADOW, promote, unset

    if clear == (version is not None):
        msg = "give a VERSION or --clear"
        raise typer.BadParameter(msg)
    try:
        if clear:
            unset(registry, SHADOW)
            typer.echo("shadow scoring stopped")
            return
        promote(registry, version or "", SHADOW)
    except ModelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"shadowing {version}")


bench_app = typer.Typer(
    help="Benchmarks on the local real brokers, each figure next to a same-run baseline.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")
_OUT_OPTION = typer.Option(
    Path("bench-results"), "--out", help="Folder for <kind>-<time>.json and <kind>-latest.json."
)
_JSON_OPTION = typer.Option(
    False, "--json", help="Print the JSON report on stdout; the table goes to stderr."
)


def _finish_bench(report: bench.Report, out: Path, as_json: bool = False) -> None:
    """Print the table (and with ``as_json`` the JSON), save the JSON; exit 3 on a miss."""
    report.finish()
    typer.echo(report.table(), err=as_json)
    path = report.write(out)
    typer.echo(f"results: {path}", err=as_json)
    if as_json:
        typer.echo(report.to_json().decode())
    if not all(t["met"] for t in report.targets):
        raise typer.Exit(3)


@bench_app.command("ingest")
def bench_ingest(
    vehicles: int = typer.Option(1000, "--vehicles", "-n", min=1, help="Cars in the load."),
    seconds: int = typer.Option(
        100, "--seconds", min=1, help="Seconds of 1 Hz telemetry per car in the load."
    ),
    outage_s: float = typer.Option(
        60.0, "--outage-s", min=0, help="Kafka outage phase for ingest's RSS; 0 skips it."
    ),
    repeats: int = typer.Option(
        3, "--repeats", min=1, help="Floods for ingest and MQTTSource each; the median counts."
    ),
    out: Path = _OUT_OPTION,
    as_json: bool = _JSON_OPTION,
) -> None:
    """MQTT QoS 1 -> Kafka: fleetstream ingest next to mosquitto_sub, MQTTSource, a naive bridge."""
    from bench import BenchError, run_ingest

    _check_bench_settings()
    try:
        report = run_ingest(vehicles=vehicles, seconds=seconds, outage_s=outage_s, repeats=repeats)
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _finish_bench(report, out, as_json)


@bench_app.command("pipeline")
def bench_pipeline(
    vehicles: int = typer.Option(200, "--vehicles", "-n", min=1, help="Cars in the load."),
    seconds: int = typer.Option(
        1500, "--seconds", min=1, help="Seconds of 1 Hz telemetry per car in the load."
    ),
    model: bool = typer.Option(
        True,
        "--model/--no-model",
        help="Also time processing with a promoted consumption model (trained first).",
    ),
    out: Path = _OUT_OPTION,
    as_json: bool = _JSON_OPTION,
) -> None:
    """Records/s of processing from a pre-filled topic, next to a bare deserialising consumer."""
    from bench import BenchError, run_pipeline

    _check_bench_settings()
    try:
        report = run_pipeline(vehicles=vehicles, seconds=seconds, model=model)
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _finish_bench(report, out, as_json)


@bench_app.command("e2e")
def bench_e2e(
    vehicles: list[int] = typer.Option(
        [1000], "--vehicles", "-n", min=1, help="Cars at 1 Hz; repeat to try several sizes."
    ),
    seconds: int = typer.Option(120, "--seconds", min=10, help="Real-time seconds per size."),
    search: bool = typer.Option(
        False, "--search", help="Double the fleet until loss or p99 >= 1 s, then bisect once."
    ),
    processes: int = typer.Option(
        1, "--processes", min=1, max=4, help="Processing processes in one consumer group."
    ),
    out: Path = _OUT_OPTION,
    as_json: bool = _JSON_OPTION,
) -> None:
    """Simulated cars at 1 Hz through ingest and processing: loss, latency, CPU, RSS."""
    from bench import BenchError, run_e2e

    _check_bench_settings()
    try:
        report = run_e2e(vehicles=vehicles, seconds=seconds, search=search, processes=processes)
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _finish_bench(report, out, as_json)


def _check_bench_settings() -> None:
    """Read the settings a benchmark and the services it starts read, before anything starts.

    Raises:
        typer.Exit: A setting is invalid (code 2); named without its value.
    """
    from ingest import IngestSettings
    from processing import ProcessingSettings

    with _checked_settings():
        infra.InfraSettings()
        IngestSettings()
        ProcessingSettings()


def _print_status(statuses: list[infra.ServiceStatus]) -> None:
    typer.echo(f"{'service':<10} {'state':<10} {'pid':>8} {'rss MiB':>8}  ports")
    for s in statuses:
        pid = str(s.pid) if s.pid is not None else "-"
        rss = f"{s.rss_mb:.0f}" if s.rss_mb is not None else "-"
        typer.echo(f"{s.name:<10} {s.state:<10} {pid:>8} {rss:>8}  {s.ports}")


def main(command: str | None = None) -> None:
    """Run the CLI; with ``command``, that command with this process's arguments.

    ``python -m ingest|processing|dashboard|simulator`` run this way: the same options,
    help, settings checks and exit codes as ``fleetstream <command>``.

    Args:
        command: A ``fleetstream`` command name (``ingest``, ``process``, ...), or None
            for the whole CLI.
    """
    if command is None:
        app()
        return
    # Usage lines read "fleetstream <command>": the command a user can type anywhere.
    app(args=[command, *sys.argv[1:]], prog_name="fleetstream")
