"""Fixtures shared by all tests, including the real-broker fixtures of the integration
and fault suites (a broker that cannot be started fails the tests; nothing here skips).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from fleetstream import infra

_log = logging.getLogger(__name__)

# Every test belongs to one suite: `make test` selects by marker, so an unmarked test
# would be collected and never run (ten processing-instance tests were, until 2026-12-03).
_SUITES = ("unit", "integration", "faults")
# Tests name topics with uuid4 hex parts (unique_name's 8, prefixes' 10).
_TEST_TOPIC = re.compile(r"[0-9a-f]{8,}")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects the unmarked ones out of sight
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that carries none of the suite markers."""
    unmarked = [i.nodeid for i in items if not any(i.get_closest_marker(m) for m in _SUITES)]
    if unmarked:
        msg = f"tests without a {'/'.join(_SUITES)} marker would never run: {unmarked[:10]}"
        raise pytest.UsageError(msg)


@pytest.fixture(autouse=True)
def _keep_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore ``FLEETSTREAM_LOG_LEVEL`` after each test.

    The ``fleetstream`` root callback exports it for the processes a command starts; a
    test invoking the CLI in-process would leave it set for every later test.
    """
    level = os.environ.get("FLEETSTREAM_LOG_LEVEL")
    if level is None:
        monkeypatch.delenv("FLEETSTREAM_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("FLEETSTREAM_LOG_LEVEL", level)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A topic/group/client-id-safe name unique to this test invocation."""
    base = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name)[:40].strip("-")
    return f"t-{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def infra_settings() -> infra.InfraSettings:
    """Settings of the local brokers (environment overrides apply)."""
    return infra.InfraSettings()


@pytest.fixture(scope="session")
def brokers(infra_settings: infra.InfraSettings) -> Iterator[infra.InfraSettings]:
    """Ensure Kafka and Mosquitto run for the whole session.

    Brokers that were already running are left running; brokers this fixture started
    are stopped at the end of the session.
    """
    already = {s.name for s in infra.status(infra_settings) if s.healthy}
    report = infra.up(infra_settings)
    _log.info("brokers ready: kafka %.1f s, mosquitto %.1f s", report.kafka_s, report.mosquitto_s)
    before = _topics(infra_settings.kafka_bootstrap)
    yield infra_settings
    # The broker's data outlives it: it would fill with every run's topics otherwise.
    _delete_test_topics(infra_settings.kafka_bootstrap, before)
    if not already:
        infra.down(infra_settings)


def _topics(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics)


def is_test_topic(name: str) -> bool:
    """Whether a topic is named like the tests name theirs (a random hex part)."""
    return not name.startswith("__") and _TEST_TOPIC.search(name) is not None


def _delete_test_topics(bootstrap: str, before: set[str]) -> None:
    """Delete the topics the session created, Quix's changelogs of its groups included.

    Only new topics with a test's random part in their name: a demo sharing the broker
    keeps the topics it created meanwhile. Failures are logged: cleanup must not turn a
    passed run red.
    """
    try:
        names = sorted(n for n in _topics(bootstrap) - before if is_test_topic(n))
        if not names:
            return
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result(timeout=60)
    except Exception:  # noqa: BLE001 - see above
        _log.warning("could not delete the session's topics", exc_info=True)
    else:
        _log.info("deleted the session's %d topics", len(names))


@pytest.fixture(scope="session")
def kafka_bootstrap(brokers: infra.InfraSettings) -> str:
    """``host:port`` of the real Kafka."""
    return brokers.kafka_bootstrap


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, unique_name: str) -> Iterator[str]:
    """A fresh 3-partition topic, deleted after the test."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.create_topics([NewTopic(unique_name, num_partitions=3, replication_factor=1)])
    futures[unique_name].result(timeout=30)
    yield unique_name
    admin.delete_topics([unique_name])[unique_name].result(timeout=30)
