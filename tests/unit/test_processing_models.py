"""ModelWatcher: a refused version is tried again; a model that fails to score stops nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import processing.models as watched
from models.registry import CURRENT, LoadedModel, load, save
from processing.metrics import ProcessingMetrics
from processing.models import ModelWatcher
from tests.unit.models_builders import META, forest

pytestmark = pytest.mark.unit


def _point(root: Path, version: str) -> None:
    # Written by hand, as a deployment that copies the pointer before the folder would.
    (root / CURRENT).write_text(version + "\n", "utf-8")


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_version_refused_before_its_folder_arrived_is_loaded_when_it_does(
    tmp_path: Path,
) -> None:
    staging = tmp_path / "staging"
    root = tmp_path / "registry"
    root.mkdir()
    save(forest(5), META, staging, version="v1")
    _point(root, "v1")  # the pointer arrives first
    clock = Clock()
    metrics = ProcessingMetrics()
    watcher = ModelWatcher(root, metrics, every_s=5.0, clock=clock)
    assert watcher.current() is None
    assert metrics.registry.get_sample_value("fleetstream_processing_models_refused_total") == 1
    shutil.copytree(staging / "v1", root / "v1")  # then the folder
    clock.now += 5.0
    model = watcher.current()
    assert model is not None
    assert model.version == "v1"


def test_a_refused_version_is_tried_again_after_the_retry_interval(tmp_path: Path) -> None:
    folder = save(forest(5), {**META, "threshold": None}, tmp_path, version="v1")
    _point(tmp_path, "v1")
    clock = Clock()
    metrics = ProcessingMetrics()
    watcher = ModelWatcher(tmp_path, metrics, every_s=5.0, retry_s=60.0, clock=clock)
    assert watcher.current() is None
    # Fixed in place without changing the folder's times or sizes as we observe them.
    metadata = (folder / "metadata.json").read_bytes().replace(b"null", b"0.7")
    stat = (folder / "metadata.json").stat()
    (folder / "metadata.json").write_bytes(metadata.ljust(stat.st_size))
    os.utime(folder / "metadata.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    clock.now += 10.0
    assert watcher.current() is None  # not yet: same signature, within retry_s
    refused = "fleetstream_processing_models_refused_total"
    assert metrics.registry.get_sample_value(refused) == 1
    clock.now += 60.0
    model = watcher.current()
    assert model is not None
    assert model.threshold == 0.7


def test_a_model_that_fails_to_score_is_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save(forest(5), META, tmp_path, version="v1")
    _point(tmp_path, "v1")
    metrics = ProcessingMetrics()
    watcher = ModelWatcher(tmp_path, metrics)
    model = watcher.current()
    assert isinstance(model, LoadedModel)
    for _ in range(3):
        watcher.scoring_failed(model, ValueError("boom"))
    errors = "fleetstream_processing_model_errors_total"
    assert metrics.registry.get_sample_value(errors, {"pointer": "current"}) == 3
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1


@pytest.mark.parametrize(
    "pointer", [b"v1\x00x\n", b"v\xe91\n", b"../v1\n", None], ids=["nul", "latin1", "up", "dir"]
)
def test_an_unreadable_pointer_keeps_the_model_and_is_counted_once(
    tmp_path: Path, pointer: bytes | None
) -> None:
    # Each raised from current() (IsADirectoryError, UnicodeDecodeError, ValueError): the
    # app crashed at start and at every window close.
    save(forest(5), META, tmp_path, version="v1")
    _point(tmp_path, "v1")
    clock = Clock()
    metrics = ProcessingMetrics()
    watcher = ModelWatcher(tmp_path, metrics, every_s=5.0, clock=clock)
    assert watcher.current() is not None
    (tmp_path / CURRENT).unlink()
    if pointer is None:
        (tmp_path / CURRENT).mkdir()
    else:
        (tmp_path / CURRENT).write_bytes(pointer)
    refused = "fleetstream_processing_models_refused_total"
    for _ in range(3):
        clock.now += 5.0
        model = watcher.current()
        assert model is not None
        assert model.version == "v1"
    assert metrics.registry.get_sample_value(refused) == 1
    # A new watcher (a restart) starts on the rules rather than crashing.
    assert ModelWatcher(tmp_path, ProcessingMetrics(), every_s=5.0, clock=clock).current() is None


def test_a_model_trained_on_another_window_length_is_refused_and_the_current_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its features (distance, consumption of a window) would not mean what they meant in
    # training; artifacts without window_ms were all trained on 60 s windows.
    save(forest(5), {**META, "window_ms": 300_000}, tmp_path, version="v5min")
    save(forest(5), META, tmp_path, version="vold")
    _point(tmp_path, "v5min")
    clock = Clock()
    metrics = ProcessingMetrics()
    watcher = ModelWatcher(tmp_path, metrics, every_s=5.0, clock=clock, window_ms=300_000)
    model = watcher.current()
    assert model is not None
    assert model.version == "v5min"
    _point(tmp_path, "vold")
    clock.now += 5.0
    model = watcher.current()
    assert model is not None
    assert model.version == "v5min"
    assert metrics.registry.get_sample_value("fleetstream_processing_models_refused_total") == 1
    assert "trained on 60 s windows, not the 300 s windows" in caplog.text
    # A pipeline with the default 60 s windows refuses the 5 min model.
    _point(tmp_path, "v5min")
    assert ModelWatcher(tmp_path, ProcessingMetrics()).current() is None


def test_a_renamed_version_folder_is_loaded_once_under_its_folders_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Copied from staging under a release name, its metadata still says "v1": the version
    # loaded never equalled the pointer's, and the pipeline loaded it again every 5 s.
    save(forest(5), META, tmp_path / "staging", version="v1")
    root = tmp_path / "registry"
    shutil.copytree(tmp_path / "staging" / "v1", root / "prod-2026-12")
    _point(root, "prod-2026-12")
    loads: list[Path] = []
    real = load

    def counting(folder: Path, window_ms: int | None = None) -> LoadedModel:
        loads.append(folder)
        return real(folder, window_ms)

    monkeypatch.setattr(watched, "load", counting)
    clock = Clock()
    watcher = ModelWatcher(root, ProcessingMetrics(), every_s=5.0, clock=clock)
    for _ in range(5):
        clock.now += 5.0
        model = watcher.current()
        assert model is not None
        assert model.version == "prod-2026-12"
    assert len(loads) == 1
    assert caplog.text.count("says it is version 'v1'") == 1
