"""Seeded generator of bad telemetry payloads for the fuzz cases.

Every payload is checked against the contract here (``telemetry.contract``), so a
generated payload that happens to be valid is never counted as bad, and the test knows
the exact quarantine reason to expect for each one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from telemetry.contract import MAX_PAYLOAD_BYTES, ContractError, decode, validate

NUMBER_FIELDS: Final = (
    "ts", "seq", "lat", "lon", "speed_kmh", "odometer_km", "heading_deg", "elevation_m",
    "outside_temp_c", "tpms_fl_bar",
)  # fmt: skip
# Kinds named in issue 9, plus structural ones (not an object, missing field).
KINDS: Final = (
    "random_bytes",
    "wrong_type",
    "nan_inf",
    "huge_number",
    "deep_nesting",
    "oversize",
    "bad_utf8",
    "not_object",
    "missing_field",
    "bad_enum",
)


@dataclass(frozen=True, slots=True)
class BadPayload:
    """One generated bad payload and the quarantine reason the contract gives it."""

    kind: str
    payload: bytes
    reason: str


def _random_bytes(rng: random.Random, _record: dict[str, Any]) -> bytes:
    return rng.randbytes(rng.randint(1, 400))


def _wrong_type(rng: random.Random, record: dict[str, Any]) -> bytes:
    wrong: list[Any] = ["fast", [1, 2], {"v": 1}, True, "12.5"]
    field = rng.choice([*NUMBER_FIELDS, "vehicle_id", "powertrain", "state", "schema"])
    return orjson.dumps({**record, field: rng.choice(wrong)})


def _nan_inf(rng: random.Random, record: dict[str, Any]) -> bytes:
    # JSON has no NaN or infinity; producers that write them emit these tokens.
    token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"nan"])
    field = rng.choice(NUMBER_FIELDS)
    return orjson.dumps({**record, field: 0}).replace(
        f'"{field}":0'.encode(), f'"{field}":'.encode() + token
    )


def _huge_number(rng: random.Random, record: dict[str, Any]) -> bytes:
    field = rng.choice(NUMBER_FIELDS)
    text = rng.choice(["1e300", "-1e300", "9" * rng.randint(20, 400), "1.7976931348623157e308"])
    return orjson.dumps({**record, field: 0}).replace(
        f'"{field}":0'.encode(), f'"{field}":{text}'.encode()
    )


def _deep_nesting(rng: random.Random, record: dict[str, Any]) -> bytes:
    depth = rng.randint(1100, 6000)  # beyond the JSON parser's 1024 levels
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    return orjson.dumps(record)[:-1] + b',"extra":' + nested + b"}"


def _oversize(rng: random.Random, record: dict[str, Any]) -> bytes:
    size = MAX_PAYLOAD_BYTES + rng.randint(1, 8 * 1024)
    pad = "x" * (size - len(orjson.dumps(record)))
    return orjson.dumps({**record, "note": pad})


def _bad_utf8(rng: random.Random, record: dict[str, Any]) -> bytes:
    bad = rng.choice(
        [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80"]
    )
    text = orjson.dumps(record)
    if rng.random() < 0.5:
        return text.replace(b'"state":"', b'"state":"' + bad, 1)
    return text.replace(b'"vehicle_id":"', b'"vehicle_id":"' + bad, 1)


def _not_object(rng: random.Random, record: dict[str, Any]) -> bytes:
    return orjson.dumps(rng.choice([[record], "text", 42, None, [], True]))


def _missing_field(rng: random.Random, record: dict[str, Any]) -> bytes:
    field = rng.choice(["schema", "vehicle_id", "ts", "seq", "powertrain", "state"])
    return orjson.dumps({k: v for k, v in record.items() if k != field})


def _bad_enum(rng: random.Random, record: dict[str, Any]) -> bytes:
    field, value = rng.choice(
        [("powertrain", "steam"), ("state", "flying"), ("schema", 99), ("vehicle_id", "a/b#")]
    )
    return orjson.dumps({**record, field: value})


_MAKERS: Final[dict[str, Callable[[random.Random, dict[str, Any]], bytes]]] = {
    "random_bytes": _random_bytes,
    "wrong_type": _wrong_type,
    "nan_inf": _nan_inf,
    "huge_number": _huge_number,
    "deep_nesting": _deep_nesting,
    "oversize": _oversize,
    "bad_utf8": _bad_utf8,
    "not_object": _not_object,
    "missing_field": _missing_field,
    "bad_enum": _bad_enum,
}


def bad_payloads(
    count: int, templates: list[bytes], seed: int = 9, *, require_seq: bool = True
) -> list[BadPayload]:
    """``count`` bad payloads, the kinds in turn, each derived from a valid template.

    Args:
        count: How many to generate.
        templates: Valid v1 payloads to corrupt.
        seed: Random seed; the same seed gives the same payloads.
        require_seq: The contract as ingest applies it (True) or as processing does
            (False: ``seq`` may be missing or null).

    Returns:
        The payloads with their kind and expected quarantine reason.
    """
    rng = random.Random(seed)
    out: list[BadPayload] = []
    while len(out) < count:
        kind = KINDS[len(out) % len(KINDS)]
        payload = _MAKERS[kind](rng, orjson.loads(rng.choice(templates)))
        try:
            validate(decode(payload), require_seq=require_seq)
        except ContractError as exc:
            out.append(BadPayload(kind, payload, exc.reason))
        # A mutation that happens to be valid is dropped and the kind drawn again.
    return out
