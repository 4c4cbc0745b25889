"""Decoded state values kept between records, valid only while the stored bytes match.

Every record reads its car's state (~1.4 KB of JSON) and writes it back. Decoding it
again was ~7 % of processing's time (py-spy, docs/benchmarks.md), although the value
read is, almost always, the dict this process wrote for the car's previous record.
:class:`DecodedCache` keeps that dict next to the bytes it was stored as, and hands it
back only when the state returns those same bytes; anything else — a rollback, a
rebalance, a restore from the changelog, a write by another step — decodes the stored
bytes as before. The bytes are what Quix's JSON serializer writes for the same value,
so state written either way reads back either way.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final, Protocol

import orjson

DEFAULT_LIMIT: Final = 100_000


class BytesState(Protocol):
    """The part of Quix's per-key ``State`` the cache uses."""

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None."""

    def set_bytes(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``."""


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
        self._entries: dict[Hashable, tuple[bytes, dict[str, Any]]] = {}
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
        raw = state.get_bytes(name)
        entry = self._entries.pop(ident, None)
        if raw is None:
            return {}
        if entry is not None and (entry[0] is raw or entry[0] == raw):
            self.hits += 1
            return entry[1]
        self.misses += 1
        value: dict[str, Any] = orjson.loads(raw)
        return value

    def store(self, state: BytesState, name: str, ident: Hashable, value: dict[str, Any]) -> None:
        """Write ``value`` under ``name`` and keep it for the next :meth:`load`."""
        raw = orjson.dumps(value)
        state.set_bytes(name, raw)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[ident] = (raw, value)
