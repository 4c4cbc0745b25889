"""``python -m ingest``."""

import sys

from ingest import main

sys.exit(main())
