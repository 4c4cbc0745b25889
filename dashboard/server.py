"""Launch the Streamlit server on the dashboard app (``fleetstream dashboard``)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Final

from dashboard.settings import DashboardSettings
from telemetry.logs import configure_service_logging
from telemetry.settings import load_settings

_log = logging.getLogger("dashboard")
APP_PATH: Final = Path(__file__).with_name("app.py")


def streamlit_argv(host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line for the app on host:port, headless."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def main(host: str | None = None, port: int | None = None) -> int:
    """Replace this process with the Streamlit server; returns 2 on invalid settings."""
    if not configure_service_logging():
        return 2
    settings = load_settings(DashboardSettings, _log)
    if settings is None:
        return 2
    host = host or settings.dashboard_host
    port = port or settings.dashboard_port
    argv = streamlit_argv(host, port)
    _log.info("dashboard on http://%s:%d (Kafka %s)", host, port, settings.kafka_bootstrap_servers)
    # The app reads the same settings from the environment; the project root goes on the
    # path so `dashboard` imports when streamlit runs the file as a script.
    root = str(APP_PATH.parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
    }
    os.execve(argv[0], argv, env)  # noqa: S606 - our own interpreter running streamlit
    return 0  # pragma: no cover - execve does not return
