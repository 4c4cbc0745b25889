"""State values kept between records, valid only while nothing else wrote them.

:class:`DecodedCache` keeps decoded JSON values (the car's state, the window detectors'
memory); :class:`BytesCache` raw ones (the windows' sample chunks).

Every record reads its car's state (~1.4 KB of JSON) and writes it back. Decoding it
again was ~7 % of processing's time (py-spy, docs/benchmarks-history.md), although the value
read is, almost always, the dict this process wrote for the car's previous record.
:class:`DecodedCache` keeps that dict next to the bytes it was stored as.

At 1 Hz a car has one record per checkpoint, so its state is never in the checkpoint's
transaction yet and every read also went to RocksDB: 11 % of the processing thread in a
py-spy profile at 10,000 cars. So an entry is handed back without reading the state when
it was stored into the same Quix store partition object that the record's state uses
now. Quix builds a new one whenever a partition is assigned (after a rebalance, with a
restore from the changelog), and a checkpoint that fails stops the application, so while
the object is the same, what it holds under the key is what this cache stored. One Quix
path breaks that: a sink's backpressure aborts a checkpoint, rewinds the consumer and
keeps the partition objects. Processing writes only to topics, never to a sink; adding a
sink means dropping the unread path (``load`` would hand back discarded writes). Where the
store partition cannot be seen (another Quix, a test double), the state is read and the
entry is used only when the bytes match; anything else decodes the stored bytes. The
bytes are what Quix's JSON serializer writes for the same value, so state written either
way reads back either way.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final, Protocol

import orjson

from processing.windows import SampleStore

DEFAULT_LIMIT: Final = 100_000


class BytesState(Protocol):
    """The part of Quix's per-key ``State`` the cache uses."""

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None."""

    def set_bytes(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``."""


def store_partition(state: object) -> object | None:
    """The Quix store partition behind a record's state, or None when it is not visible.

    Read from Quix's private attributes (``TransactionState._transaction._partition`` in
    quixstreams 3.28): None, and so a state read per record, if they move.
    """
    transaction = getattr(state, "_transaction", None)
    return getattr(transaction, "_partition", None)


# The prefix of partition-wide state values. A car's state is prefixed by its message
# key, which is UTF-8 (other keys are quarantined as bad_key), so this is no car's.
_PARTITION_PREFIX: Final = b"\xff\xfefleetstream-partition"


def get_partition_value(state: object, key: str) -> Any:
    """A value kept for the whole store partition behind ``state`` (None: unset or unknown).

    Written in the record's transaction, so it is committed (and lost) with the cars'
    state: after a restart it is the value as of the last commit.
    """
    transaction = getattr(state, "_transaction", None)
    getter = getattr(transaction, "get", None)
    return getter(key, prefix=_PARTITION_PREFIX) if getter is not None else None


def set_partition_value(state: object, key: str, value: Any) -> None:
    """Keep ``value`` for the whole store partition behind ``state`` (see the getter)."""
    transaction = getattr(state, "_transaction", None)
    setter = getattr(transaction, "set", None)
    if setter is not None:
        setter(key, value, prefix=_PARTITION_PREFIX)


