"""Fleet simulator: EV and combustion cars with labelled anomaly injection.

Use it from the command line (``fleetstream simulate``) or as a library::

    from simulator import FleetConfig, iter_records
    for record in iter_records(FleetConfig(vehicles=10, duration_s=60, seed=1)):
        ...
"""

from simulator._anomalies import Episode, Kind, Label
from simulator._fleet import Fleet, FleetConfig
from simulator._formats import Format, default_topic, render, to_tesla
from simulator._run import (
    MqttTarget,
    RunReport,
    check_format,
    check_output,
    check_topic,
    iter_records,
    redact_url,
    run_to_file,
    run_to_mqtt,
)
from simulator.errors import SimulatorError

__all__ = [
    "Episode",
    "Fleet",
    "FleetConfig",
    "Format",
    "Kind",
    "Label",
    "MqttTarget",
    "RunReport",
    "SimulatorError",
    "check_format",
    "check_output",
    "check_topic",
    "default_topic",
    "iter_records",
    "redact_url",
    "render",
    "run_to_file",
    "run_to_mqtt",
    "to_tesla",
]
