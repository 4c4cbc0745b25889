"""The decoded-state cache: it returns the kept dict only while the stored bytes match."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from quixstreams.utils.json import dumps as quix_dumps

from processing.detectors import detect
from processing.sessions import track
from processing.statecache import DecodedCache
from processing.stats import to_sample
from processing.windows import add_sample
from simulator import FleetConfig, iter_records
from telemetry.contract import validate

pytestmark = pytest.mark.unit


class _State:
    """A key's state as Quix stores it: bytes by name (and chunk keys for the windows)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def get_bytes(self, key: str) -> bytes | None:
        return self.values.get(key)

    def set_bytes(self, key: str, value: bytes) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def test_nothing_stored_reads_as_an_empty_dict() -> None:
    assert DecodedCache().load(_State(), "car", "a") == {}


def test_the_stored_dict_comes_back_while_the_bytes_match() -> None:
    cache, state = DecodedCache(), _State()
    car = {"last_ts": 1, "windows": [[0, "ev", False, 1, "AA=="]]}
    cache.store(state, "car", "a", car)
    # A restore or a RocksDB read returns equal bytes in a new object.
    state.values["car"] = bytes(bytearray(state.values["car"]))
    assert cache.load(state, "car", "a") is car
    assert (cache.hits, cache.misses) == (1, 0)


def test_bytes_written_elsewhere_are_decoded() -> None:
    cache, state = DecodedCache(), _State()
    cache.store(state, "car", "a", {"last_ts": 1})
    state.values["car"] = orjson.dumps({"last_ts": 2})  # a rollback, a restore, another step
    assert cache.load(state, "car", "a") == {"last_ts": 2}
    assert (cache.hits, cache.misses) == (0, 1)


def test_a_dict_changed_but_not_stored_is_not_handed_out_again() -> None:
    cache, state = DecodedCache(), _State()
    cache.store(state, "car", "a", {"last_ts": 1})
    car = cache.load(state, "car", "a")
    car["last_ts"] = 99  # the record failed before store()
    again = cache.load(state, "car", "a")
    assert again == {"last_ts": 1}
    assert again is not car


def test_keys_do_not_share_entries() -> None:
    cache, state_a, state_b = DecodedCache(), _State(), _State()
    cache.store(state_a, "car", "a", {"v": 1})
    cache.store(state_b, "car", "b", {"v": 1})
    assert cache.load(state_b, "car", "b") == {"v": 1}
    assert cache.load(state_a, "car", "a") == {"v": 1}
    assert cache.hits == 2


def test_a_full_cache_starts_again() -> None:
    cache, state = DecodedCache(limit=2), _State()
    for ident in ("a", "b", "c"):
        cache.store(state, "car", ident, {"v": ident})
    # "c" cleared "a" and "b"; the bytes under "car" are c's, so "c" still hits.
    assert cache.load(state, "car", "c") == {"v": "c"}
    assert cache.hits == 1
    with pytest.raises(ValueError, match="limit"):
        DecodedCache(limit=0)


def _exact(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (a tuple is not a list here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_exact(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_exact(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_the_car_state_survives_a_json_round_trip_exactly() -> None:
    # The cache hands back the dict instead of decoding its bytes: the two must not
    # differ in anything the pipeline could see (tuples, int keys, NaN), and the bytes
    # must be what Quix's own serializer writes, so old and new state read alike.
    config = FleetConfig(vehicles=12, duration_s=400, seed=5, anomaly_rate=400.0)
    cars: dict[str, dict[str, Any]] = {}
    stores: dict[str, _State] = {}
    raised = 0
    for raw in iter_records(config):
        record: dict[str, Any] = dict(validate(orjson.loads(orjson.dumps(raw)), require_seq=False))
        vid = record["vehicle_id"]
        car = cars.setdefault(vid, {})
        raised += len(detect(car, record))
        track(car, record)
        ts = record["ts"]
        start = ts - ts % 60_000
        add_sample(
            car,
            stores.setdefault(vid, _State()),
            start,
            ts - start,
            powertrain=record["powertrain"],
            sample=to_sample(record),
            marker_offset_ms=10_000,
        )
        encoded = orjson.dumps(car)
        assert encoded == quix_dumps(car)
        assert _exact(orjson.loads(encoded), car), car
    assert raised > 0  # the detectors' episode state was exercised too
