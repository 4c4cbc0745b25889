"""The two sizes of the fault suite, chosen with ``FLEETSTREAM_FAULTS_SCALE``."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    """Message counts, kills and outage lengths of one run of the fault suite.

    Attributes:
        name: ``full`` (the numbers of issue 9) or ``ci`` (reduced, a few minutes).
        kill_vehicles: Vehicles of the kill -9 case (100 messages each).
        kills: How many times ingest is ``kill -9``-ed in that case.
        kill_rate: Publish rate of that case, msg/s.
        outage_s: How long Kafka is stopped or frozen.
        outage_rate: Publish rate during the Kafka outage cases, msg/s.
        mqtt_down_s: How long Mosquitto stays down in the restart case.
        mqtt_messages: Messages of the Mosquitto restart case.
        fuzz_bad: Bad payloads of the ingest fuzz case.
        fuzz_vehicles: Vehicles sending valid traffic in that case (100 messages each).
        processing_hours: Simulated hours (10 cars, 1 Hz) of the processing kill -9 case.
        processing_fuzz_bad: Bad records fed straight into processing's input topic.
    """

    name: str
    kill_vehicles: int
    kills: int
    kill_rate: float
    outage_s: float
    outage_rate: float
    mqtt_down_s: float
    mqtt_messages: int
    fuzz_bad: int
    fuzz_vehicles: int
    processing_hours: float
    processing_fuzz_bad: int


SCALES = {
    "full": Scale(
        name="full",
        kill_vehicles=1000,
        kills=10,
        kill_rate=5000.0,
        outage_s=30.0,
        outage_rate=1000.0,
        mqtt_down_s=5.0,
        mqtt_messages=50_000,
        fuzz_bad=10_000,
        fuzz_vehicles=400,
        processing_hours=4.0,
        processing_fuzz_bad=10_000,
    ),
    "ci": Scale(
        name="ci",
        kill_vehicles=200,
        kills=3,
        kill_rate=5000.0,
        outage_s=10.0,
        outage_rate=1000.0,
        mqtt_down_s=3.0,
        mqtt_messages=10_000,
        fuzz_bad=2_000,
        fuzz_vehicles=80,
        processing_hours=1.0,
        processing_fuzz_bad=1_000,
    ),
}


def current() -> Scale:
    """The scale named by ``FLEETSTREAM_FAULTS_SCALE`` (default ``full``).

    Raises:
        ValueError: The variable names no known scale.
    """
    name = os.environ.get("FLEETSTREAM_FAULTS_SCALE", "full")
    if name not in SCALES:
        msg = f"FLEETSTREAM_FAULTS_SCALE={name!r}: expected one of {', '.join(SCALES)}"
        raise ValueError(msg)
    return SCALES[name]
