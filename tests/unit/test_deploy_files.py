"""The container stack's files, checked with real tools and the services' own code.

No Docker engine here: the image is never built and no container is started. What these
tests do verify is listed in docs/deploy.md ("What CI verifies").
"""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.core
import typer.main
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from dashboard.settings import DashboardSettings
from fleetstream import infra
from fleetstream.cli import app
from ingest import IngestSettings, load_rules
from ingest._metrics import IngestMetrics
from models._settings import ArchiveSettings
from models.metrics import ArchiveMetrics
from processing import ProcessingSettings
from processing.metrics import ProcessingMetrics
from simulator import MqttTarget
from telemetry.settings import ENV_PREFIX, KafkaConnectionSettings

from ..deploy_checks import (
    COMPOSE_FILE,
    DEPLOY,
    FLEETSTREAM_IMAGE,
    GRAFANA_DASHBOARD,
    REPO,
    command_of,
    dashboard_expressions,
    docker_compose,
    environment_of,
    exported_metric_names,
    promql_metric_names,
    require_tool,
    resolved_compose,
)

pytestmark = pytest.mark.unit

# Settings classes each fleetstream subcommand reads from the environment.
SETTINGS_OF: dict[str, tuple[type[Any], ...]] = {
    "ingest": (IngestSettings,),
    "process": (ProcessingSettings,),
    "dashboard": (KafkaConnectionSettings,),
    "simulate": (),
    "archive": (ArchiveSettings,),
}
# `fleetstream --log-level` reads this for every subcommand.
ROOT_ENV = {"FLEETSTREAM_LOG_LEVEL"}
BROKERS = ("kafka", "mosquitto")
# Services running the fleetstream image (a static list: the commands are parametrized).
FLEETSTREAM_SERVICES = ("ingest", "ingest-2", "processing", "archive", "dashboard", "simulator")
LONG_RUNNING = (
    "kafka", "mosquitto", "ingest", "processing", "archive", "dashboard", "prometheus", "grafana",
)  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolved_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def fleetstream_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if s.get("image") == FLEETSTREAM_IMAGE}


# --- 1. the compose file parses with a real compose implementation -----------------------


