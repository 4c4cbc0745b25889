"""Processing on the real Kafka: exact stats, quarantine, detection quality, exactly-once."""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from confluent_kafka.admin import AdminClient

from bench.harness import (
    ProcessingRun,
    as_rows,
    create_topic,
    produce,
    promote_detector,
    read_topic,
    simulate,
)
from fleetstream import infra
from processing.evaluate import evaluate, format_scores
from simulator import FleetConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

WINDOW_MS = 60_000
GRACE_MS = 10_000
# Held out: first run on 2026-12-05 after that day's changes, never tuned on. The seed
# before (2024) became a tuning seed once detector changes were judged on it
# (docs/processing.md §9); judge a change on this one and it must be replaced too.
UNSEEN_SEED = 90210
# 20 cars with 5 episodes per car and day: 102 labelled episodes, at least 5 of each kind
# (30 cars with 4: 144, in 1.5x the records; the suite's slowest fixture).
CARS = 20


def _disorder(records: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Duplicate ~1 % of records and swap some consecutive same-car records (within grace)."""
    out = list(records)
    last_index: dict[str, int] = {}
    for i, record in enumerate(list(out)):
        vid = record["vehicle_id"]
        j = last_index.get(vid)
        if j is not None and rng.random() < 0.01 and record["ts"] - out[j]["ts"] < GRACE_MS // 2:
            out[i], out[j] = out[j], out[i]
        last_index[vid] = i
    # Re-send ~1 % of records a few messages later, as a redelivery would.
    result: list[dict[str, Any]] = []
    pending: list[tuple[int, dict[str, Any]]] = []
    for i, record in enumerate(out):
        result.append(record)
        if rng.random() < 0.01:
            pending.append((i + rng.randint(1, 30), record))
        while pending and pending[0][0] <= i:
            result.append(pending.pop(0)[1])
    result.extend(r for _, r in pending)
    return result


def _blank_rates(records: list[dict[str, Any]], labels: list[Any], rng: random.Random) -> None:
    """Null the power or fuel rate of some records, so stats meet the 90 % coverage rule.

    Only records of cars not driving and away from their labelled episodes: the
    detection figures of this seed stay those of docs/processing.md. One car loses its
    rate for a whole hour (windows without any), the others ~4 % of theirs (some
    windows just under 90 %).
    """
    busy: dict[str, list[tuple[int, int]]] = {}
    for label in labels:
        busy.setdefault(label["vehicle_id"], []).append(
            (label["start_ts"] - 3_600_000, label["end_ts"] + 3_600_000)
        )
    first = records[0]["ts"]
    for r in records:
        if r["state"] == "driving" or any(
            a <= r["ts"] <= b for a, b in busy.get(r["vehicle_id"], ())
        ):
            continue
        hour = r["vehicle_id"] == "veh-00001" and 6 * 3_600_000 <= r["ts"] - first < 7 * 3_600_000
        if hour or rng.random() < 0.04:
            r["power_kw" if r["powertrain"] == "ev" else "fuel_rate_lph"] = None


BAD_PAYLOADS = [
    b"not json",
    b"[1, 2, 3]",
    b'{"schema": 2}',
    b"\xff\xfe\xfd",
    b"",
]


@pytest.fixture(scope="module")
def processed_day(
    brokers: infra.InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A seeded day (20 cars, 0.2 Hz) with duplicates, disorder and bad records, processed once."""
    workdir = tmp_path_factory.mktemp("processing")
    config = FleetConfig(
        vehicles=CARS, duration_s=86400, rate_hz=0.2, seed=UNSEEN_SEED, anomaly_rate=5.0
    )
    records, labels = simulate(config)
    _blank_rates(records, labels, random.Random(2))
    rng = random.Random(1)
    stream = _disorder(records, rng)
    rows = as_rows(stream)
    bad = []
    for i in range(200):
        position = rng.randrange(len(rows))
        key = rows[position][0]
        bad.append(BAD_PAYLOADS[i % len(BAD_PAYLOADS)])
        rows.insert(position, (key, BAD_PAYLOADS[i % len(BAD_PAYLOADS)], rows[position][2]))
    # An unsupervised consumption model trained on normal simulator data (another seed,
    # 40 cars for 6 h); the pipeline loads it through the real registry path.
    registry = workdir / "registry"
    version = promote_detector(registry)
    run = ProcessingRun(
        brokers.kafka_bootstrap, f"pr{uuid.uuid4().hex[:10]}", workdir, model_dir=registry
    )
    create_topic(brokers.kafka_bootstrap, run.topics["input"])
    produce(brokers.kafka_bootstrap, run.topics["input"], rows)
    run.start()
    run.wait_consumed(len(rows))
    exit_code = run.stop()
    t = run.topics
    admin = AdminClient({"bootstrap.servers": brokers.kafka_bootstrap})
    on_broker = admin.list_topics(timeout=10).topics
    return {
        "model_version": version,
        "records": stream,
        "labels": labels,
        "exit_code": exit_code,
        "bad": bad,
        "stats": [
            orjson.loads(r.value) for r in read_topic(brokers.kafka_bootstrap, t["stats"], expect=1)
        ],
        "alerts": [
            orjson.loads(r.value)
            for r in read_topic(brokers.kafka_bootstrap, t["alerts"], expect=1)
        ],
        "sessions": [
            orjson.loads(r.value)
            for r in read_topic(brokers.kafka_bootstrap, t["sessions"], expect=1)
        ],
        "quarantine": read_topic(brokers.kafka_bootstrap, t["quarantine"], expect=len(bad)),
        "log": run.log(),
        "full_log": run.log_path.read_text("utf-8"),
        "topics": t,
        "partitions": {role: len(on_broker[name].partitions) for role, name in t.items()},
    }


def _pandas_stats(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The documented formulas, computed independently with pandas."""
    df = pd.DataFrame(records)
    df["window_start"] = df["ts"] - df["ts"] % WINDOW_MS
    df["arrival"] = np.arange(len(df))
    before = df.groupby(["vehicle_id", "window_start"]).size()
    df = df.sort_values("arrival").drop_duplicates(
        ["vehicle_id", "window_start", "seq", "ts"], keep="first"
    )
    dup_counts = before - df.groupby(["vehicle_id", "window_start"]).size()
    df = df.sort_values(["vehicle_id", "window_start", "ts", "seq"])
    # A seq that does not grow from one sample to the next is a restart, not a gap.
    df["gap"] = (df.groupby(["vehicle_id", "window_start"])["seq"].diff() - 1).clip(lower=0)
    ev = df["powertrain"] == "ev"
    df["rate"] = np.where(ev, df["power_kw"], df["fuel_rate_lph"])
    df["level"] = np.where(ev, df["battery_level_pct"], df["fuel_level_pct"])
    df["temp"] = np.where(ev, df["battery_temp_c"], df["coolant_temp_c"])
    df["tpms_min"] = df[["tpms_fl_bar", "tpms_fr_bar", "tpms_rl_bar", "tpms_rr_bar"]].min(axis=1)
    g = df.groupby(["vehicle_id", "window_start"], sort=False)
    df["dt_h"] = g["ts"].diff() / 3_600_000.0
    df["rate_prev"] = g["rate"].shift(1)
    df["used_part"] = df["rate_prev"].clip(lower=0) * df["dt_h"]
    df["added_part"] = (-df["rate_prev"]).clip(lower=0) * df["dt_h"]
    df["covered_h"] = df["dt_h"].where(df["rate_prev"].notna(), 0.0)
    g = df.groupby(["vehicle_id", "window_start"], sort=False)
    out = pd.DataFrame(
        {
            "powertrain": g["powertrain"].first(),
            "samples": g.size(),
            "first_seq": g["seq"].min(),
            "last_seq": g["seq"].max(),
            "distance_km": (g["odometer_km"].last() - g["odometer_km"].first()).clip(lower=0),
            "avg_speed_kmh": g["speed_kmh"].mean(),
            "max_speed_kmh": g["speed_kmh"].max(),
            "used": g["used_part"].sum(),
            "added": g["added_part"].sum(),
            "covered_h": g["covered_h"].sum(),
            "span_h": (g["ts"].last() - g["ts"].first()) / 3_600_000.0,
            "level_start_pct": g["level"].first(),
            "level_end_pct": g["level"].last(),
            "level_min_pct": g["level"].min(),
            "level_max_pct": g["level"].max(),
            "max_temp_c": g["temp"].max(),
            "min_tpms_bar": g["tpms_min"].min(),
        }
    )
    out["missing"] = g["gap"].sum().astype(int)
    out["duplicates"] = dup_counts.reindex(out.index).fillna(0).astype(int)
    is_ev = out["powertrain"] == "ev"
    # The rate is known over at least 90 % of the integrated span (docs/processing.md §3).
    out["known"] = (out["covered_h"] > 0) & (out["covered_h"] >= 0.9 * out["span_h"])
    known = out["known"]
    enough = (out["distance_km"] >= 0.1) & known
    out["energy_used_kwh"] = out["used"].where(is_ev & known)
    out["energy_added_kwh"] = out["added"].where(is_ev & known)
    out["fuel_used_l"] = out["used"].where(~is_ev & known)
    out["consumption_wh_per_km"] = (1000 * out["used"] / out["distance_km"]).where(is_ev & enough)
    out["consumption_l_per_100km"] = (100 * out["used"] / out["distance_km"]).where(~is_ev & enough)
    return out


COMPARED = (
    "samples", "first_seq", "last_seq", "missing", "duplicates", "distance_km", "avg_speed_kmh",
    "max_speed_kmh", "energy_used_kwh", "energy_added_kwh", "fuel_used_l", "consumption_wh_per_km",
    "consumption_l_per_100km", "level_start_pct", "level_end_pct", "level_min_pct", "level_max_pct",
    "max_temp_c", "min_tpms_bar",
)  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return a is None
    if a is None:
        return False
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def test_every_stats_record_equals_the_pandas_computation(processed_day: dict[str, Any]) -> None:
    expected = _pandas_stats(processed_day["records"])
    stats = processed_day["stats"]
    keys = [(s["vehicle_id"], s["window_start"]) for s in stats]
    assert len(keys) == len(set(keys)), "a window was emitted twice"
    # Windows still open at the end of the data (the last ones per partition) are not emitted.
    assert len(stats) >= len(expected) - 2 * CARS
    mismatches = []
    for s in stats:
        row = expected.loc[(s["vehicle_id"], s["window_start"])]
        assert s["window_end"] == s["window_start"] + WINDOW_MS
        for name in COMPARED:
            if not _same(s[name], row[name]):
                mismatches.append((s["vehicle_id"], s["window_start"], name, s[name], row[name]))
    assert not mismatches, mismatches[:10]
    assert sum(s["duplicates"] for s in stats) > 0  # the disorder was real
    # The coverage rule decided windows both ways: partly and wholly without a rate.
    unknown = expected[~expected["known"] & (expected["samples"] > 1)]
    assert (unknown["covered_h"] > 0).sum() > 10
    assert (unknown["covered_h"] == 0).sum() > 5
    assert sum(1 for s in stats if s["consumption_wh_per_km"] is not None) > 100


def test_bad_records_are_quarantined_and_the_app_never_crashed(
    processed_day: dict[str, Any],
) -> None:
    assert processed_day["exit_code"] == 0, processed_day["log"]
    quarantined = processed_day["quarantine"]
    assert len(quarantined) == len(processed_day["bad"])
    assert Counter(r.value for r in quarantined) == Counter(processed_day["bad"])
    reasons = {r.headers["reason"].decode().split(":")[0] for r in quarantined}
    assert reasons == {"not_json", "not_object", "unknown_schema"}
    assert all(r.headers.get("detail") for r in quarantined)


def test_detection_quality_on_an_unseen_seed(processed_day: dict[str, Any]) -> None:
    alerts = processed_day["alerts"]
    scores = evaluate(processed_day["labels"], alerts)
    print("\n" + format_scores(scores))  # noqa: T201 - the report row of this test
    assert scores["overall"].f1 >= 0.9
    for kind, score in scores.items():
        assert score.labels > 0, kind
        assert score.f1 >= 0.8, (kind, score)
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids))
    raised = Counter(a["episode_id"] for a in alerts if a["status"] == "raised")
    cleared = Counter(a["episode_id"] for a in alerts if a["status"] == "cleared")
    assert all(n == 1 for n in raised.values())
    assert set(cleared) <= set(raised)
    for alert in alerts:
        assert alert["message"]
        assert alert["evidence"]
        model = f"model:{processed_day['model_version']}"
        assert alert["detector"] == (model if alert["kind"] == "high_consumption" else "rule:v1")


def test_sessions_are_consistent(processed_day: dict[str, Any]) -> None:
    sessions = processed_day["sessions"]
    kinds = Counter(s["kind"] for s in sessions)
    assert kinds["drive"] > 0
    assert kinds["idle"] > 0
    assert kinds["charge"] > 0
    for s in sessions:
        assert s["end_ts"] > s["start_ts"]
        if s["kind"] == "drive" and s["distance_km"] is not None:
            assert s["distance_km"] >= 0
        if s["kind"] == "charge":
            assert s["energy_added_kwh"] is not None
            assert s["energy_added_kwh"] >= 0


def test_processing_created_its_output_topics_in_one_request(
    processed_day: dict[str, Any],
) -> None:
    # The test created the input topic; processing created the five output topics at once,
    # with its configured partition count (4 by default), before Quix looked for them.
    log = processed_day["full_log"].splitlines()
    [line] = [line for line in log if "created topics" in line]
    outputs = ("stats", "sessions", "alerts", "shadow", "quarantine")
    assert sorted(line.split("created topics ")[1].split(", ")) == sorted(
        processed_day["topics"][role] for role in outputs
    )
    assert all(processed_day["partitions"][role] == 4 for role in outputs)
