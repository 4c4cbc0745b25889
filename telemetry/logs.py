"""Logging set-up shared by every fleetstream process."""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str | None = None) -> None:
    """Configure the root logger once per process.

    Args:
        level: A logging level name; defaults to ``$FLEETSTREAM_LOG_LEVEL`` or ``INFO``.
    """
    chosen = (level or os.environ.get("FLEETSTREAM_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=chosen, format=_FORMAT)
    # librdkafka and quixstreams are chatty at INFO; their warnings still show.
    for noisy in ("urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
