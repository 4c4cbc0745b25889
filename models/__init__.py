"""Offline side: Parquet archive, datasets, detector training and the model registry."""

from pathlib import Path
from typing import Final

# The registry `fleetstream train` and `fleetstream models` use, and the demo's processing
# reads, unless told otherwise (relative to the working directory).
DEFAULT_REGISTRY: Final = Path("models/registry")
