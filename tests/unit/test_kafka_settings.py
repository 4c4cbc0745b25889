"""FLEETSTREAM_KAFKA_CONFIG: a JSON object of librdkafka settings, typed as JSON allows."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from pydantic import ValidationError

from telemetry.settings import KafkaConnectionSettings

pytestmark = pytest.mark.unit


def test_numbers_and_booleans_become_librdkafka_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FLEETSTREAM_KAFKA_CONFIG",
        '{"security.protocol": "PLAINTEXT", "socket.timeout.ms": 30000, '
        '"enable.ssl.certificate.verification": false, "socket.keepalive.enable": true, '
        '"queue.buffering.max.kbytes": 1024.0}',
    )
    settings = KafkaConnectionSettings()
    assert settings.kafka_config == {
        "security.protocol": "PLAINTEXT",
        "socket.timeout.ms": "30000",
        "enable.ssl.certificate.verification": "false",
        "socket.keepalive.enable": "true",
        "queue.buffering.max.kbytes": "1024.0",
    }
    # librdkafka takes them as they are.
    Producer(settings.kafka_client_config(**{"bootstrap.servers": "127.0.0.1:1"}))


@pytest.mark.parametrize("value", ["null", "[1]", '{"a": 1}'])
def test_other_json_values_are_refused_clearly(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLEETSTREAM_KAFKA_CONFIG", f'{{"socket.timeout.ms": {value}}}')
    with pytest.raises(ValidationError, match="strings, numbers or booleans"):
        KafkaConnectionSettings()
