"""``python -m simulator``: the same as ``fleetstream simulate``."""

import sys

from fleetstream.cli import app

app(args=["simulate", *sys.argv[1:]])
