"""Load the promoted detector model and notice a newly promoted one without a restart."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import ModelError
from models.registry import LoadedModel, current_version, load

if TYPE_CHECKING:
    from processing.metrics import ProcessingMetrics

_log = logging.getLogger("processing.models")


class ModelWatcher:
    """Holds the active model; re-reads the registry's ``current`` pointer every few seconds.

    A version that fails to load (corrupt, untrusted types, missing metadata) is refused
    with an error log and the previous model keeps running.
    """

    def __init__(self, root: Path | None, metrics: ProcessingMetrics, every_s: float = 5.0) -> None:
        self._root = root
        self._metrics = metrics
        self._every_s = every_s
        self._checked = 0.0
        self._model: LoadedModel | None = None
        self._refused: str | None = None
        self.current()

    def current(self) -> LoadedModel | None:
        """The active model (None: rules only)."""
        if self._root is None:
            return None
        now = time.monotonic()
        if now - self._checked < self._every_s:
            return self._model
        self._checked = now
        version = current_version(self._root)
        active = self._model.version if self._model else None
        if version is None or version in (active, self._refused):
            return self._model
        try:
            model = load(self._root / version)
        except ModelError as exc:
            self._refused = version
            _log.error("refusing model %s, keeping %s: %s", version, active or "the rules", exc)
            return self._model
        self._model = model
        self._metrics.model_version.info({"version": model.version})
        _log.info("model %s active (was %s)", model.version, active or "rules only")
        return model
