"""The ``fleetstream`` command line: one entry point for every service and tool."""

from __future__ import annotations

import typer

from fleetstream import infra
from telemetry.logs import configure_logging

app = typer.Typer(
    name="fleetstream",
    help="Connected-vehicle telemetry: MQTT to Kafka without loss, per-car processing, dashboard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    configure_logging(log_level)


@infra_app.command("up")
def infra_up() -> None:
    """Start Kafka and Mosquitto (no-op for a broker already running) and wait until healthy."""
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
    stopped = infra.down()
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@infra_app.command("status")
def infra_status() -> None:
    """Print ports, pids, memory and health of the local brokers; exit 1 if one is unhealthy."""
    statuses = infra.status()
    _print_status(statuses)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@infra_app.command("jars")
def infra_jars() -> None:
    """Resolve the Kafka broker jars from Maven Central into the cache (done by `up` too)."""
    settings = infra.InfraSettings()
    try:
        infra.ensure_jars(settings)
    except infra.InfraError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"Kafka {infra.KAFKA_VERSION} jars in {settings.kafka_libs_dir}")


@app.command("demo")
def demo() -> None:
    """Run the local demo: start the brokers (the pipeline joins as later issues land)."""
    infra_up()
    typer.echo(
        "demo: Kafka and Mosquitto are running. Simulator, ingest, processing and dashboard "
        "are not built yet; stop the brokers with `fleetstream infra down`."
    )


def _print_status(statuses: list[infra.ServiceStatus]) -> None:
    typer.echo(f"{'service':<10} {'state':<10} {'pid':>8} {'rss MiB':>8}  ports")
    for s in statuses:
        pid = str(s.pid) if s.pid is not None else "-"
        rss = f"{s.rss_mb:.0f}" if s.rss_mb is not None else "-"
        typer.echo(f"{s.name:<10} {s.state:<10} {pid:>8} {rss:>8}  {s.ports}")


def main() -> None:
    """Run the CLI."""
    app()
