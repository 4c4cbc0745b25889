"""The decoded-state cache: it returns the kept dict only while the stored bytes match."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import orjson
import pytest
from quixstreams import Application
from quixstreams.models import TopicConfig
from quixstreams.models.messagecontext import MessageContext
from quixstreams.models.topics import Topic
from quixstreams.utils.json import dumps as quix_dumps

from processing import _main as processing_main
from processing import pipeline as processing_pipeline
from processing.detectors import detect
from processing.sessions import track
from processing.statecache import BytesCache, DecodedCache, store_partition
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


class _Transaction:
    def __init__(self, partition: object) -> None:
        self._partition = partition


class _QuixLikeState(_State):
    """A state whose store partition is visible, as in Quix; counts its reads."""

    def __init__(self, partition: object) -> None:
        super().__init__()
        self._transaction = _Transaction(partition)
        self.reads = 0

    def get_bytes(self, key: str) -> bytes | None:
        self.reads += 1
        return super().get_bytes(key)


def test_an_entry_stored_into_the_same_store_partition_is_used_without_a_read() -> None:
    cache, state = DecodedCache(), _QuixLikeState(object())
    car = {"last_ts": 1}
    cache.store(state, "car", "a", car)
    assert cache.load(state, "car", "a") is car
    assert (state.reads, cache.hits) == (0, 1)


def test_peek_leaves_the_entry_and_trusts_only_the_same_store_partition() -> None:
    cache, state = DecodedCache(), _QuixLikeState(object())
    car = {"last_ts": 1}
    cache.store(state, "car", "a", car)
    assert cache.peek(state, "a") is car
    assert cache.peek(state, "a") is car  # still there
    assert cache.load(state, "car", "a") is car
    assert cache.peek(state, "a") is None  # load took it out until the next store
    assert cache.peek(_QuixLikeState(object()), "a") is None
    cache.store(state, "car", "a", car)
    assert cache.peek(_QuixLikeState(object()), "a") is None  # another partition object
    assert cache.peek(_State(), "a") is None  # no visible partition: not trusted
    assert state.reads == 0


def test_a_new_store_partition_reads_and_decodes_the_state() -> None:
    cache, before = DecodedCache(), _QuixLikeState(object())
    cache.store(before, "car", "a", {"last_ts": 1})
    # Reassigned after a rebalance: a new store partition, restored from the changelog
    # with what another process wrote meanwhile.
    after = _QuixLikeState(object())
    after.values["car"] = orjson.dumps({"last_ts": 7})
    assert cache.load(after, "car", "a") == {"last_ts": 7}
    assert (after.reads, cache.misses) == (1, 1)


def test_quix_states_show_their_store_partition_until_it_is_reassigned(tmp_path: Path) -> None:
    app = Application(
        broker_address="127.0.0.1:1",  # never contacted
        consumer_group="unit",
        state_dir=tmp_path,
        use_changelog_topics=False,
        loglevel=None,
    )
    topic = Topic("telemetry", value_deserializer="bytes")
    topic.broker_config = TopicConfig(
        num_partitions=1,
        replication_factor=1,
        extra_config={"retention.ms": "-1", "retention.bytes": "-1"},
    )
    sdf = app.dataframe(topic)
    seen: list[object | None] = []

    def look(value: bytes, state: Any) -> bytes:
        seen.append(store_partition(state))
        return value

    sdf = sdf.apply(look, stateful=True)
    manager = app._state_manager
    context = app._processing_context
    try:
        for round_ in range(2):
            manager.on_partition_assign(sdf.stream_id, 0, {})
            context.init_checkpoint()  # type: ignore[no-untyped-call]
            for offset, key in enumerate((b"car-1", b"car-2")):
                ctx = MessageContext(topic.name, 0, offset + 2 * round_, 1)
                sdf.test(b"x", key=key, timestamp=0, ctx=ctx)
            manager.on_partition_revoke(sdf.stream_id, 0)
    finally:
        manager.close()
    first, second, third, fourth = seen
    # Every key of a partition sees the same store partition while it stays assigned;
    # a new assignment is a new object, so entries stored before it are not trusted.
    assert first is not None
    assert first is second
    assert third is fourth
    assert third is not first


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
            powertrain=record["powertrain"],
            sample=to_sample(record),
        )
        encoded = orjson.dumps(car)
        assert encoded == quix_dumps(car)
        assert _exact(orjson.loads(encoded), car), car
    assert raised > 0  # the detectors' episode state was exercised too


def test_processing_writes_to_no_sink() -> None:
    # DecodedCache trusts an entry while the store partition object is unchanged; a
    # sink's backpressure aborts a checkpoint without new objects (statecache docstring).
    for module in (processing_main, processing_pipeline):
        assert ".sink(" not in inspect.getsource(module), module.__name__


# ------------------------------------------------------------------ the sample chunks' cache


def test_a_chunk_written_into_the_same_store_partition_is_read_without_the_state() -> None:
    cache, state = BytesCache(), _QuixLikeState(object())
    view = cache.view(state, "a")
    view.set_bytes("w0.0", b"chunk")
    assert state.values["w0.0"] == b"chunk"  # written through
    assert view.get_bytes("w0.0") == b"chunk"
    assert (state.reads, cache.hits) == (0, 1)
    view.delete("w0.0")
    assert "w0.0" not in state.values
    assert view.get_bytes("w0.0") is None
    assert (state.reads, cache.misses) == (1, 1)


def test_a_chunk_of_another_store_partition_is_read_from_the_state() -> None:
    cache, before = BytesCache(), _QuixLikeState(object())
    cache.view(before, "a").set_bytes("w0.0", b"old")
    # Reassigned: restored from the changelog with what another process wrote meanwhile.
    after = _QuixLikeState(object())
    after.values["w0.0"] = b"new"
    assert cache.view(after, "a").get_bytes("w0.0") == b"new"
    assert after.reads == 1


def test_chunks_are_kept_per_key_and_only_where_the_partition_is_visible() -> None:
    cache, state = BytesCache(), _QuixLikeState(object())
    cache.view(state, "a").set_bytes("w0.0", b"a's")
    assert cache.view(state, "b").get_bytes("w0.0") == b"a's"  # one state here: read it
    assert state.reads == 1
    plain = _State()
    cache.view(plain, "c").set_bytes("w0.0", b"c's")
    plain.values["w0.0"] = b"changed"
    assert cache.view(plain, "c").get_bytes("w0.0") == b"changed"


def test_a_full_chunk_cache_starts_again() -> None:
    cache, state = BytesCache(limit=2), _QuixLikeState(object())
    view = cache.view(state, "a")
    for i in range(3):
        view.set_bytes(f"w0.{i}", bytes([i]))
    assert [view.get_bytes(f"w0.{i}") for i in range(3)] == [b"\x00", b"\x01", b"\x02"]
    assert (state.reads, cache.hits) == (2, 1)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        BytesCache(limit=0)
