"""`fleetstream models list|promote` on a registry folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from typer.testing import CliRunner

from fleetstream.cli import app
from models.registry import current_version, save

pytestmark = pytest.mark.unit


def _save(root: Path, version: str) -> None:
    model = IsolationForest(n_estimators=5, random_state=0).fit(np.zeros((10, 2)))
    meta = {
        "features": ["consumption_ratio", "avg_speed_kmh"],
        "threshold": 0.5,
        "score": "neg_score_samples",
        "family": "isolation_forest",
    }
    save(model, meta, root, version=version)


def test_list_and_promote(tmp_path: Path) -> None:
    runner = CliRunner()
    assert "no models" in runner.invoke(app, ["models", "list", "--registry", str(tmp_path)]).output
    _save(tmp_path, "v1")
    _save(tmp_path, "v2")
    result = runner.invoke(app, ["models", "promote", "v2", "--registry", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert current_version(tmp_path) == "v2"
    listing = runner.invoke(
        app, ["models", "list", "--registry", str(tmp_path)]
    ).output.splitlines()
    assert listing == ["  v1  isolation_forest", "* v2  isolation_forest", "(* current, s shadow)"]
    result = runner.invoke(app, ["models", "shadow", "v1", "--registry", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "s v1" in runner.invoke(app, ["models", "list", "--registry", str(tmp_path)]).output
    result = runner.invoke(app, ["models", "shadow", "--clear", "--registry", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "s v1" not in runner.invoke(app, ["models", "list", "--registry", str(tmp_path)]).output


def test_promoting_a_missing_version_fails_clearly(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "promote", "v9", "--registry", str(tmp_path)])
    assert result.exit_code == 2
    assert "cannot read model artifact" in result.output
    assert current_version(tmp_path) is None


def test_list_warns_about_an_unreadable_pointer_and_lists_the_versions(tmp_path: Path) -> None:
    _save(tmp_path, "v1")
    (tmp_path / "current").write_bytes(b"v\xe91\n")
    result = CliRunner().invoke(app, ["models", "list", "--registry", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "warning: cannot read the current pointer" in result.output
    assert "  v1  isolation_forest" in result.output.splitlines()
