"""skops registry: save, promote, load; tampered or corrupt artifacts are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from models.errors import ModelError
from models.registry import (
    METADATA_FILE,
    MODEL_FILE,
    SHADOW,
    current_version,
    list_versions,
    load,
    load_current,
    promote,
    save,
    unset,
)
from tests.unit.models_builders import META, forest

pytestmark = pytest.mark.unit


class Sneaky:
    """A callable class from outside the trusted list."""

    def __call__(self, x: object) -> object:
        return x


def test_save_promote_load_round_trip(tmp_path: Path) -> None:
    folder = save(forest(), META, tmp_path, version="v1")
    assert list_versions(tmp_path) == ["v1"]
    assert load_current(tmp_path) is None
    promote(tmp_path, "v1")
    assert current_version(tmp_path) == "v1"
    model = load_current(tmp_path)
    assert model is not None
    assert model.version == "v1"
    assert model.features == META["features"]
    assert model.threshold == 0.6
    assert "scikit-learn" in model.metadata["library_versions"]
    score = model.scores([[0.5, 0.5]])
    assert score.shape == (1,)
    assert score[0] == pytest.approx(-model.estimator.score_samples([[0.5, 0.5]])[0])
    assert (folder / MODEL_FILE).is_file()


def test_artifact_with_untrusted_types_is_refused(tmp_path: Path) -> None:
    folder = save(forest(), META, tmp_path, version="v1")
    # Replace the estimator by one carrying a type nobody vetted (it could run any code).
    sio.dump(make_pipeline(FunctionTransformer(Sneaky()), forest()), folder / MODEL_FILE)
    with pytest.raises(ModelError, match="untrusted types"):
        load(folder)
    with pytest.raises(ModelError):
        promote(tmp_path, "v1")
    assert current_version(tmp_path) is None


def test_corrupt_artifact_is_refused(tmp_path: Path) -> None:
    folder = save(forest(), META, tmp_path, version="v1")
    (folder / MODEL_FILE).write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match=r"cannot read|corrupt"):
        load(folder)


def test_truncated_zip_is_refused(tmp_path: Path) -> None:
    folder = save(forest(), META, tmp_path, version="v1")
    with zipfile.ZipFile(folder / MODEL_FILE, "w") as broken:
        broken.writestr("schema.json", "{}")
    with pytest.raises(ModelError):
        load(folder)


def test_missing_metadata_is_refused(tmp_path: Path) -> None:
    folder = save(forest(), {"features": ["a"]}, tmp_path, version="v1")
    with pytest.raises(ModelError, match="threshold"):
        load(folder)


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({**META, "features": ["consumption_ratio", "tyre_colour"]}, "tyre_colour"),
        ({**META, "score": "proba"}, "score method 'proba'"),
        ({**META, "score": "vibes"}, "score method 'vibes'"),
        ({**META, "features": ["consumption_ratio"]}, "expects 2 features"),
    ],
)
def test_incompatible_artifact_is_refused(
    tmp_path: Path, metadata: dict[str, object], match: str
) -> None:
    folder = save(forest(), metadata, tmp_path, version="v1")
    with pytest.raises(ModelError, match=match):
        load(folder)


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({**META, "threshold": None}, "threshold None is not a finite number"),
        ({**META, "threshold": "0.6"}, "threshold '0.6'"),
        ({**META, "threshold": True}, "threshold True"),
        ({**META, "threshold": [0.6]}, "threshold"),
        ({**META, "features": "consumption_ratio"}, "not a non-empty list of names"),
        ({**META, "features": []}, "not a non-empty list of names"),
        ({**META, "features": [1, 2]}, "not a non-empty list of names"),
        ({**META, "features": {"consumption_ratio": 1}}, "not a non-empty list of names"),
        ({**META, "score": ["neg_score_samples"]}, "score method"),
    ],
)
def test_metadata_the_pipeline_cannot_score_with_is_refused_at_load_and_promote(
    tmp_path: Path, metadata: dict[str, object], match: str
) -> None:
    # A null threshold passed load and promote, then raised in every scored window.
    save(forest(), metadata, tmp_path, version="v1")
    with pytest.raises(ModelError, match=match):
        load(tmp_path / "v1")
    with pytest.raises(ModelError):
        promote(tmp_path, "v1")
    assert current_version(tmp_path) is None


def test_metadata_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    folder = save(forest(), META, tmp_path, version="v1")
    (folder / METADATA_FILE).write_bytes(b'["features", "threshold", "score"]')
    with pytest.raises(ModelError, match="not a JSON object"):
        load(folder)


def test_an_integer_threshold_is_a_number(tmp_path: Path) -> None:
    save(forest(), {**META, "threshold": 1}, tmp_path, version="v1")
    assert load(tmp_path / "v1").threshold == 1.0


def test_boosted_trees_are_trusted_and_score_as_probabilities(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.random((200, 4))
    y = x[:, 0] > 0.7
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(x, y)
    features = ["consumption_ratio", "avg_speed_kmh", "avg_outside_temp_c", "distance_km"]
    save(model, {"features": features, "threshold": 0.5, "score": "proba"}, tmp_path, "v1")
    loaded = load(tmp_path / "v1")
    assert loaded.scores([[0.9, 0.1, 0.1, 0.1]])[0] > 0.5 > loaded.scores([[0.1, 0.1, 0.1, 0.1]])[0]


def test_shadow_pointer_is_separate_and_can_be_cleared(tmp_path: Path) -> None:
    save(forest(), META, tmp_path, version="v1")
    save(forest(), META, tmp_path, version="v2")
    promote(tmp_path, "v1")
    promote(tmp_path, "v2", SHADOW)
    assert (current_version(tmp_path), current_version(tmp_path, SHADOW)) == ("v1", "v2")
    unset(tmp_path, SHADOW)
    assert (current_version(tmp_path), current_version(tmp_path, SHADOW)) == ("v1", None)
    with pytest.raises(ModelError, match="unknown pointer"):
        promote(tmp_path, "v1", "../escape")


def test_processing_starts_without_importing_scikit_learn() -> None:
    # scikit-learn and skops took ~3 s of processing's 5 s start; they load with a model.
    code = "import sys, processing._main; print(sorted({'sklearn', 'skops'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_load_checks_the_window_length_the_model_was_trained_on(tmp_path: Path) -> None:
    old = save(forest(5), META, tmp_path, version="vold")  # before window_ms was saved
    assert load(old).version == "vold"
    assert load(old, window_ms=60_000).version == "vold"
    with pytest.raises(ModelError, match="trained on 60 s windows"):
        load(old, window_ms=300_000)
    five = save(forest(5), {**META, "window_ms": 300_000}, tmp_path, version="v5")
    assert load(five, window_ms=300_000).metadata["window_ms"] == 300_000
    with pytest.raises(ModelError, match="trained on 300 s windows"):
        load(five, window_ms=60_000)
    bad = save(forest(5), {**META, "window_ms": "60"}, tmp_path, version="vbad")
    with pytest.raises(ModelError, match="window_ms"):
        load(bad)


def test_concurrent_promotes_take_turns_and_never_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both wrote ".current.tmp": the first rename moved the other's file, the second
    # raised FileNotFoundError (not a ModelError, so the CLI printed a traceback).
    for version in ("va", "vb", "vc"):
        save(forest(5), META, tmp_path, version=version)
    real_replace = os.replace
    inside: list[int] = []
    overlaps: list[int] = []

    def slow_replace(src: Any, dst: Any) -> None:
        inside.append(1)
        overlaps.append(len(inside))
        time.sleep(0.1)
        real_replace(src, dst)
        inside.pop()

    monkeypatch.setattr(os, "replace", slow_replace)  # the module registry calls
    errors: list[BaseException] = []

    def run(version: str) -> None:
        try:
            promote(tmp_path, version)
        except BaseException as exc:  # noqa: BLE001 - any escape fails the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in ("va", "vb", "vc")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert max(overlaps) == 1  # one at a time
    assert current_version(tmp_path) in {"va", "vb", "vc"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_registry_lock_is_taken_on_a_writable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On NFS, flock becomes a POSIX lock, and an exclusive one needs a writable fd: the
    # folder opened read-only made every promote on a shared registry fail there.
    import fcntl  # noqa: PLC0415 - patched here only

    save(forest(5), META, tmp_path, version="v1")
    modes: list[int] = []
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        modes.append(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    promote(tmp_path, "v1")
    unset(tmp_path, SHADOW)
    assert modes == [os.O_RDWR, os.O_RDWR]
    assert list_versions(tmp_path) == ["v1"]  # the lock file is not a version


def test_a_pointer_that_cannot_be_written_or_removed_is_a_model_error(tmp_path: Path) -> None:
    save(forest(5), META, tmp_path, version="v1")
    (tmp_path / SHADOW / "x").mkdir(parents=True)  # a folder where the pointer goes
    with pytest.raises(ModelError, match="cannot write the shadow pointer"):
        promote(tmp_path, "v1", SHADOW)
    with pytest.raises(ModelError, match="cannot remove the shadow pointer"):
        unset(tmp_path, SHADOW)
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ModelError):
        promote(tmp_path / "missing", "v1")


@pytest.mark.parametrize("name", ["absolute", "relative", "up", "dot", "space", "empty"])
def test_promote_refuses_what_the_pipeline_would_refuse_to_read(tmp_path: Path, name: str) -> None:
    # `fleetstream models promote $PWD/models/registry/v...` loaded the version through
    # the path and wrote it into the pointer, which the pipeline then refused every minute.
    folder = save(forest(5), META, tmp_path / "registry", version="v1")
    root = folder.parent
    version = {
        "absolute": str(folder.resolve()),
        "relative": f"{root.name}/../{root.name}/v1",
        "up": "..",
        "dot": ".",
        "space": " v1",
        "empty": "",
    }[name]
    with pytest.raises(ModelError, match="not the name of a version folder"):
        promote(root, version)
    assert current_version(root) is None
    promote(root, "v1")
    assert current_version(root) == "v1"
