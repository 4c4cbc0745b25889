"""``python -m ingest``: the same as ``fleetstream ingest``."""

from fleetstream.cli import main

main("ingest")
