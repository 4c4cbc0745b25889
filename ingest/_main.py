"""Process entry point of the ingest service."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

from pydantic import ValidationError

from ingest._rules import load_rules
from ingest._service import IngestService
from ingest._settings import IngestSettings
from ingest.errors import FatalConnectError, RulesError
from telemetry.logs import configure_logging

_log = logging.getLogger("ingest")

EXIT_OK = 0
EXIT_CONFIG = 2
# Every message allocates a few hundred container objects that die young (its decoded
# dict, tuples, closures) and form no cycles; with the default gen-0 threshold (700) the
# collector ran every few messages and every few thousand scanned the whole heap. Measured
# in the 100,000-message flood: 0.36-0.39 s of CPU per 10,000 messages instead of
# 0.39-0.50 s (docs/benchmarks.md).
_GC_THRESHOLDS = (50_000, 50, 100)


def main(rules_file: Path | None = None) -> int:
    """Run ingest until SIGTERM/SIGINT.

    Args:
        rules_file: Rules file overriding ``FLEETSTREAM_INGEST_RULES_FILE``.

    Returns:
        Process exit code: 0 after a graceful stop, 2 for configuration or credential errors.
    """
    configure_logging()
    try:
        settings = IngestSettings()
    except ValidationError as exc:
        _log.error("invalid settings: %s", exc)
        return EXIT_CONFIG
    try:
        rules = load_rules(rules_file or settings.ingest_rules_file)
    except RulesError as exc:
        _log.error("invalid rules: %s", exc)
        return EXIT_CONFIG
    service = IngestService(settings, rules)
    # What start-up allocated lives as long as the process: keep it out of collections.
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    try:
        asyncio.run(service.run())
    except FatalConnectError as exc:
        _log.error("%s", exc)
        return EXIT_CONFIG
    return EXIT_OK
