"""The record of a client id's subscribed filters (ingest/_subscriptions.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ingest._subscriptions import SubscriptionRecord

pytestmark = pytest.mark.unit


def test_what_one_process_saves_the_next_one_loads(tmp_path: Path) -> None:
    filters = {"$share/ingest/fleet/+/telemetry", "raw/#"}
    assert SubscriptionRecord(tmp_path / "state", "ingest-1").save(filters)
    assert SubscriptionRecord(tmp_path / "state", "ingest-1").load() == frozenset(filters)
    # Another client id's session is another record, not written yet.
    assert SubscriptionRecord(tmp_path / "state", "ingest-2").load() is None


def test_a_client_id_with_any_characters_is_one_file(tmp_path: Path) -> None:
    record = SubscriptionRecord(tmp_path, "../a b/c")
    assert record.path.parent == tmp_path
    assert record.save(["a/#"])
    assert [p.name for p in tmp_path.iterdir()] == [record.path.name]
    assert record.load() == frozenset({"a/#"})


def test_a_save_replaces_the_record(tmp_path: Path) -> None:
    record = SubscriptionRecord(tmp_path, "c")
    record.save(["a/#", "b/#"])
    record.save(["b/#"])
    assert record.load() == frozenset({"b/#"})
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "content", [b"not json", b"[1, 2]", b'{"filters": "a/#"}', b'{"filters": [1]}', b"{}"]
)
def test_an_unreadable_record_loads_as_empty_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    record = SubscriptionRecord(tmp_path, "c")
    record.path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="ingest._subscriptions"):
        assert record.load() == frozenset()
    assert "stale subscriptions stay" in caplog.text


def test_a_record_that_cannot_be_written_is_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="ingest._subscriptions"):
        assert not SubscriptionRecord(blocker / "state", "c").save(["a/#"])
    assert "will stay subscribed" in caplog.text
