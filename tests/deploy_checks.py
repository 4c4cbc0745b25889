"""Helpers for the checks of the container stack (docker-compose.yml, deploy/).

There is no Docker engine on our machines or in CI, so the stack is validated piece by
piece with real tools: Debian's ``docker-compose`` resolves and validates the compose file
(``config`` needs no engine), ``promtool`` the Prometheus config, and the services' own
code (the typer app, the settings classes, live ``/metrics``) the rest.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
GRAFANA_DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fleetstream.json"
PROFILES = ("demo", "scale-ingest")
FLEETSTREAM_IMAGE = "fleetstream:local"


def require_tool(name: str) -> str:
    """Path of a validator installed by scripts/setup.sh; a missing one fails the test."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `bash scripts/setup.sh` (it installs docker-compose "
            "and promtool from Debian packages). Deploy checks never skip."
        )
    return path


def docker_compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    """Run Debian's docker-compose (v1.29) on ``file``; it needs no Docker engine for config."""
    exe = require_tool("docker-compose")
    return subprocess.run(
        [exe, "--project-directory", str(file.parent), "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COMPOSE_PROJECT_NAME": "fleetstream"},
    )


def resolved_compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, every profile on)."""
    profiles = [arg for p in PROFILES for arg in ("--profile", p)]
    result = docker_compose(*profiles, "config")
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    data = yaml.safe_load(result.stdout)
    assert isinstance(data, dict)
    return data


def command_of(service: dict[str, Any]) -> list[str]:
    """A service's command as an argument list (compose allows a string too)."""
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict of strings (compose allows a list too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


# PromQL words that look like identifiers but are not metric names.
_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan", "le"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (label matchers, functions, keywords removed).

    A small tokenizer rather than a PromQL parser: strings, ``{...}`` matchers, ``[...]``
    ranges and ``by (...)``-style label lists are removed, then every identifier that is
    not followed by ``(`` (a function call) and is not a keyword is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


def exported_metric_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition can contain.

    Families declared by ``# TYPE`` count even without samples yet (a labelled counter has
    no series before its first increment), expanded by their type's suffixes; sample lines
    add the names actually present.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.add(family)
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + suffix for suffix in _SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            out.extend(
                (str(panel.get("title", "")), str(t["expr"]))
                for t in panel.get("targets", [])
                if "expr" in t
            )
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return out
