"""The processing instance claim: one process per state folder, a restart-stable id."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import pytest
from confluent_kafka import KafkaError, KafkaException

import processing._main
from processing import ProcessingSettings
from processing._main import _create_topics, client_configs
from processing.instance import InstanceError, claim_instance, default_instance_id

pytestmark = pytest.mark.unit


def test_default_id_is_stable_and_depends_on_host_and_folder(tmp_path: Path) -> None:
    one = default_instance_id(tmp_path / "a", host="car-host")
    assert one == default_instance_id(tmp_path / "a", host="car-host")
    assert one.startswith("car-host-")
    assert one != default_instance_id(tmp_path / "b", host="car-host")
    assert one != default_instance_id(tmp_path / "a", host="other-host")


def test_default_id_names_the_same_folder_the_same_however_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_instance_id(Path("state"), host="h") == default_instance_id(
        tmp_path / "state", host="h"
    )


def test_host_names_are_made_safe_for_a_kafka_id(tmp_path: Path) -> None:
    assert default_instance_id(tmp_path, host="my host/1").startswith("my-host-1-")
    assert default_instance_id(tmp_path, host="///").startswith("host-")


def test_a_second_claim_of_a_held_folder_fails_until_it_is_released(tmp_path: Path) -> None:
    first = claim_instance(tmp_path / "state")
    with pytest.raises(InstanceError, match="own FLEETSTREAM_PROCESSING_STATE_DIR"):
        claim_instance(tmp_path / "state")
    other = claim_instance(tmp_path / "other")
    other.release()
    first.release()
    claim_instance(tmp_path / "state").release()


def test_a_configured_id_wins(tmp_path: Path) -> None:
    claim = claim_instance(tmp_path, "proc-7")
    try:
        assert claim.instance_id == "proc-7"
    finally:
        claim.release()


@pytest.mark.parametrize(
    ("guarantee", "expected"),
    [("exactly-once", "grp.inst-1"), ("at-least-once", None)],
)
def test_the_transactional_id_is_given_only_with_exactly_once(
    guarantee: Literal["exactly-once", "at-least-once"], expected: str | None
) -> None:
    settings = ProcessingSettings(
        processing_guarantee=guarantee,
        processing_consumer_group="grp",
        kafka_bootstrap_servers="kafka-1:9092",
    )
    clients = client_configs(settings, "inst-1")
    assert clients.broker_address == "kafka-1:9092"
    assert clients.producer.get("transactional.id") == expected
    assert "transactional.id" not in clients.consumer
    assert "bootstrap.servers" not in clients.producer
    assert "bootstrap.servers" not in clients.consumer
    assert "group.instance.id" not in clients.consumer


def test_static_membership_names_the_member_by_the_instance_id() -> None:
    settings = ProcessingSettings(processing_static_membership=True)
    assert client_configs(settings, "inst-1").consumer["group.instance.id"] == "inst-1"


def test_without_an_id_quix_keeps_drawing_its_own() -> None:
    assert "transactional.id" not in client_configs(ProcessingSettings(), None).producer


@pytest.mark.parametrize(
    "error",
    [
        KafkaException(KafkaError(KafkaError._TRANSPORT)),
        TimeoutError("not confirmed"),
    ],
)
def test_topics_kafka_cannot_create_now_are_left_to_quix_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    asked: list[tuple[str, ...]] = []

    def refuse(_config: object, topics: Iterable[str], **_kw: object) -> list[str]:
        asked.append(tuple(topics))
        raise error

    monkeypatch.setattr(processing._main, "create_missing_topics", refuse)
    settings = ProcessingSettings(processing_stats_topic="s", processing_alerts_topic="a")
    with caplog.at_level(logging.WARNING, "processing"):
        _create_topics(settings)  # must not raise: Quix's own attempt reports the problem
    assert len(asked) == 1
    assert {"s", "a", settings.processing_input_topic} <= set(asked[0])
    assert "Quix will try" in caplog.text


@pytest.mark.parametrize(
    ("guarantee", "setting", "expected"),
    [
        ("exactly-once", None, 100),
        ("at-least-once", None, 5),
        ("exactly-once", 0, 0),
        ("at-least-once", 40, 40),
    ],
)
def test_the_producer_lingers_longer_only_when_a_commit_decides_when_outputs_are_read(
    guarantee: Literal["exactly-once", "at-least-once"], setting: int | None, expected: int
) -> None:
    settings = ProcessingSettings(
        processing_guarantee=guarantee,
        processing_linger_ms=setting,
        # A general client setting does not override the service's own.
        kafka_config={"linger.ms": "7"},
    )
    assert client_configs(settings, "inst-1").producer["linger.ms"] == expected