@pytest.mark.parametrize("profiles", [(), ("demo",), ("scale-ingest",), ("demo", "scale-ingest")])
def test_compose_file_is_valid_for_docker_compose(profiles: tuple[str, ...]) -> None:
    args = [arg for p in profiles for arg in ("--profile", p)]
    result = docker_compose(*args, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_docker_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    # The validator must really validate: an unknown key and a bad condition both fail.
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text("utf-8")
    cases = (
        ("\n  kafka:\n    image:", "\n  kafka:\n    bogus: 1\n    image:", "bogus"),
        ("condition: service_healthy", "condition: service_happy", "service_happy"),
    )
    for old, new, reason in cases:
        assert old in text
        broken.write_text(text.replace(old, new, 1), "utf-8")
        result = docker_compose("config", "--quiet", file=broken)
        assert result.returncode != 0, f"docker-compose accepted {new!r}"
        assert reason in result.stderr, result.stderr


def test_stack_services_profiles_and_scaling(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {
        "kafka",
        "topic-init",
        "mosquitto",
        "ingest",
        "ingest-2",
        "processing",
        "archive",
        "dashboard",
        "simulator",
        "prometheus",
        "grafana",
    }
    assert services["simulator"].get("profiles") == ["demo"]
    assert services["ingest-2"].get("profiles") == ["scale-ingest"]
    for name in set(services) - {"simulator", "ingest-2"}:
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    # `--scale processing=N`: a fixed host port would clash between replicas.
    assert not services["processing"].get("ports")
    assert services["kafka"]["image"] == f"apache/kafka:{infra.KAFKA_VERSION}"


def test_every_broker_and_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"


def test_services_wait_for_healthy_dependencies(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            condition = spec.get("condition")
            if dep == "topic-init":
                assert condition == "service_completed_successfully", (name, dep)
            else:
                assert condition == "service_healthy", (name, dep)
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}: no check"
    for name, service in fleetstream_services(services).items():
        deps = service.get("depends_on") or {}
        if name != "simulator":
            assert "kafka" in deps, f"{name} must wait for Kafka"
            assert "topic-init" in deps, f"{name} must wait for the topics"
    for name in ("ingest", "ingest-2", "simulator"):
        assert "mosquitto" in (services[name].get("depends_on") or {}), name


# --- 2. every service command is a real fleetstream subcommand ----------------------------


def parse_fleetstream(args: list[str]) -> Any:
    """Parse ``fleetstream ARGS`` with the real typer app, as the container entrypoint would.

    Returns the innermost click context (typer 0.29 vendors click, hence ``Any``). Raises a
    ``typer.TyperException`` (click's UsageError, NoSuchOption, BadParameter) for an
    unknown subcommand or option or a value the option rejects; nothing is run.
    """
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("fleetstream", list(args))
    while isinstance(command, typer.core.TyperGroup):
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None and name is not None
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)
    return ctx


@pytest.mark.parametrize("name", FLEETSTREAM_SERVICES)
def test_service_command_is_a_real_fleetstream_subcommand(
    name: str, services: dict[str, dict[str, Any]]
) -> None:
    # [dashboard] needs `fleetstream dashboard` from the dashboard branch: until that is
    # merged it FAILS (by design: a compose command that does not exist is a bug).
    service = services[name]
    assert service.get("entrypoint") is None, f"{name}: the image's entrypoint is fleetstream"
    args = command_of(service)
    try:
        ctx = parse_fleetstream(args)
    except typer.TyperException as exc:
        pytest.fail(f"{name}: `fleetstream {' '.join(args)}` does not parse: {exc}")
    assert ctx.command.name == args[0]


def test_fleetstream_services_are_all_checked(services: dict[str, dict[str, Any]]) -> None:
    assert set(fleetstream_services(services)) == set(FLEETSTREAM_SERVICES)


def test_parse_fleetstream_rejects_unknown_commands_and_bad_options() -> None:
    with pytest.raises(typer.TyperException, match="No such command"):
        parse_fleetstream(["procss"])
    with pytest.raises(typer.BadParameter, match="greater than or equal to 1"):
        parse_fleetstream(["simulate", "--vehicles", "0"])
    with pytest.raises(typer.TyperException, match="No such option"):
        parse_fleetstream(["ingest", "--rule", "x.toml"])
    assert parse_fleetstream(["simulate", "--vehicles", "3"]).params["vehicles"] == 3


def test_simulator_publishes_to_the_compose_mosquitto(services: dict[str, dict[str, Any]]) -> None:
    ctx = parse_fleetstream(command_of(services["simulator"]))
    target = MqttTarget.parse(ctx.params["mqtt_url"])
    assert target.host in services
    assert ctx.params["output"] is None


# --- FLEETSTREAM_ variables are real settings fields with valid values ---------------------


def test_fleetstream_env_vars_are_real_settings_fields(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in fleetstream_services(services).items():
        command = command_of(service)[0]
        classes = SETTINGS_OF[command]
        known = ROOT_ENV | {
            f"{ENV_PREFIX}{field}".upper() for cls in classes for field in cls.model_fields
        }
        env = environment_of(service)
        unknown = {k for k in env if k.startswith(ENV_PREFIX)} - known
        assert not unknown, f"{name}: {sorted(unknown)} are not settings of `{command}`"
        for cls in classes:
            with monkeypatch.context() as m:
                for key in env:
                    m.setenv(key, env[key])
                cls()  # raises ValidationError on a bad value


def test_kafka_bootstrap_and_mqtt_host_point_at_compose_services(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in fleetstream_services(services).items():
        env = environment_of(service)
        if "FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS" in env:
            host, _, port = env["FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS"].partition(":")
            assert (host, port) == ("kafka", "9092"), name
        if "FLEETSTREAM_MQTT_HOST" in env:
            assert env["FLEETSTREAM_MQTT_HOST"] == "mosquitto", name
    ids = [
        environment_of(services[n])["FLEETSTREAM_MQTT_CLIENT_ID"] for n in ("ingest", "ingest-2")
    ]
    assert len(set(ids)) == 2, "every ingest process needs its own MQTT session"


# --- 3. Prometheus scrapes every metrics endpoint on the right port ------------------------


def prometheus_targets() -> list[tuple[str, str, int]]:
    """(job, compose service, port) of every scrape target."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text("utf-8"))
    out: list[tuple[str, str, int]] = []
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            out.extend((job["job_name"], host, int(sd["port"])) for host in sd["names"])
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                out.append((job["job_name"], host, int(port)))
    return out


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_metrics_endpoint(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = prometheus_targets()
    assert targets
    scraped = {(host, port) for _, host, port in targets}
    for _, host, _port in targets:
        assert host in services, f"Prometheus target {host} is not a compose service"
    metric_ports = {"ingest": "INGEST", "process": "PROCESSING", "archive": "ARCHIVE"}
    settings_of = {"INGEST": IngestSettings, "PROCESSING": ProcessingSettings}
    for name, service in fleetstream_services(services).items():
        kind = metric_ports.get(command_of(service)[0])
        if kind is None:
            continue
        env = environment_of(service)
        with monkeypatch.context() as m:
            for key in env:
                m.setenv(key, env[key])
            settings = settings_of.get(kind, ArchiveSettings)()
        port = getattr(settings, f"{kind.lower()}_metrics_port")
        host = getattr(settings, f"{kind.lower()}_metrics_host")
        assert port, f"{name}: metrics are switched off"
        assert host == "0.0.0.0", f"{name}: metrics bound to {host}, unreachable from Prometheus"  # noqa: S104
        assert (name, port) in scraped, f"{name}:{port} is not scraped"


# --- topics: explicit partitions, names from the code --------------------------------------


def topics_file() -> dict[str, int]:
    out = {}
    for line in (DEPLOY / "kafka" / "topics.txt").read_text("utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, partitions = line.split()
            out[name] = int(partitions)
    return out


def code_topics(rules_file: Path | None) -> set[str]:
    rules = load_rules(rules_file)
    topics = set()
    for rule in rules.mqtt_to_kafka:
        assert rule.topic.static, f"rule {rule.name}: templated topics cannot be pre-created"
        topics |= {rule.topic.text, rule.quarantine_topic}
    for command in rules.kafka_to_mqtt:
        topics |= {command.kafka, f"{command.kafka}.quarantine"}
    topics |= {*ProcessingSettings().topics(), DashboardSettings().dashboard_feedback_topic}
    return topics


def test_topic_init_creates_exactly_the_codes_topics(services: dict[str, dict[str, Any]]) -> None:
    topics = topics_file()
    assert set(topics) == code_topics(None) == code_topics(DEPLOY / "ingest" / "rules.toml")
    assert all(p >= 1 for p in topics.values())
    partitions = topics["vehicle-telemetry"]
    ingest_env = environment_of(services["ingest"])
    processing_env = environment_of(services["processing"])
    assert int(ingest_env["FLEETSTREAM_KAFKA_TOPIC_PARTITIONS"]) == partitions
    assert int(processing_env["FLEETSTREAM_PROCESSING_PARTITIONS"]) == partitions
    # Quix joins stats/alerts/sessions with the input by key: same partition counts.
    assert len(set(topics.values())) == 1
    mounts = " ".join(str(v) for v in services["topic-init"]["volumes"])
    assert "create-topics.sh" in mounts and "topics.txt" in mounts


def test_create_topics_script_is_valid_posix_sh() -> None:
    script = DEPLOY / "kafka" / "create-topics.sh"
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = script.read_text("utf-8")
    assert "--if-not-exists" in text and "--partitions" in text


# --- files mounted into third-party images --------------------------------------------------


def test_compose_rules_are_the_packaged_rules_on_a_shared_subscription() -> None:
    packaged = load_rules(None)
    compose_rules = load_rules(DEPLOY / "ingest" / "rules.toml")
    assert all(r.share_group == "ingest" for r in compose_rules.mqtt_to_kafka)
    assert [
        (r.name, r.mqtt, r.qos, r.adapter, r.topic, r.key, r.timestamp, r.value, r.headers)
        for r in compose_rules.mqtt_to_kafka
    ] == [
        (r.name, r.mqtt, r.qos, r.adapter, r.topic, r.key, r.timestamp, r.value, r.headers)
        for r in packaged.mqtt_to_kafka
    ]
    assert compose_rules.kafka_to_mqtt == packaged.kafka_to_mqtt


def mosquitto_directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text("utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out.setdefault(key, []).append(value)
    return out


def test_compose_mosquitto_keeps_the_local_stacks_tuning() -> None:
    template = mosquitto_directives(REPO / "fleetstream" / "infra" / "files" / "mosquitto.conf")
    compose_conf = mosquitto_directives(DEPLOY / "mosquitto" / "mosquitto.conf")
    # Container-specific on purpose: paths, the dropped `user`, the password listener.
    differs = {"listener", "protocol", "allow_anonymous", "password_file", "user"}
    differs |= {"persistence_location", "log_dest"}
    for key, values in template.items():
        if key not in differs:
            assert compose_conf.get(key) == values, f"mosquitto.conf drifted on {key}"
    assert compose_conf["listener"] == ["1883 0.0.0.0"]
    assert compose_conf["persistence_location"] == ["/mosquitto/data/"]


def test_kafka_is_a_kraft_single_node_with_a_valid_cluster_id(
    services: dict[str, dict[str, Any]],
) -> None:
    env = environment_of(services["kafka"])
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID: 16 bytes, base64"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1", key


# --- Grafana -----------------------------------------------------------------------------------


def test_grafana_provisioning_matches_the_mounts(services: dict[str, dict[str, Any]]) -> None:
    grafana = DEPLOY / "grafana"
    datasources = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yml").read_text())
    providers = yaml.safe_load((grafana / "provisioning/dashboards/fleetstream.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services["grafana"]["volumes"]}
    (provider,) = providers["providers"]
    dash_dir = provider["options"]["path"]
    assert Path(mounts[dash_dir]).resolve() == GRAFANA_DASHBOARD.parent
    assert Path(mounts["/etc/grafana/provisioning"]).resolve() == grafana / "provisioning"

    dashboard = json.loads(GRAFANA_DASHBOARD.read_text("utf-8"))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_covers_ingest_and_processing() -> None:
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text("utf-8"))
    names = set().union(*(promql_metric_names(e) for _, e in dashboard_expressions(dashboard)))
    for needed in (
        "fleetstream_ingest_received_total",
        "fleetstream_ingest_inflight",
        "fleetstream_ingest_quarantined_total",
        "fleetstream_ingest_ack_latency_seconds_bucket",
        "fleetstream_processing_records_in_total",
        "fleetstream_processing_consumer_lag",
        "fleetstream_processing_quarantined_total",
        "fleetstream_processing_alerts_total",
        "fleetstream_processing_window_close_latency_seconds_bucket",
        "fleetstream_archive_rows_total",
        "fleetstream_archive_oldest_buffered_seconds",
        "fleetstream_archive_kafka_errors_total",
    ):
        assert needed in names, f"dashboard shows no {needed}"


# Metric families a service exports that the board deliberately does not show, with why.
# Keep it short: whatever an operator needs during an incident belongs on the board. (The
# `_created` series of counters and histograms are not families: they never need an entry.)
NOT_ON_BOARD: dict[str, str] = {}

# The modules that build the services' Prometheus metrics (the dashboard exports none).
METRICS_MODULES = {"ingest/_metrics.py", "processing/metrics.py", "models/metrics.py"}
# prometheus_client names that define metrics: a module importing one is a metrics module.
_METRIC_API = {"CollectorRegistry", "Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
# Series names Prometheus stores per family type; a panel shows the family if it queries one.
_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "info": ("_info",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def service_registries() -> dict[str, CollectorRegistry]:
    """The registry each service's /metrics serves, built by the services' own classes."""
    rules = [r.name for r in load_rules(None).mqtt_to_kafka]
    return {
        "ingest": IngestMetrics(rules).registry,
        "processing": ProcessingMetrics().registry,
        "archive": ArchiveMetrics().registry,
    }


def exported_families() -> dict[str, tuple[str, ...]]:
    """Every exported metric family -> the series names a PromQL query can select."""
    out: dict[str, tuple[str, ...]] = {}
    for service, registry in service_registries().items():
        scraped = exported_metric_names(generate_latest(registry).decode())
        for family in registry.collect():
            assert family.type in _SERIES_SUFFIXES, f"{service}: {family.name} is {family.type}"
            series = tuple(family.name + s for s in _SERIES_SUFFIXES[family.type])
            # Guards the suffix table: these are the names Prometheus really scrapes.
            assert set(series) <= scraped, (service, series)
            out[family.name] = series
    return out


def families_missing_from(dashboard: dict[str, Any]) -> set[str]:
    """Exported families (not allow-listed) no PromQL expression of the board selects."""
    shown = set().union(*(promql_metric_names(e) for _, e in dashboard_expressions(dashboard)))
    return {
        name
        for name, series in exported_families().items()
        if name not in NOT_ON_BOARD and not shown.intersection(series)
    }


def test_metrics_modules_are_all_known() -> None:
    # A metrics module missing from service_registries() would escape the board check.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    modules = set()
    for path in (p for package in packages for p in (REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("prometheus_client")
                and {a.name for a in node.names} & _METRIC_API
            ):
                modules.add(path.relative_to(REPO).as_posix())
    assert modules == METRICS_MODULES


def test_dashboard_shows_every_exported_metric() -> None:
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text("utf-8"))
    missing = families_missing_from(dashboard)
    assert not missing, f"on no Grafana panel (add one, or to NOT_ON_BOARD): {sorted(missing)}"
    families = exported_families()
    for name in NOT_ON_BOARD:
        assert name in families, f"NOT_ON_BOARD lists {name}, which no service exports"


def test_board_check_notices_a_deleted_panel() -> None:
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text("utf-8"))
    dashboard["panels"] = [
        p for p in dashboard["panels"] if p.get("title") != "Command loop errors (Kafka -> MQTT)"
    ]
    assert families_missing_from(dashboard) == {
        "fleetstream_ingest_command_loop_crashes",
        "fleetstream_ingest_commands_commit_failed",
    }


def test_promql_metric_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, rule) (rate(a_seconds_bucket{rule="x",le!="1"}[5m])))'
        " / on (rule) group_left sum without (reason) (b_total offset 5m) > bool 0.5"
        ' or label_replace(up{job=~"f.*"}, "x", "$1", "job", "(.*)")'
    )
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "up"}
    # A typo is a name like any other: the live test then finds it is not exported.
    assert promql_metric_names("rate(fleetsteam_ingest_received_total[1m])") == {
        "fleetsteam_ingest_received_total"
    }


def test_exported_metric_names_expand_types() -> None:
    exposition = (
        '# TYPE a_total counter\n# TYPE h histogram\nh_bucket{le="1"} 0\n# TYPE g gauge\ng 1\n'
    )
    assert exported_metric_names(exposition) >= {"a_total", "a_created", "h_bucket", "h_sum", "g"}
    assert "a" not in exported_metric_names(exposition)


# --- 5. the Dockerfile, as far as it can be checked without an engine ------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text("utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            op, _, rest = line.strip().partition(" ")
            out.append((op.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_builds_a_small_non_root_image_from_the_lock() -> None:
    steps = dockerfile_instructions()
    stages = [rest for op, rest in steps if op == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    assert all(s.startswith("python:3.11-slim") for s in stages)
    runtime = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    runs = " ".join(rest for op, rest in steps if op == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    assert "--no-editable" in runs
    users = [rest for op, rest in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "runtime must not be root"
    assert ("ENTRYPOINT", '["fleetstream"]') in runtime
    # The runtime stage takes the virtualenv only, not the source tree or uv.
    copies = [rest for op, rest in runtime if op == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert not any(op == "RUN" and ("uv " in rest or "pip " in rest) for op, rest in runtime)
    assert not any(op == "ADD" for op, _ in steps)
    # The classic builder (docker-compose 1.29 without BuildKit) knows no RUN --mount.
    assert "--mount" not in runs


def test_dockerfile_copies_every_package_and_nothing_ignored() -> None:
    pyproject = (REPO / "pyproject.toml").read_text("utf-8")
    match = re.search(r"^packages = \[(.*?)\]", pyproject, re.MULTILINE)
    assert match
    packages = set(re.findall(r'"([^"]+)"', match.group(1)))
    copied = set()
    for op, rest in dockerfile_instructions():
        if op == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such file"
                copied.add(source)
    assert packages <= copied, f"packages not copied: {packages - copied}"
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".cache", ".run", ".env"} <= ignored
    assert not (copied & ignored), "the Dockerfile copies something .dockerignore excludes"


def test_image_entrypoint_and_ports_match_the_services(services: dict[str, dict[str, Any]]) -> None:
    steps = dockerfile_instructions()
    exposed = {int(p) for op, rest in steps if op == "EXPOSE" for p in rest.split()}
    assert {9464, 9465, 8501} <= exposed
    for name, service in fleetstream_services(services).items():
        build = service.get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert context and Path(str(context)).resolve() == REPO, f"{name} builds another image"
