"""Process entry point of the ingest service."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ingest._rules import load_rules
from ingest._service import IngestService
from ingest._settings import IngestSettings
from ingest.errors import BackgroundTaskError, FatalConnectError, RulesError
from telemetry.gctune import tune_for_service
from telemetry.logs import configure_service_logging
from telemetry.settings import load_settings

_log = logging.getLogger("ingest")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_SOFTWARE = 70  # sysexits' EX_SOFTWARE: a bug stopped it; a supervisor restarts it


def main(rules_file: Path | None = None) -> int:
    """Run ingest until SIGTERM/SIGINT.

    Args:
        rules_file: Rules file overriding ``FLEETSTREAM_INGEST_RULES_FILE``.

    Returns:
        Process exit code: 0 after a graceful stop, 2 for configuration or credential errors,
        70 when a background task it cannot run without ended.
    """
    if not configure_service_logging():
        return EXIT_CONFIG
    settings = load_settings(IngestSettings, _log)
    if settings is None:
        return EXIT_CONFIG
    try:
        rules = load_rules(rules_file or settings.ingest_rules_file)
    except RulesError as exc:
        _log.error("invalid rules: %s", exc)
        return EXIT_CONFIG
    service = IngestService(settings, rules)
    tune_for_service()
    try:
        asyncio.run(service.run())
    except FatalConnectError as exc:
        _log.error("%s", exc)
        return EXIT_CONFIG
    except BackgroundTaskError as exc:
        _log.error("ingest stopped: %s", exc)
        return EXIT_SOFTWARE
    return EXIT_OK
