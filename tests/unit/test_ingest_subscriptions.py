"""The record of a client id's subscribed filters (ingest/_subscriptions.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ingest._rules import parse_rules
from ingest._service import IngestService
from ingest._settings import IngestSettings
from ingest._subscriptions import SubscriptionRecord, valid_filter

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


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'{"filters": "a/#"}', b"{}"])
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


def test_entries_that_are_not_filters_are_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Unsubscribing from one made paho raise (or the broker disconnect) at every start.
    record = SubscriptionRecord(tmp_path, "c")
    bad = ["", "a/#/b", "a+", "$share/g", "$share//a", "$share/g+/a", "a\u0000b", 1, None]
    good = ["a/#", "+", "$share/g/fleet/+/telemetry"]
    record.path.write_bytes(orjson.dumps({"filters": bad + good}))
    with caplog.at_level(logging.WARNING, logger="ingest._subscriptions"):
        assert record.load() == frozenset(good)
    assert "ignoring entries that are not MQTT filters" in caplog.text


@pytest.mark.parametrize(
    ("subscription", "valid"),
    [("a/+/c", True), ("#", True), ("$share/g/#", True), ("a/#/b", False), ("", False),
     ("x" * 65_536, False), ("$share/g", False)],
)  # fmt: skip
def test_valid_filter_follows_the_mqtt_rules(subscription: str, valid: bool) -> None:
    assert valid_filter(subscription) is valid


# ----------------------------------------------------------- the service's use of the record


def _rules(group: str | None) -> str:
    share = f'share_group="{group}"\n' if group else ""
    rule = f'name="raw"\nmqtt="raw/+"\n{share}adapter="raw"\ntopic="r"\nkey="{{1}}"\n'
    return f"[[mqtt_to_kafka]]\n{rule}"


class _Client:
    """Records subscribe/unsubscribe calls with the record file as it was at each call."""

    def __init__(self, service: IngestService, refuse: frozenset[str] = frozenset()) -> None:
        self.service = service
        self.refuse = refuse
        self.calls: list[tuple[str, str, frozenset[str] | None]] = []

    def _on_disk(self) -> frozenset[str] | None:
        return SubscriptionRecord(self.service.settings.ingest_state_dir, "c").load()

    async def subscribe(self, topic: str, qos: int, properties: Any = None) -> list[ReasonCode]:
        self.calls.append(("subscribe", topic, self._on_disk()))
        return [ReasonCode(PacketTypes.SUBACK, identifier=qos)]

    async def unsubscribe(self, topic: str) -> None:
        self.calls.append(("unsubscribe", topic, self._on_disk()))
        code = 0x87 if topic in self.refuse else 0x00
        self.service._on_unsuback([ReasonCode(PacketTypes.UNSUBACK, identifier=code)])


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[[str | None], IngestService]]:
    made: list[IngestService] = []

    def make(group: str | None) -> IngestService:
        settings = IngestSettings(
            ingest_metrics_port=0,
            ingest_state_dir=tmp_path / "state",
            mqtt_client_id="c",
            kafka_bootstrap_servers="127.0.0.1:1",  # never reached
            kafka_config={"log_level": "0"},
        )
        made.append(IngestService(settings, parse_rules(_rules(group))))
        return made[-1]

    yield make
    for service in made:
        service.sink.producer.purge()


def _subscribe(service: IngestService, client: _Client, *, resumed: bool) -> None:
    service._on_connack(resumed)
    asyncio.run(service._subscribe(client))  # type: ignore[arg-type]


def _restart(
    make_service: Callable[[str | None], IngestService],
    before: str | None,
    after: str | None,
    refuse: frozenset[str] = frozenset(),
) -> tuple[IngestService, _Client]:
    """A process with ``before``'s rules subscribed; the next one and its client."""
    first = make_service(before)
    _subscribe(first, _Client(first), resumed=False)
    second = make_service(after)
    return second, _Client(second, refuse)


def test_a_renamed_group_is_subscribed_then_the_old_one_dropped_then_recorded(
    make_service: Callable[[str | None], IngestService],
) -> None:
    second, client = _restart(make_service, "old", "new")
    _subscribe(second, client, resumed=True)
    both = frozenset({"$share/old/raw/+", "$share/new/raw/+"})
    assert client.calls == [
        # Written ahead: the record names both while the session may hold both.
        ("subscribe", "$share/new/raw/+", both),
        ("unsubscribe", "$share/old/raw/+", both),
        ("unsubscribe", "raw/+", both),  # the plain filter of a shared rule, always
    ]
    assert client._on_disk() == frozenset({"$share/new/raw/+"})
    # A reconnect of the same process: nothing to drop, the record left alone.
    again = _Client(second)
    mtime = SubscriptionRecord(second.settings.ingest_state_dir, "c").path.stat().st_mtime_ns
    _subscribe(second, again, resumed=True)
    assert [c[0] for c in again.calls] == ["subscribe", "unsubscribe"]  # the plain one only
    assert (
        SubscriptionRecord(second.settings.ingest_state_dir, "c").path.stat().st_mtime_ns == mtime
    )


def test_a_new_session_drops_nothing_and_records_its_filters(
    make_service: Callable[[str | None], IngestService],
) -> None:
    second, client = _restart(make_service, "old", None)
    _subscribe(second, client, resumed=False)  # the broker lost the session
    assert [c[0] for c in client.calls] == ["subscribe"]
    assert client._on_disk() == frozenset({"raw/+"})


def test_a_refused_unsubscribe_stays_in_the_record(
    make_service: Callable[[str | None], IngestService], caplog: pytest.LogCaptureFixture
) -> None:
    second, client = _restart(make_service, "old", None, frozenset({"$share/old/raw/+"}))
    with caplog.at_level(logging.WARNING, logger="ingest._service"):
        _subscribe(second, client, resumed=True)
    assert client._on_disk() == frozenset({"raw/+", "$share/old/raw/+"})
    assert "refused to unsubscribe from $share/old/raw/+" in caplog.text


def test_a_connection_lost_while_unsubscribing_leaves_every_filter_recorded(
    make_service: Callable[[str | None], IngestService],
) -> None:
    second, client = _restart(make_service, "old", "new")

    async def lost(topic: str) -> None:
        msg = "connection lost"
        raise aiomqtt.MqttError(msg)

    client.unsubscribe = lost  # type: ignore[method-assign]
    with pytest.raises(aiomqtt.MqttError):
        _subscribe(second, client, resumed=True)
    assert client._on_disk() == frozenset({"$share/old/raw/+", "$share/new/raw/+"})


def test_a_resumed_session_without_a_record_is_a_warning(
    make_service: Callable[[str | None], IngestService], caplog: pytest.LogCaptureFixture
) -> None:
    service = make_service(None)
    with caplog.at_level(logging.WARNING, logger="ingest._service"):
        _subscribe(service, _Client(service), resumed=True)
    assert "resumed an MQTT session with no record of its filters" in caplog.text
