"""Versioned model artifacts saved with skops (never pickle) and a ``current`` pointer.

Layout of a registry folder::

    <root>/<version>/model.skops      the estimator (skops format)
    <root>/<version>/metadata.json    version, created_at, features, threshold, versions
    <root>/current                    the promoted version's name
    <root>/shadow                     a candidate scored alongside (optional)
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import platform
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import orjson

from models._fastscore import RowScorer, row_scorer
from models.errors import ModelError

# Types a detector artifact may contain beyond skops' defaults. Anything else is refused.
TRUSTED_TYPES: Final = [
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]
MODEL_FILE: Final = "model.skops"
METADATA_FILE: Final = "metadata.json"
CURRENT: Final = "current"
SHADOW: Final = "shadow"
# Promotions and unsets of one registry take turns on it (not a version: no model file).
LOCK_FILE: Final = ".lock"
POINTERS: Final = (CURRENT, SHADOW)
_log = logging.getLogger("models.registry")
# The window length of artifacts saved before their metadata named it.
DEFAULT_WINDOW_MS: Final = 60_000


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """An estimator with its metadata."""

    version: str
    estimator: Any
    metadata: dict[str, Any]
    _one: RowScorer | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_one", row_scorer(self.estimator, self.metadata.get("score", "")))

    @property
    def features(self) -> list[str]:
        """Feature names in the order the estimator expects."""
        return list(self.metadata["features"])

    @property
    def threshold(self) -> float:
        """Anomaly scores at or above this are anomalous."""
        return float(self.metadata["threshold"])

    def scores(self, rows: Any) -> Any:
        """Anomaly scores of feature rows (higher = more anomalous), as a numpy array.

        ``metadata["score"]`` says how: ``neg_score_samples`` for outlier detectors
        (IsolationForest), ``proba`` for classifiers (probability of the anomaly class).
        """
        if self.metadata["score"] == "proba":
            return self.estimator.predict_proba(rows)[:, 1]
        return -self.estimator.score_samples(rows)

    def score_one(self, row: Sequence[float]) -> float:
        """The anomaly score of one feature row: ``scores([row])[0]``, without numpy.

        The pipeline scores one window at a time; through scikit-learn that costs 0.2 to
        3.5 ms a row, through the plain-Python walkers of :mod:`models._fastscore` 1 to 40 µs.
        Rows with None, NaN or infinity, and estimators without a walker, go through
        scikit-learn.

        Args:
            row: Feature values in the order of :attr:`features`.

        Returns:
            The score; at or above :attr:`threshold` is anomalous.
        """
        if self._one is not None and _finite(row):
            return self._one(row)
        return float(self.scores([row])[0])


def _finite(row: Sequence[float]) -> bool:
    """Whether every value is a finite number (None and NaN are not)."""
    try:
        return all(map(math.isfinite, row))
    except TypeError:
        return False


def _serialisation() -> tuple[ModuleType, ModuleType, ModuleType]:
    """scikit-learn, skops and skops.io, imported on first use.

    Importing them took ~3 s of processing's 5 s start on the slow VM, and a pipeline
    without a model (or until one is promoted) never needs them.
    """
    import sklearn  # noqa: PLC0415 - see the docstring
    import skops  # noqa: PLC0415
    import skops.io as sio  # noqa: PLC0415

    return sklearn, skops, sio


def new_version() -> str:
    """A sortable version name from the current UTC time."""
    return datetime.now(UTC).strftime("v%Y%m%dT%H%M%S%fZ")


def save(estimator: Any, metadata: dict[str, Any], root: Path, version: str | None = None) -> Path:
    """Write a new version folder; returns it. Does not promote it."""
    version = version or new_version()
    folder = root / version
    folder.mkdir(parents=True, exist_ok=False)
    sklearn, skops, sio = _serialisation()
    sio.dump(estimator, folder / MODEL_FILE)
    meta = {
        **metadata,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(),
        "library_versions": {
            "scikit-learn": sklearn.__version__,
            "skops": skops.__version__,
            "python": platform.python_version(),
        },
    }
    (folder / METADATA_FILE).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return folder


def promote(root: Path, version: str, pointer: str = CURRENT) -> None:
    """Point ``pointer`` (``current`` or ``shadow``) at ``version`` atomically.

    A running pipeline re-reads the pointer every few seconds and loads that version.
    Promotions and :func:`unset` of one registry take turns (an exclusive ``flock`` on its
    ``.lock`` file), each writing its own temporary file: two promotes at once shared
    ``.current.tmp``, and the second one's rename failed with ``FileNotFoundError``.

    Raises:
        ModelError: The version does not load (it is never pointed at), or the pointer
            cannot be written.
    """
    _check_pointer(pointer)
    if not _is_version_name(version) or version != version.strip():
        # The pipeline would refuse the pointer (e.g. an absolute path, which load() here
        # took): nothing would be deployed, only errors logged every minute.
        msg = (
            f"{version[:200]!r} is not the name of a version folder in {root}; "
            f"give the folder's name (as `fleetstream models list` prints it), not a path"
        )
        raise ModelError(msg)
    with _locked(root, f"write the {pointer} pointer"):
        load(root / version)  # refuse to promote something that would not load
        tmp = root / f".{pointer}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with tmp.open("x", encoding="utf-8") as out:
                out.write(version + "\n")
            os.replace(tmp, root / pointer)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            msg = f"cannot write the {pointer} pointer {root / pointer}: {exc}"
            raise ModelError(msg) from exc


def unset(root: Path, pointer: str) -> None:
    """Remove a pointer (``shadow``: stop shadow scoring).

    Raises:
        ModelError: The pointer cannot be removed.
    """
    _check_pointer(pointer)
    if not root.is_dir():
        return  # no registry, no pointer
    with _locked(root, f"remove the {pointer} pointer"):
        try:
            (root / pointer).unlink(missing_ok=True)
        except OSError as exc:
            msg = f"cannot remove the {pointer} pointer {root / pointer}: {exc}"
            raise ModelError(msg) from exc


@contextmanager
def _locked(root: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the registry's lock file (released when its fd closes).

    A file opened for writing, not the folder: on NFS, Linux turns ``flock`` into a POSIX
    lock, and an exclusive one needs a writable descriptor.

    Raises:
        ModelError: The lock file cannot be opened or locked.
    """
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        msg = f"cannot {what}: registry lock {root / LOCK_FILE} cannot be opened: {exc}"
        raise ModelError(msg) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            msg = f"cannot {what}: registry {root} cannot be locked: {exc}"
            raise ModelError(msg) from exc
        yield
    finally:
        os.close(fd)


