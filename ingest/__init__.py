"""Ingest: MQTT -> Kafka (PUBACK only after Kafka confirmed) and Kafka -> MQTT commands.

Run it with ``fleetstream ingest`` or ``python -m ingest``.
"""

from ingest._main import main
from ingest._routing import Inbound, Outbound, route
from ingest._rules import KafkaToMqttRule, MqttToKafkaRule, RuleSet, load_rules, parse_rules
from ingest._service import IngestService
from ingest._settings import IngestSettings
from ingest.errors import FatalConnectError, IngestError, RulesError

__all__ = [
    "FatalConnectError",
    "Inbound",
    "IngestError",
    "IngestService",
    "IngestSettings",
    "KafkaToMqttRule",
    "MqttToKafkaRule",
    "Outbound",
    "RuleSet",
    "RulesError",
    "load_rules",
    "main",
    "parse_rules",
    "route",
]
