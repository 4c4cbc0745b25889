"""``python -m simulator``: the same as ``fleetstream simulate``."""

from fleetstream.cli import main

main("simulate")
