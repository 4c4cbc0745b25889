"""Logging set-up shared by every fleetstream process."""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Spellings the logging module accepts too (WARN, FATAL, NOTSET).
_ALIASES = ("WARN", "FATAL", "NOTSET")


def configure_logging(level: str | None = None) -> None:
    """Configure the root logger once per process.

    Args:
        level: A logging level name; defaults to ``$FLEETSTREAM_LOG_LEVEL`` or ``INFO``.

    Raises:
        ValueError: The level is not a logging level name (the message lists the valid ones).
    """
    chosen = (level or os.environ.get("FLEETSTREAM_LOG_LEVEL") or "INFO").strip().upper()
    if chosen not in LEVELS + _ALIASES:
        msg = f"FLEETSTREAM_LOG_LEVEL must be one of {', '.join(LEVELS)}, not {chosen!r}"
        raise ValueError(msg)
    logging.basicConfig(level=chosen, format=_FORMAT)
    # librdkafka and quixstreams are chatty at INFO; their warnings still show.
    for noisy in ("urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_service_logging() -> bool:
    """:func:`configure_logging` for a service's ``main()``.

    Returns:
        False, after logging why at the default level, when ``FLEETSTREAM_LOG_LEVEL`` is
        invalid: the service then exits with code 2 instead of a traceback.
    """
    try:
        configure_logging()
    except ValueError as exc:
        why = str(exc)
    else:
        return True
    configure_logging("INFO")
    logging.getLogger("fleetstream").error("%s", why)
    return False
