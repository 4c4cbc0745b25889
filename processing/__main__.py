"""``python -m processing``: the same as ``fleetstream process``."""

from fleetstream.cli import main

main("process")
