"""Load the promoted detector model and notice a newly promoted one without a restart."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import ModelError
from models.registry import CURRENT, SHADOW, LoadedModel, current_version, load

if TYPE_CHECKING:
    from processing.metrics import ProcessingMetrics

_log = logging.getLogger("processing.models")


class ModelWatcher:
    """Holds a model; re-reads a registry pointer (``current`` or ``shadow``) every few seconds.

    A version that fails to load (corrupt, untrusted types, incompatible, missing
    metadata) is refused with an error log and the previous model keeps running. A
    removed ``shadow`` pointer stops shadow scoring; a removed ``current`` pointer keeps
    the last model (deleting a pointer is not a deployment).
    """

    def __init__(
        self,
        root: Path | None,
        metrics: ProcessingMetrics,
        every_s: float = 5.0,
        pointer: str = CURRENT,
    ) -> None:
        self._root = root
        self._metrics = metrics
        self._pointer = pointer
        self._info = metrics.model_version if pointer == CURRENT else metrics.shadow_version
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
        version = current_version(self._root, self._pointer)
        active = self._model.version if self._model else None
        if version is None and self._pointer == SHADOW and self._model is not None:
            _log.info("shadow model %s removed", active)
            self._model = None
            self._info.info({"version": ""})
            return None
        if version is None or version in (active, self._refused):
            return self._model
        try:
            model = load(self._root / version)
        except ModelError as exc:
            self._refused = version
            _log.error(
                "refusing %s model %s, keeping %s: %s",
                self._pointer,
                version,
                active or "the rules",
                exc,
            )
            self._metrics.models_refused.inc()
            return self._model
        self._model = model
        self._info.info({"version": model.version})
        _log.info("%s model %s active (was %s)", self._pointer, model.version, active or "none")
        return model