def _check_pointer(pointer: str) -> None:
    if pointer not in POINTERS:
        msg = f"unknown pointer {pointer!r}; expected one of {', '.join(POINTERS)}"
        raise ModelError(msg)


def current_version(root: Path, pointer: str = CURRENT) -> str | None:
    """The version a pointer names, or None.

    Raises:
        ModelError: The pointer cannot be read, or names no folder of the registry.
    """
    path = root / pointer
    try:
        version = path.read_text("utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        # A folder, no permission, not UTF-8: the pipeline crashed at every window close.
        msg = f"cannot read the {pointer} pointer {path}: {exc}"
        raise ModelError(msg) from exc
    if version and not _is_version_name(version):
        msg = f"the {pointer} pointer {path} names {version[:80]!r}, not a version folder"
        raise ModelError(msg)
    return version or None


def _is_version_name(version: str) -> bool:
    """Whether ``version`` can name a folder of the registry (what a pointer may hold)."""
    separators = any(c in version for c in "/\\\x00\n")
    return bool(version) and not separators and version not in {".", ".."}


def list_versions(root: Path) -> list[str]:
    """All version folders, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MODEL_FILE).is_file())


def load(folder: Path, window_ms: int | None = None) -> LoadedModel:
    """Load one version, refusing artifacts with types outside :data:`TRUSTED_TYPES`.

    Args:
        folder: The version folder.
        window_ms: The loader's window length: a model trained on windows of another
            length (metadata ``window_ms``; 60 s for artifacts without it) is refused,
            its features would not mean what they meant in training. None: not checked.

    Raises:
        ModelError: Missing, corrupt, untrusted or incompatible artifact.
    """
    model_file = folder / MODEL_FILE
    _sklearn, _skops, sio = _serialisation()
    try:
        metadata = orjson.loads((folder / METADATA_FILE).read_bytes())
        untrusted = sio.get_untrusted_types(file=model_file)
    except Exception as exc:  # a broken zip or schema raises many types; all mean unreadable
        msg = f"cannot read model artifact {folder}: {exc}"
        raise ModelError(msg) from exc
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unexpected:
        msg = f"model artifact {folder} contains untrusted types {unexpected}; refusing to load it"
        raise ModelError(msg)
    try:
        estimator = sio.load(model_file, trusted=TRUSTED_TYPES)
    except Exception as exc:  # any deserialisation failure means corrupt
        msg = f"model artifact {folder} is corrupt: {exc}"
        raise ModelError(msg) from exc
    if not isinstance(metadata, dict):
        msg = f"model artifact {folder} has metadata that is not a JSON object"
        raise ModelError(msg)
    for key in ("features", "threshold", "score"):
        if key not in metadata:
            msg = f"model artifact {folder} lacks metadata '{key}'"
            raise ModelError(msg)
    _check_compatible(folder, metadata, estimator)
    trained_ms = metadata.get("window_ms", DEFAULT_WINDOW_MS)
    if isinstance(trained_ms, bool) or not isinstance(trained_ms, int) or trained_ms <= 0:
        msg = f"model artifact {folder} is incompatible: window_ms {trained_ms!r} is not a length"
        raise ModelError(msg)
    if window_ms is not None and trained_ms != window_ms:
        msg = (
            f"model artifact {folder} was trained on {trained_ms / 1000:g} s windows, not "
            f"the {window_ms / 1000:g} s windows scored here (FLEETSTREAM_PROCESSING_WINDOW_S); "
            f"train it again with --window-s {window_ms / 1000:g}"
        )
        raise ModelError(msg)
    # The folder's name is the version, as pointers name it: a folder copied or renamed
    # (promoted from staging under a release name) kept its metadata's version, which
    # never equalled the pointer, and the pipeline loaded it again every 5 s.
    version = folder.name or folder.resolve().name
    if metadata.get("version", version) != version:
        _log.warning(
            "model artifact %s says it is version %r; it is version %r, its folder's name",
            folder,
            metadata["version"],
            version,
        )
    return LoadedModel(version, estimator, metadata)


def _check_compatible(folder: Path, metadata: dict[str, Any], estimator: Any) -> None:
    """Refuse artifacts this pipeline cannot score (unknown features or score method)."""
    # Imported here: the processing package imports this module while it initialises.
    from processing.stats import WINDOW_FEATURES  # noqa: PLC0415

    # Checked here, not at scoring: a threshold of null passed promote and then raised in
    # every window the pipeline scored, stopping the app again after each restart.
    bad = f"model artifact {folder} is incompatible"
    features, threshold = metadata["features"], metadata["threshold"]
    if (
        not isinstance(features, list)
        or not features
        or not all(isinstance(name, str) for name in features)
    ):
        msg = f"{bad}: features {features!r} is not a non-empty list of names"
        raise ModelError(msg)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
    ):
        msg = f"{bad}: threshold {threshold!r} is not a finite number"
        raise ModelError(msg)
    unknown = sorted(set(metadata["features"]) - set(WINDOW_FEATURES))
    if unknown or not metadata["features"]:
        msg = (
            f"model artifact {folder} is incompatible: features {unknown or '[]'} are not "
            f"computed by this pipeline (it computes {list(WINDOW_FEATURES)})"
        )
        raise ModelError(msg)
    method = metadata["score"]
    methods = {"neg_score_samples": "score_samples", "proba": "predict_proba"}
    needs = methods.get(method) if isinstance(method, str) else None
    if needs is None or not hasattr(estimator, needs):
        msg = f"model artifact {folder} is incompatible: score method {method!r} is not usable"
        raise ModelError(msg)
    n_in = getattr(estimator, "n_features_in_", len(metadata["features"]))
    if n_in != len(metadata["features"]):
        msg = (
            f"model artifact {folder} is incompatible: the estimator expects {n_in} "
            f"features, metadata lists {len(metadata['features'])}"
        )
        raise ModelError(msg)


def load_current(root: Path) -> LoadedModel | None:
    """Load the promoted version, or None when nothing is promoted."""
    version = current_version(root)
    return None if version is None else load(root / version)
