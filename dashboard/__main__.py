"""``python -m dashboard``: the same as ``fleetstream dashboard``."""

from fleetstream.cli import main

main("dashboard")
