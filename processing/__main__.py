"""``python -m processing``."""

import sys

from processing import main

sys.exit(main())
