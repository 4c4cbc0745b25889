"""Models against the real Kafka: archive a week (with a kill -9), train, backtest; promote a
model and run a shadow candidate while processing runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from bench.harness import ProcessingRun, as_rows, create_topic, produce, read_topic
from fleetstream import infra
from models.dataset import iter_records, load_telemetry
from models.registry import SHADOW, LoadedModel, load, promote, save, unset
from models.replay import replay_records, window_feature_rows
from models.training import label_windows, train
from simulator import Fleet, FleetConfig

pytestmark = pytest.mark.integration

WEEK_S = 7 * 86400


def _fleet_run(config: FleetConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    fleet = Fleet(config)
    records = [r for _ in range(round(config.duration_s * config.rate_hz)) for r in fleet.tick()]
    return records, [dict(label) for label in fleet.labels()]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "fleetstream", *args],
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()[-3000:]
    return out


@pytest.fixture(scope="module")
def archived_week(
    brokers: infra.InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A seeded week (10 cars, 0.1 Hz) produced to Kafka and archived, with a kill -9."""
    workdir = tmp_path_factory.mktemp("archive")
    records, labels = _fleet_run(
        FleetConfig(vehicles=10, duration_s=WEEK_S, rate_hz=0.1, seed=31, anomaly_rate=3)
    )
    labels_path = workdir / "labels.jsonl"
    labels_path.write_bytes(b"".join(orjson.dumps(lab) + b"\n" for lab in labels))
    topic = f"arch{uuid.uuid4().hex[:10]}-telemetry"
    create_topic(brokers.kafka_bootstrap, topic)
    rows = as_rows(records)
    rows.insert(1000, (b"veh-00001", b'{"schema": 1, "vehicle_id": "veh-00001"}', rows[1000][2]))
    produce(brokers.kafka_bootstrap, topic, rows)
    root = workdir / "archive"
    env = {
        **os.environ,
        "FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS": brokers.kafka_bootstrap,
        "FLEETSTREAM_ARCHIVE_TELEMETRY_TOPIC": topic,
        "FLEETSTREAM_ARCHIVE_CONSUMER_GROUP": f"{topic}-archive",
        "FLEETSTREAM_ARCHIVE_MAX_ROWS": "150000",
    }
    command = [sys.executable, "-m", "fleetstream", "archive", "--out", str(root)]
    command += ["--tables", "telemetry"]
    log = (workdir / "archive.log").open("ab")
    first = subprocess.Popen([*command, "--until-idle", "30"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while not list(root.rglob("*.parquet")) and time.monotonic() < deadline:
        assert first.poll() is None
        time.sleep(0.2)
    time.sleep(1.0)  # somewhere between a write and its commit, or after
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    started = time.monotonic()
    second = subprocess.run(
        [*command, "--until-idle", "5"], env=env, capture_output=True, timeout=600, check=False
    )
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    return {
        "records": records,
        "labels": labels_path,
        "root": root,
        "workdir": workdir,
        "archive_output": second.stdout.decode(),
        "archive_s": time.monotonic() - started,
    }


def test_archive_is_complete_and_deduplicated_after_a_kill(archived_week: dict[str, Any]) -> None:
    records = archived_week["records"]
    root: Path = archived_week["root"]
    files = list(root.rglob("*.parquet"))
    # 8 days x 2 powertrains, a few flushes each: not one tiny file per batch.
    assert len(files) < 100, len(files)
    table = load_telemetry(str(root / "telemetry"))
    assert table.num_rows == len(records)
    got = Counter((r["vehicle_id"], r["seq"]) for r in iter_records(table))
    assert got == Counter((r["vehicle_id"], r["seq"]) for r in records)
    print(f"archive after kill -9: {archived_week['archive_output'].strip()}")  # noqa: T201


@pytest.fixture(scope="module")
def trained(archived_week: dict[str, Any]) -> dict[str, Any]:
    registry = archived_week["workdir"] / "registry"
    out = _cli(
        "train", "--data", str(archived_week["root"] / "telemetry"),
        "--labels", str(archived_week["labels"]), "--out", str(registry),
    )  # fmt: skip
    (folder,) = [p for p in registry.iterdir() if p.is_dir()]
    return {"folder": folder, "model": load(folder), "output": out}


def test_trained_model_beats_the_fixed_threshold_on_held_out_time(
    trained: dict[str, Any],
) -> None:
    meta = trained["model"].metadata
    chosen = meta["candidates"][meta["family"]]
    print(trained["output"])  # noqa: T201
    assert chosen["test"]["f1"] > meta["baseline_test"]["f1"]
    assert chosen["test"]["windows"] == meta["baseline_test"]["windows"]
    report = (trained["folder"] / "report.md").read_text()
    assert "held-out" in report
    assert f"{chosen['test']['f1']:.3f}" in report


def test_backtest_on_held_out_time_matches_the_training_report(
    archived_week: dict[str, Any], trained: dict[str, Any]
) -> None:
    meta = trained["model"].metadata
    since = pd.Timestamp(meta["training_data"]["test_from"], unit="ms", tz="UTC").isoformat()
    out = _cli(
        "backtest", "--model", str(trained["folder"]),
        "--data", str(archived_week["root"] / "telemetry"),
        "--labels", str(archived_week["labels"]), "--since", since,
    )  # fmt: skip
    print(out)  # noqa: T201
    overall = next(line for line in out.splitlines() if line.startswith("overall"))
    labels, alerts, precision, recall, f1 = overall.split()[1:6]
    expected = meta["test_events"]["model"]["overall"]
    assert (int(labels), int(alerts)) == (expected["labels"], expected["alerts"])
    assert float(f1) == pytest.approx(expected["f1"], abs=1e-3)
    assert float(precision) > 0.9
    assert float(recall) > 0.8


def _permissive(model: LoadedModel) -> dict[str, Any]:
    # Same estimator, threshold at the bottom: every driving window above the car's
    # baseline counts, so this version certainly raises alerts the test can see.
    return {**model.metadata, "threshold": 0.0}


def test_promote_and_shadow_while_processing_runs(
    brokers: infra.InfraSettings, tmp_path: Path
) -> None:
    train_records, train_labels = _fleet_run(
        FleetConfig(vehicles=8, duration_s=2 * 86400, rate_hz=0.1, seed=41, anomaly_rate=4)
    )
    frame = pd.DataFrame(window_feature_rows(replay_records(train_records, rules=False).windows))
    chosen = train(frame, label_windows(frame, pd.DataFrame(train_labels))).chosen
    metadata = {
        "features": list(chosen.family.features),
        "threshold": chosen.threshold,
        "score": chosen.family.score,
    }
    registry = tmp_path / "registry"
    version_a = save(chosen.estimator, metadata, registry, version="va").name
    version_b = save(chosen.estimator, _permissive(load(registry / "va")), registry, "vb").name
    promote(registry, version_a)
    promote(registry, version_b, SHADOW)

    records, _ = _fleet_run(
        FleetConfig(vehicles=8, duration_s=6 * 3600, rate_hz=0.2, seed=42, anomaly_rate=4)
    )
    middle = records[0]["ts"] + 3 * 3_600_000
    first = [r for r in records if r["ts"] < middle]
    second = [r for r in records if r["ts"] >= middle]
    run = ProcessingRun(
        brokers.kafka_bootstrap, f"mp{uuid.uuid4().hex[:10]}", tmp_path, model_dir=registry
    )
    create_topic(brokers.kafka_bootstrap, run.topics["input"])
    produce(brokers.kafka_bootstrap, run.topics["input"], as_rows(first))
    run.start()
    try:
        run.wait_consumed(len(first))
        promote(registry, version_b)
        unset(registry, SHADOW)
        time.sleep(7)  # the pipeline re-reads the pointers every 5 s
        produce(brokers.kafka_bootstrap, run.topics["input"], as_rows(second))
        run.wait_consumed(len(records))
    finally:
        assert run.stop() == 0, run.log()
    t = run.topics
    log = run.log()
    assert re.search(r"current model vb active \(was va\)", log), log
    alerts = [orjson.loads(r.value) for r in read_topic(brokers.kafka_bootstrap, t["alerts"], 1)]
    model_alerts = [
        a for a in alerts if a["kind"] == "high_consumption" and a["status"] == "raised"
    ]
    before = {a["detector"] for a in model_alerts if a["ts"] < middle}
    after = {a["detector"] for a in model_alerts if a["ts"] >= middle + 120_000}
    assert before <= {"model:va"}, before
    assert after == {"model:vb"}, after
    shadow = [orjson.loads(r.value) for r in read_topic(brokers.kafka_bootstrap, t["shadow"], 1)]
    assert shadow
    assert {a["detector"] for a in shadow} == {"model:vb"}
    assert max(a["ts"] for a in shadow) < middle + 120_000  # shadow stopped when cleared
    # No lost or duplicated stats across the switch.
    stats = [orjson.loads(r.value) for r in read_topic(brokers.kafka_bootstrap, t["stats"], 1)]
    keys = Counter((s["vehicle_id"], s["window_start"]) for s in stats)
    assert max(keys.values()) == 1
    every = {(r["vehicle_id"], r["ts"] - r["ts"] % 60_000) for r in records}
    closed = {k for k in every if k[1] + 60_000 + 10_000 <= records[-1]["ts"]}
    assert closed <= set(keys) <= every


def test_train_reads_operator_feedback_from_kafka(
    brokers: infra.InfraSettings, tmp_path: Path
) -> None:
    """Verdicts the dashboard wrote to the feedback topic become training labels."""
    records, labels = _fleet_run(
        FleetConfig(vehicles=6, duration_s=3 * 86400, rate_hz=0.1, seed=8, anomaly_rate=4)
    )
    data = tmp_path / "run.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    episodes = [lab for lab in labels if lab["kind"] == "high_consumption"]
    assert len(episodes) > 3
    verdicts = [
        {
            "alert_id": f"{lab['vehicle_id']}-{i}-raised",
            "episode_id": f"{lab['vehicle_id']}-{i}",
            "vehicle_id": lab["vehicle_id"],
            "kind": "high_consumption",
            "alert_ts": min(lab["start_ts"] + 180_000, lab["end_ts"]),
            "verdict": "acknowledged",
            "ts": lab["end_ts"],
            "source": "dashboard",
        }
        for i, lab in enumerate(episodes)
    ]
    # The operator changed their mind on the first alert: the later verdict counts.
    verdicts.append({**verdicts[0], "verdict": "false_positive", "ts": verdicts[0]["ts"] + 1})
    topic = f"feedback-{uuid.uuid4().hex[:8]}"
    create_topic(brokers.kafka_bootstrap, topic, partitions=2)
    produce(
        brokers.kafka_bootstrap,
        topic,
        [(v["vehicle_id"].encode(), orjson.dumps(v), v["ts"]) for v in verdicts],
    )
    registry = tmp_path / "registry"
    out = _cli(
        "train", "--data", str(data), "--feedback-topic", topic,
        "--bootstrap", brokers.kafka_bootstrap, "--out", str(registry),
    )  # fmt: skip
    assert f"feedback: {len(verdicts)} records from kafka://" in out
    (folder,) = [p for p in registry.iterdir() if p.is_dir()]
    feedback = load(folder).metadata["training_data"]["feedback"]
    assert feedback["records"] == len(verdicts)
    assert feedback["confirmed_alerts"] == len(episodes) - 1
    assert feedback["false_positive_alerts"] == 1
    assert feedback["source"] == f"kafka://{brokers.kafka_bootstrap}/{topic}"
