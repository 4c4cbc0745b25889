"""Local, Docker-free Kafka (KRaft, jars from Maven Central) and Mosquitto.

Used by ``fleetstream infra up|down|status``, by ``make demo`` and by the test fixtures,
so tests run against exactly the brokers a developer runs.
"""

from fleetstream.infra._kafka import ensure_jars
from fleetstream.infra._process import rotate_log
from fleetstream.infra._settings import KAFKA_VERSION, InfraSettings
from fleetstream.infra._stack import ServiceStatus, StartReport, down, status, up
from fleetstream.infra.errors import InfraError

__all__ = [
    "KAFKA_VERSION",
    "InfraError",
    "InfraSettings",
    "ServiceStatus",
    "StartReport",
    "down",
    "ensure_jars",
    "rotate_log",
    "status",
    "up",
]