class DecodedCache:
    """JSON state values by key, decoded once per write instead of once per read.

    Args:
        limit: Entries kept at most; when full, the cache starts again empty (a miss
            only costs a decode).
    """

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            msg = f"limit must be >= 1, got {limit}"
            raise ValueError(msg)
        self._limit = limit
        # ident -> (stored bytes, the dict, the store partition it was stored into)
        self._entries: dict[Hashable, tuple[bytes, dict[str, Any], object | None]] = {}
        self.hits = 0
        self.misses = 0

    def load(self, state: BytesState, name: str, ident: Hashable) -> dict[str, Any]:
        """The value stored under ``name`` (an empty dict when there is none).

        The caller owns the dict it gets and must :meth:`store` it once changed: the
        entry leaves the cache here, so a record that fails half-way cannot leave a
        changed dict behind that no longer matches the stored bytes.

        Args:
            state: The key's state.
            name: The state key.
            ident: Identifies the state across records, e.g. (topic, partition, key).
        """
        entry = self._entries.pop(ident, None)
        if entry is not None and entry[2] is not None and entry[2] is store_partition(state):
            self.hits += 1
            return entry[1]
        raw = state.get_bytes(name)
        if raw is None:
            return {}
        if entry is not None and (entry[0] is raw or entry[0] == raw):
            self.hits += 1
            return entry[1]
        self.misses += 1
        value: dict[str, Any] = orjson.loads(raw)
        return value

    def peek(self, state: BytesState, ident: Hashable) -> dict[str, Any] | None:
        """The kept value, left in the cache, when it is known to be the stored one.

        Only for reading: a caller that changes the dict must :meth:`load` it. None
        when the entry cannot be trusted without reading the state (see the module).
        """
        entry = self._entries.get(ident)
        if entry is not None and entry[2] is not None and entry[2] is store_partition(state):
            self.hits += 1
            return entry[1]
        return None

    def store(self, state: BytesState, name: str, ident: Hashable, value: dict[str, Any]) -> None:
        """Write ``value`` under ``name`` and keep it for the next :meth:`load`."""
        raw = orjson.dumps(value)
        state.set_bytes(name, raw)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[ident] = (raw, value, store_partition(state))


class BytesCache:
    """Raw state values (the windows' sample chunks) as this process wrote them.

    A window's close read its 3 or 4 sample chunks back from RocksDB: ~15 µs each, a
    quarter of the close's own work at 10,000 cars (py-spy, docs/benchmarks-history.md).
    A chunk is written once and read once, at the close, by the process that wrote it,
    unless a rebalance moved the car in between. An entry is used under the rule of
    :class:`DecodedCache`: only while the record's state has the store partition it was
    written into; anything else reads the state.

    Args:
        limit: Entries kept at most (~1.2 KB each for sample chunks); when full, the
            cache starts again empty (a miss only costs a read).
    """

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            msg = f"limit must be >= 1, got {limit}"
            raise ValueError(msg)
        self._limit = limit
        # (ident, key) -> (bytes, the store partition they were written into)
        self._entries: dict[tuple[Hashable, str], tuple[bytes, object]] = {}
        self.hits = 0
        self.misses = 0

    def view(self, state: SampleStore, ident: Hashable) -> CachedState:
        """``state`` (identified across records by ``ident``) read through the cache."""
        return CachedState(self, state, ident)

    def get(self, state: SampleStore, ident: Hashable, key: str) -> bytes | None:
        """``state.get_bytes(key)``, from the cache when its entry can be trusted."""
        entry = self._entries.get((ident, key))
        if entry is not None and entry[1] is store_partition(state):
            self.hits += 1
            return entry[0]
        self.misses += 1
        return state.get_bytes(key)

    def set(self, state: SampleStore, ident: Hashable, key: str, value: bytes) -> None:
        """``state.set_bytes(key, value)``, kept for the next :meth:`get`."""
        state.set_bytes(key, value)
        partition = store_partition(state)
        if partition is None:
            return  # not visible: the entry could never be trusted
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[ident, key] = (value, partition)

    def delete(self, state: SampleStore, ident: Hashable, key: str) -> None:
        """``state.delete(key)``, and the entry with it."""
        state.delete(key)
        self._entries.pop((ident, key), None)


class CachedState:
    """One key's state with its raw values read through a :class:`BytesCache`."""

    __slots__ = ("_cache", "_ident", "_state")

    def __init__(self, cache: BytesCache, state: SampleStore, ident: Hashable) -> None:
        self._cache = cache
        self._state = state
        self._ident = ident

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None."""
        return self._cache.get(self._state, self._ident, key)

    def set_bytes(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``."""
        self._cache.set(self._state, self._ident, key, value)

    def delete(self, key: str) -> None:
        """Remove ``key``."""
        self._cache.delete(self._state, self._ident, key)
