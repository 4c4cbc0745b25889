"""``python -m fleetstream``."""

from fleetstream.cli import main

main()
