"""``python -m bench mqtt-source|naive ...``: one peer bridge for ``fleetstream bench ingest``."""

import sys

from bench._peers import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
