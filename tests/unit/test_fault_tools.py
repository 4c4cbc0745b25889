"""The fault suite's own tools: the fuzz generator, the row counts, the report table, scales.

The fault cases run on the real brokers (tests/faults); these check the pieces that
decide what the cases count, so that a wrong count cannot pass for a clean row.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bench.harness import FaultRow, KafkaRecord, ProcessingRun
from simulator import FleetConfig, iter_records
from telemetry.contract import MAX_PAYLOAD_BYTES, ContractError, decode, encode, validate
from tests.faults import _scale, report
from tests.faults._fuzz import KINDS, bad_payloads

pytestmark = pytest.mark.unit

# The kinds issue 9 names, by the generator's names.
ISSUE_KINDS = (
    "random_bytes", "wrong_type", "nan_inf", "huge_number", "deep_nesting", "oversize",
    "bad_utf8",
)  # fmt: skip


def _templates() -> list[bytes]:
    return [encode(r) for r in iter_records(FleetConfig(vehicles=4, duration_s=5, seed=3))]


@pytest.mark.parametrize("require_seq", [True, False])
def test_every_fuzzed_payload_is_refused_with_the_reason_it_carries(require_seq: bool) -> None:
    bad = bad_payloads(500, _templates(), require_seq=require_seq)
    assert len(bad) == 500
    assert set(ISSUE_KINDS) <= set(KINDS)
    kinds = Counter(b.kind for b in bad)
    assert set(kinds) == set(KINDS)
    assert min(kinds.values()) >= 500 // len(KINDS) - 1
    for b in bad:
        with pytest.raises(ContractError) as caught:
            validate(decode(b.payload), require_seq=require_seq)
        assert caught.value.reason == b.reason, b
    assert all(len(b.payload) > MAX_PAYLOAD_BYTES for b in bad if b.kind == "oversize")
    for b in bad:
        if b.kind == "bad_utf8":
            with pytest.raises(UnicodeDecodeError):
                b.payload.decode("utf-8")


def test_the_same_seed_gives_the_same_payloads() -> None:
    templates = _templates()
    assert bad_payloads(50, templates, seed=4) == bad_payloads(50, templates, seed=4)
    assert bad_payloads(50, templates, seed=4) != bad_payloads(50, templates, seed=5)


def _record(vid: str, seq: int) -> KafkaRecord:
    value = orjson.dumps({"vehicle_id": vid, "seq": seq})
    return KafkaRecord(key=vid.encode(), value=value, headers={}, timestamp=0, partition=0)


def test_a_row_counts_lost_duplicates_and_strangers_apart() -> None:
    sent = {("a", 1), ("a", 2), ("b", 1), ("b", 2)}
    found = [_record("a", 1), _record("a", 1), _record("a", 1), _record("b", 2), _record("c", 9)]
    row = FaultRow.from_records("case_x", "ci", sent, found, quarantined=4, crashes=1)
    assert (row.sent, row.in_kafka, row.lost, row.duplicates) == (4, 2, 2, 2)
    assert (row.quarantined, row.crashes, row.unexpected) == (4, 1, 1)
    # The issue's columns, in its order.
    assert row.line().startswith(
        "case=case_x, sent=4, in_kafka=2, lost=2, duplicates=2, quarantined=4, crashes=1,"
    )


def test_the_report_keeps_the_last_row_of_each_case_in_suite_order(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    for case, lost, scale in (
        ("processing_fuzz", 0, "full"),
        ("ingest_kill9_x10", 5, "full"),
        ("ingest_kill9_x10", 0, "full"),  # a re-run replaces the first
        ("ingest_kill9_x3", 7, "ci"),
    ):
        row = FaultRow(case, scale, 10, 10 - lost, lost, 0, 0, 0, duration_s=1.26)
        row.emit(rows)
    latest = report.latest_rows(rows, "full")
    assert [(r["case"], r["lost"]) for r in latest] == [
        ("ingest_kill9_x10", 0),
        ("processing_fuzz", 0),
    ]
    table = report.table(latest).splitlines()
    assert table[0].startswith("| case | sent | in_kafka | lost | duplicates | quarantined |")
    assert table[2].startswith("| ingest_kill9_x10 | 10 | 10 | 0 | 0 | 0 | 0 | unchecked | 1 | ")
    assert [r["case"] for r in report.latest_rows(rows, "ci")] == ["ingest_kill9_x3"]


def test_a_row_is_emitted_after_its_checks_with_their_outcome(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    clean = FaultRow("kafka_stopped_30s", "full", 10, 10, 0, 0, 0, 0)
    with clean.checked(rows):
        assert not rows.exists()  # nothing is written before the checks ran
    # A case whose fault never happened still counts lost=0, crashes=0: not a clean row.
    failed = FaultRow("mosquitto_restart", "full", 10, 10, 0, 0, 0, 0)
    with pytest.raises(AssertionError, match="never reconnected"), failed.checked(rows):
        msg = "the publisher never reconnected"
        raise AssertionError(msg)
    written = [orjson.loads(line) for line in rows.read_bytes().splitlines()]
    assert [(r["case"], r["passed"]) for r in written] == [
        ("kafka_stopped_30s", True),
        ("mosquitto_restart", False),
    ]
    latest = report.latest_rows(rows, "full")
    assert "| **FAILED** |" in report.table(latest).splitlines()[3]
    assert report.not_passed(latest) == ["mosquitto_restart"]


def test_the_report_refuses_a_table_with_a_failed_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "rows.jsonl"
    monkeypatch.setenv("FLEETSTREAM_FAULTS_ROWS", str(rows))
    with FaultRow("ingest_fuzz", "ci", 10, 10, 0, 0, 0, 0).checked(rows):
        pass
    assert report.main(["ci"]) == 0
    with (
        pytest.raises(AssertionError),
        FaultRow("processing_kill9_mid_window", "ci", 10, 10, 0, 0, 0, 0).checked(rows),
    ):
        raise AssertionError
    assert report.main(["ci"]) == 1
    assert "processing_kill9_mid_window" in capsys.readouterr().err


def test_the_full_scale_has_the_numbers_of_the_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    full = _scale.SCALES["full"]
    assert full.kill_vehicles * 100 == 100_000
    assert full.kills == 10
    assert full.outage_s == 30
    assert full.fuzz_bad == full.processing_fuzz_bad == 10_000
    monkeypatch.delenv("FLEETSTREAM_FAULTS_SCALE", raising=False)
    assert _scale.current() is full
    monkeypatch.setenv("FLEETSTREAM_FAULTS_SCALE", "tiny")
    with pytest.raises(ValueError, match="expected one of full, ci"):
        _scale.current()


def _sleeper(tmp_path: Path) -> ProcessingRun:
    run = ProcessingRun("unused:9092", "pk", tmp_path)
    run.proc = subprocess.Popen(["sleep", "30"])
    return run


def test_only_the_harness_own_kill_is_not_a_processing_crash(tmp_path: Path) -> None:
    ours = _sleeper(tmp_path)
    ours.kill9()
    assert ours.stop() == -signal.SIGKILL
    assert ours.crashes() == 0
    # A SIGKILL the harness did not send (the OOM killer, say) is a crash.
    theirs = _sleeper(tmp_path)
    assert theirs.proc is not None
    os.kill(theirs.proc.pid, signal.SIGKILL)
    theirs.proc.wait(10)
    assert theirs.stop() == -signal.SIGKILL
    assert theirs.crashes() == 1


def test_the_session_deletes_test_topics_and_keeps_the_products_own() -> None:
    from processing._settings import ProcessingSettings  # noqa: PLC0415 - one test's need
    from tests.conftest import is_test_topic  # noqa: PLC0415

    settings = ProcessingSettings()
    changelog = (
        f"changelog__{settings.processing_consumer_group}--"
        f"{settings.processing_input_topic}--default"
    )
    product = [*settings.topics(), changelog]
    assert not [t for t in product if is_test_topic(t)]
    assert not is_test_topic("__consumer_offsets")
    made = [
        "t-test-a-name-0a1b2c3d",
        "pr0123456789-telemetry",
        "changelog__pc0123456789-group--pc0123456789-telemetry--default",
        "fa0a1b2c3d-telemetry.quarantine",
        "arch0123456789-telemetry",
    ]
    assert all(is_test_topic(t) for t in made)
