"""Load the promoted detector model and notice a newly promoted one without a restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import ModelError
from models.registry import (
    CURRENT,
    METADATA_FILE,
    MODEL_FILE,
    SHADOW,
    LoadedModel,
    current_version,
    load,
)

if TYPE_CHECKING:
    from processing.metrics import ProcessingMetrics

_log = logging.getLogger("processing.models")


class ModelWatcher:
    """Holds a model; re-reads a registry pointer (``current`` or ``shadow``) every few seconds.

    A version that fails to load (corrupt, untrusted types, incompatible, missing
    metadata) is refused with an error log and the previous model keeps running. A
    refused version is tried again when its folder or files change, or ``retry_s`` after
    the refusal: a pointer written before the version's folder was complete would
    otherwise be refused for good. A removed ``shadow`` pointer stops shadow scoring; a
    removed ``current`` pointer keeps the last model (deleting a pointer is not a
    deployment). A model trained on windows of another length than ``window_ms`` is
    refused like an incompatible one.
    """

    def __init__(
        self,
        root: Path | None,
        metrics: ProcessingMetrics,
        every_s: float = 5.0,
        pointer: str = CURRENT,
        *,
        retry_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        window_ms: int = 60_000,
    ) -> None:
        self._root = root
        self._window_ms = window_ms
        self._metrics = metrics
        self._pointer = pointer
        self._info = metrics.model_version if pointer == CURRENT else metrics.shadow_version
        self._every_s = every_s
        self._retry_s = retry_s
        self._clock = clock
        self._checked: float | None = None
        self._model: LoadedModel | None = None
        # (version, _signature() of its folder, time of the refusal)
        self._refused: tuple[str, tuple[int, ...], float] | None = None
        self._failed: set[str] = set()  # versions whose scoring raised (logged once)
        self._pointer_error: str | None = None  # the unreadable pointer's, logged once
        self.current()

    def current(self) -> LoadedModel | None:
        """The active model (None: rules only)."""
        if self._root is None:
            return None
        now = self._clock()
        if self._checked is not None and now - self._checked < self._every_s:
            return self._model
        self._checked = now
        active = self._model.version if self._model else None
        try:
            version = current_version(self._root, self._pointer)
        except ModelError as exc:
            # Checked every few seconds: logged and counted once until the pointer changes.
            if str(exc) != self._pointer_error:
                self._pointer_error = str(exc)
                _log.error("keeping %s: %s", active or "the rules", exc)
                self._metrics.models_refused.inc()
            return self._model
        self._pointer_error = None
        if version is None and self._pointer == SHADOW and self._model is not None:
            _log.info("shadow model %s removed", active)
            self._model = None
            self._info.info({"version": ""})
            return None
        if (
            version is None
            or version == active
            or self._still_refused(version, self._root / version, now)
        ):
            return self._model
        try:
            model = load(self._root / version, window_ms=self._window_ms)
        except ModelError as exc:
            self._refused = (version, _signature(self._root / version), now)
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
        self._refused = None
        self._info.info({"version": model.version})
        _log.info("%s model %s active (was %s)", self._pointer, model.version, active or "none")
        return model

    def _still_refused(self, version: str, folder: Path, now: float) -> bool:
        """Whether ``version`` was refused and nothing suggests trying it again yet."""
        if self._refused is None or self._refused[0] != version:
            return False
        _, signature, refused_at = self._refused
        changed = _signature(folder) != signature
        return not changed and now - refused_at < self._retry_s

    def scoring_failed(self, model: LoadedModel, exc: Exception) -> None:
        """Count (and log once per version) a window the model could not score."""
        self._metrics.model_errors.labels(pointer=self._pointer).inc()
        if model.version in self._failed:
            _log.debug(
                "%s model %s failed to score a window: %r", self._pointer, model.version, exc
            )
            return
        self._failed.add(model.version)
        _log.error(
            "%s model %s failed to score a window (%r); such windows get the rules only, "
            "counted in fleetstream_processing_model_errors",
            self._pointer,
            model.version,
            exc,
        )


def _signature(folder: Path) -> tuple[int, ...]:
    """Modification times and sizes of a version folder and its files (-1: missing)."""
    out: list[int] = []
    for path in (folder, folder / MODEL_FILE, folder / METADATA_FILE):
        try:
            stat = path.stat()
        except OSError:
            out += [-1, -1]
        else:
            out += [stat.st_mtime_ns, stat.st_size]
    return tuple(out)
