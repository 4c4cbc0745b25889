"""Detection quality of the integration test's setup, computed offline (no brokers).

``tests/integration/test_processing.py`` runs a simulated day through the real pipeline
with a promoted isolation forest and scores the alerts with
:func:`processing.evaluate.evaluate`. :func:`offline_detection` computes the same
evaluation through the replay path the training and backtest tools use
(:func:`models.replay.replay_records` and :func:`models.replay.window_alerts`, which call
the pipeline's own detector functions), with the same model (:func:`promote_detector`),
so any seed can be scored in seconds without Kafka. What it leaves out: the test's
duplicates, swapped records and bad payloads (the pipeline drops or quarantines them; a
swapped pair can still change a per-record rule's verdict by one record).

Run ``python -m bench.detection SEED [SEED ...]`` to print the table per seed
(``--rules``: the consumption rule instead of the model).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.harness import promote_detector, simulate
from models.registry import load_current
from models.replay import replay_records, window_alerts
from processing.evaluate import KindScore, evaluate, format_scores
from simulator import FleetConfig

# The integration test's fleet: 20 cars, one day at 0.2 Hz, 5 episodes per vehicle-day.
CARS = 20


def integration_fleet(seed: int) -> FleetConfig:
    """The fleet ``tests/integration/test_processing.py`` simulates, with ``seed``."""
    return FleetConfig(vehicles=CARS, duration_s=86400, rate_hz=0.2, seed=seed, anomaly_rate=5.0)


def offline_detection(
    config: FleetConfig, registry: Path | None = None, *, rules_only: bool = False
) -> dict[str, KindScore]:
    """Event-level scores of the detectors with the test's model on ``config``'s fleet.

    Args:
        config: The simulated fleet (its labels are the ground truth).
        registry: Where the model is trained and promoted (a temporary folder if None).
        rules_only: Score the consumption rule instead of the model.

    Returns:
        :func:`processing.evaluate.evaluate`'s scores, per kind and ``overall``.
    """
    model = None
    if not rules_only:
        with tempfile.TemporaryDirectory() as tmp:
            folder = registry or Path(tmp) / "registry"
            promote_detector(folder)
            model = load_current(folder)
    records, labels = simulate(config)
    replayed = replay_records(records)
    alerts = replayed.record_alerts + window_alerts(replayed.windows, model)
    return evaluate(labels, alerts)


def main(argv: list[str]) -> int:
    """Print the scores of each seed in ``argv`` (``--rules``: without the model)."""
    rules_only = "--rules" in argv
    for seed in (int(a) for a in argv if a != "--rules"):
        scores = offline_detection(integration_fleet(seed), rules_only=rules_only)
        what = "rules only" if rules_only else "with the test's model"
        sys.stdout.write(f"seed {seed}, {what}\n{format_scores(scores)}\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
