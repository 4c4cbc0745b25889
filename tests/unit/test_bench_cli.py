"""`fleetstream bench …` wiring: options reach the run, exit codes, table and JSON output.

The runs themselves are tested on the real brokers (tests/integration/test_bench*.py);
here they are replaced by a function that returns a prepared report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

import bench
from bench import BenchError, Report
from bench._report import row
from fleetstream.cli import app

pytestmark = pytest.mark.unit


def _report(met: bool) -> Report:
    report = Report("pipeline", {"vehicles": 7})
    report.add(row("processing", "throughput", 30.0, "records/s", ("bare consumer", 60.0)))
    report.check("pipeline target", ">= 20", "30", met)
    return report


def _fake(calls: list[dict[str, Any]], met: bool) -> Any:
    def run(**kwargs: Any) -> Report:
        calls.append(kwargs)
        return _report(met)

    return run


@pytest.mark.parametrize(("met", "code"), [(True, 0), (False, 3)])
def test_a_missed_target_exits_3_after_the_table_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, met: bool, code: int
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(bench, "run_pipeline", _fake(calls, met))
    result = CliRunner().invoke(
        app,
        ["bench", "pipeline", "-n", "7", "--seconds", "30", "--no-model", "--out", str(tmp_path)],
    )
    assert result.exit_code == code, result.output
    assert calls == [{"vehicles": 7, "seconds": 30, "model": False}]
    assert "bare consumer (60.0)" in result.stdout
    assert "0.50x" in result.stdout
    assert ("[MET ]" if met else "[MISS]") in result.stdout
    saved = orjson.loads((tmp_path / "pipeline-latest.json").read_bytes())
    assert saved["rows"][0]["ratio"] == 0.5
    assert "speed_probe_us_at_end" in saved["machine"]


def test_json_goes_to_stdout_and_the_table_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(bench, "run_e2e", _fake(calls, met=True))
    result = CliRunner().invoke(
        app,
        ["bench", "e2e", "-n", "100", "-n", "200", "--seconds", "10", "--search",
         "--processes", "2", "--out", str(tmp_path), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls == [{"vehicles": [100, 200], "seconds": 10, "search": True, "processes": 2}]
    printed = orjson.loads(result.stdout)
    assert printed == orjson.loads((tmp_path / "pipeline-latest.json").read_bytes())
    assert "[MET ] pipeline target" in result.stderr


def test_a_benchmark_that_cannot_run_exits_1_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_kwargs: Any) -> Report:
        msg = "Kafka does not answer on 127.0.0.1:9092"
        raise BenchError(msg)

    monkeypatch.setattr(bench, "run_ingest", broken)
    result = CliRunner().invoke(app, ["bench", "ingest", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "error: Kafka does not answer" in result.stderr
    assert not list(tmp_path.iterdir())
