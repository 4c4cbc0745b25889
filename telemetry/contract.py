"""Telemetry wire contract v1: field names, units, ranges, and the fast validator.

This module is the only place that lists the fields. Every service (ingest, processing,
dashboard, models, simulator) imports it; docs/telemetry.md documents it.

Rules:
- A payload is one JSON object of at most ``MAX_PAYLOAD_BYTES`` bytes.
- Every required key must be present. Identity fields (``schema``, ``vehicle_id``, ``ts``,
  ``powertrain``, ``state``) and ``seq`` must not be null; a measurement may be ``null``
  when the vehicle does not report it (the ``tesla`` adapter relies on that, and marks
  its records with ``seq: null`` because the source has no sequence number).
- Numbers must be finite and inside the documented range; ``true``/``false`` are not numbers.
- Unknown extra fields are allowed and passed through unchanged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter, le
from typing import Annotated, Any, Final, Literal, TypedDict

import msgspec
import orjson

from telemetry.errors import FleetstreamError

SCHEMA_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 64 * 1024
# Quarantine keeps the raw bytes, but a Kafka record must stay under the broker's
# message.max.bytes (1 MiB by default): larger payloads are cut to this and marked with a
# ``truncated_from_bytes`` header.
QUARANTINE_MAX_BYTES: Final = 512 * 1024
VEHICLE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
POWERTRAINS: Final = ("ev", "ice")
STATES: Final = ("parked", "driving", "charging", "refueling", "asleep")


class Problem(StrEnum):
    """Why a payload was rejected; used as the quarantine reason code."""

    OVERSIZE = "oversize"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNKNOWN_SCHEMA = "unknown_schema"
    MISSING = "missing"
    NULL = "null"
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_VALUE = "bad_value"


class ContractError(FleetstreamError):
    """A payload violates the telemetry contract.

    Attributes:
        problem: The kind of violation.
        field: The offending field, or None for whole-payload problems.
        detail: One human sentence.
    """

    def __init__(self, problem: Problem, field: str | None, detail: str) -> None:
        self.problem = problem
        self.field = field
        self.detail = detail
        where = f"field '{field}': " if field else ""
        super().__init__(f"{problem.value}: {where}{detail}")

    @property
    def reason(self) -> str:
        """Compact machine-readable reason, e.g. ``out_of_range:speed_kmh``."""
        return f"{self.problem.value}:{self.field}" if self.field else self.problem.value


@dataclass(frozen=True, slots=True)
class NumberField:
    """A numeric field with its unit and inclusive valid range."""

    name: str
    unit: str
    low: float
    high: float
    integer: bool = False
    nullable: bool = True
    doc: str = ""


# Ranges reject garbage, not unusual driving: they are wide on purpose.
COMMON_NUMBERS: Final = (
    NumberField(
        "ts", "ms since epoch", 0, 4_102_444_800_000, integer=True, nullable=False, doc="event time"
    ),
    NumberField(
        "seq", "count", 0, 2**63 - 1, integer=True, nullable=False, doc="+1 per message per vehicle"
    ),
    NumberField("lat", "deg", -90, 90),
    NumberField("lon", "deg", -180, 180),
    NumberField("speed_kmh", "km/h", 0, 1000),
    NumberField("odometer_km", "km", 0, 10_000_000),
    NumberField("heading_deg", "deg", 0, 360),
    NumberField("elevation_m", "m", -500, 9000),
    NumberField("outside_temp_c", "°C", -80, 70),
    NumberField("inside_temp_c", "°C", -80, 100),
    NumberField("tpms_fl_bar", "bar", 0, 15),
    NumberField("tpms_fr_bar", "bar", 0, 15),
    NumberField("tpms_rl_bar", "bar", 0, 15),
    NumberField("tpms_rr_bar", "bar", 0, 15),
)
EV_NUMBERS: Final = (
    NumberField("battery_level_pct", "%", 0, 100),
    NumberField("battery_capacity_kwh", "kWh", 0, 2000),
    NumberField("power_kw", "kW", -10_000, 10_000, doc="+ drawing from the battery, - charging"),
    NumberField("range_est_km", "km", 0, 5000),
    NumberField("battery_temp_c", "°C", -80, 200),
    NumberField("charger_power_kw", "kW", 0, 10_000),
    NumberField("charge_energy_added_kwh", "kWh", 0, 2000, doc="counter within a charging session"),
)
ICE_NUMBERS: Final = (
    NumberField("fuel_level_pct", "%", 0, 100),
    NumberField("fuel_tank_l", "L", 0, 5000),
    NumberField("fuel_rate_lph", "L/h", 0, 1000),
    NumberField("engine_rpm", "rpm", 0, 20_000),
    NumberField("coolant_temp_c", "°C", -80, 250),
    NumberField("fuel_added_l", "L", 0, 5000, doc="counter within a refuelling session"),
)

TEXT_FIELDS: Final = ("schema", "vehicle_id", "powertrain", "state")
COMMON_FIELDS: Final = (
    "schema", "vehicle_id", "ts", "seq", "powertrain", "state",
    *(f.name for f in COMMON_NUMBERS[2:]),
)  # fmt: skip
EV_FIELDS: Final = tuple(f.name for f in EV_NUMBERS)
ICE_FIELDS: Final = tuple(f.name for f in ICE_NUMBERS)
ALL_FIELDS: Final = (*COMMON_FIELDS, *EV_FIELDS, *ICE_FIELDS)
NUMBER_FIELDS: Final = {f.name: f for f in (*COMMON_NUMBERS, *EV_NUMBERS, *ICE_NUMBERS)}

Powertrain = Literal["ev", "ice"]
State = Literal["parked", "driving", "charging", "refueling", "asleep"]


class TelemetryRecord(TypedDict, total=False):
    """One validated v1 message (EV or ICE fields present according to ``powertrain``)."""

    schema: int
    vehicle_id: str
    ts: int
    seq: int | None
    powertrain: Powertrain
    state: State
    lat: float | None
    lon: float | None
    speed_kmh: float | None
    odometer_km: float | None
    heading_deg: float | None
    elevation_m: float | None
    outside_temp_c: float | None
    inside_temp_c: float | None
    tpms_fl_bar: float | None
    tpms_fr_bar: float | None
    tpms_rl_bar: float | None
    tpms_rr_bar: float | None
    battery_level_pct: float | None
    battery_capacity_kwh: float | None
    power_kw: float | None
    range_est_km: float | None
    battery_temp_c: float | None
    charger_power_kw: float | None
    charge_energy_added_kwh: float | None
    fuel_level_pct: float | None
    fuel_tank_l: float | None
    fuel_rate_lph: float | None
    engine_rpm: float | None
    coolant_temp_c: float | None
    fuel_added_l: float | None


_COMMON_CHECKS: Final = COMMON_NUMBERS[2:]
_BY_POWERTRAIN: Final = {"ev": EV_NUMBERS, "ice": ICE_NUMBERS}
# (name, low, high, integer, spec) of the nullable measurements, per powertrain, in the
# order validate() reports them: the fast path in validate() reads plain tuples.
_FAST_CHECKS: Final = {
    powertrain: tuple((f.name, f.low, f.high, f.integer, f) for f in (*_COMMON_CHECKS, *specific))
    for powertrain, specific in _BY_POWERTRAIN.items()
}
# Per powertrain: (values getter, lows, highs) of the same measurements, for the one pass
# in C that accepts the usual record. None of them is an integer field (a unit test says
# so), so "int or float" is the whole type check.
_FAST_RANGES: Final = {
    powertrain: (
        itemgetter(*(c[0] for c in checks)),
        tuple(c[1] for c in checks),
        tuple(c[2] for c in checks),
    )
    for powertrain, checks in _FAST_CHECKS.items()
}
_NUMBER_TYPES: Final = frozenset({int, float})


def _check_number(obj: dict[str, Any], spec: NumberField, *, nullable: bool) -> None:
    name = spec.name
    try:
        value = obj[name]
    except KeyError:
        raise ContractError(Problem.MISSING, name, "required field is missing") from None
    if value is None:
        if nullable:
            return
        raise ContractError(Problem.NULL, name, "must not be null")
    kind = type(value)
    if kind is float:
        if spec.integer:
            raise ContractError(Problem.WRONG_TYPE, name, f"expected an integer, got {value!r}")
        if not math.isfinite(value):
            raise ContractError(Problem.NOT_FINITE, name, f"{value!r} is not a finite number")
    elif kind is not int:
        # bool is a subclass of int, so compare exact types.
        got = type(value).__name__
        raise ContractError(Problem.WRONG_TYPE, name, f"expected a number ({spec.unit}), got {got}")
    if not spec.low <= value <= spec.high:
        detail = f"{value!r} {spec.unit} is outside [{spec.low:g}, {spec.high:g}]"
        raise ContractError(Problem.OUT_OF_RANGE, name, detail)


def validate(obj: object, *, require_seq: bool = True) -> TelemetryRecord:
    """Check a decoded payload against contract v1 and return it (not copied).

    Args:
        obj: The decoded JSON value.
        require_seq: When False, ``seq`` may be null (adapters whose source has none).

    Returns:
        The same object, typed as a record.

    Raises:
        ContractError: The first violation found, naming the field and the problem.
    """
    if type(obj) is not dict:
        raise ContractError(
            Problem.NOT_OBJECT, None, f"payload must be a JSON object, got {type(obj).__name__}"
        )
    schema = obj.get("schema", _MISSING)
    if schema is _MISSING:
        raise ContractError(Problem.MISSING, "schema", "required field is missing")
    for name in ("schema", "vehicle_id", "powertrain", "state"):
        if obj.get(name, _MISSING) is None:
            raise ContractError(Problem.NULL, name, "must not be null")
    if type(schema) is not int or schema != SCHEMA_VERSION:
        raise ContractError(
            Problem.UNKNOWN_SCHEMA, "schema", f"unknown schema version {schema!r}, expected 1"
        )
    vehicle_id = obj.get("vehicle_id", _MISSING)
    if vehicle_id is _MISSING:
        raise ContractError(Problem.MISSING, "vehicle_id", "required field is missing")
    if type(vehicle_id) is not str:
        raise ContractError(
            Problem.WRONG_TYPE, "vehicle_id", f"expected a string, got {type(vehicle_id).__name__}"
        )
    if VEHICLE_ID_PATTERN.fullmatch(vehicle_id) is None:
        raise ContractError(
            Problem.BAD_VALUE, "vehicle_id", "must be 1-64 characters of [A-Za-z0-9_-]"
        )
    _check_number(obj, COMMON_NUMBERS[0], nullable=False)
    _check_number(obj, COMMON_NUMBERS[1], nullable=not require_seq)
    powertrain = obj.get("powertrain", _MISSING)
    if powertrain is _MISSING:
        raise ContractError(Problem.MISSING, "powertrain", "required field is missing")
    specific = _BY_POWERTRAIN.get(powertrain) if type(powertrain) is str else None
    if specific is None:
        raise ContractError(
            Problem.BAD_VALUE, "powertrain", f"{powertrain!r} is not one of ev, ice"
        )
    state = obj.get("state", _MISSING)
    if state is _MISSING:
        raise ContractError(Problem.MISSING, "state", "required field is missing")
    if type(state) is not str or state not in STATES:
        raise ContractError(
            Problem.BAD_VALUE, "state", f"{state!r} is not one of {', '.join(STATES)}"
        )
    getter, lows, highs = _FAST_RANGES[powertrain]
    try:
        values = getter(obj)
    except KeyError:
        values = ()
    # Every measurement a number inside its range (NaN fails the comparisons): done, in
    # C. Anything else (null, missing, bool, NaN) goes field by field below, which
    # allows nulls and raises the precise error. validate(): 4.0-4.8 -> 3.4-3.5 µs here.
    if (
        values
        and _NUMBER_TYPES.issuperset(map(type, values))
        and all(map(le, lows, values))
        and all(map(le, values, highs))
    ):
        return obj  # type: ignore[return-value]
    get = obj.get
    for name, low, high, integer, spec in _FAST_CHECKS[powertrain]:
        value = get(name, _MISSING)
        if value is None:
            continue
        kind = type(value)
        # NaN and infinities fail the range test, so they take the slow path too.
        if (kind is int or (kind is float and not integer)) and low <= value <= high:
            continue
        _check_number(obj, spec, nullable=True)  # raises the precise error
    return obj  # type: ignore[return-value]


_MISSING: Final = object()


def decode(payload: bytes) -> Any:
    """Decode a JSON payload with the size limit applied first.

    Raises:
        ContractError: Oversize or not valid JSON (including bad UTF-8, NaN, infinities).
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        detail = f"{len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
        raise ContractError(Problem.OVERSIZE, None, detail)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ContractError(Problem.NOT_JSON, None, str(exc)) from None


def _typed(spec: NumberField) -> Any:
    bounds = msgspec.Meta(ge=spec.low, le=spec.high)
    checked: Any = Annotated[int, bounds] if spec.integer else Annotated[float, bounds]
    # seq may be null in parse(require_seq=False); the caller checks the other case.
    return checked | None if spec.nullable or spec.name == "seq" else checked


# msgspec applies a pattern with re.search: anchored with \Z, as $ also matches before "\n".
_VEHICLE_ID_SEARCH: Final = rf"^(?:{VEHICLE_ID_PATTERN.pattern})\Z"


def _record_struct(powertrain: str, numbers: tuple[NumberField, ...]) -> type[msgspec.Struct]:
    text: dict[str, Any] = {
        "schema": Literal[SCHEMA_VERSION],
        "vehicle_id": Annotated[str, msgspec.Meta(pattern=_VEHICLE_ID_SEARCH)],
        "powertrain": Literal[powertrain],
        "state": Literal[STATES],
    }
    # In the contract's order, which the record dict then has.
    fields = [
        (name, text[name] if name in text else _typed(NUMBER_FIELDS[name]))
        for name in (*COMMON_FIELDS, *(spec.name for spec in numbers))
    ]
    return msgspec.defstruct(
        f"_{powertrain.capitalize()}Record",
        fields,
        forbid_unknown_fields=True,
        gc=False,
        module=__name__,
    )


_EV_DECODER: Final[msgspec.json.Decoder[Any]] = msgspec.json.Decoder(
    _record_struct("ev", EV_NUMBERS)
)
_ICE_DECODER: Final[msgspec.json.Decoder[Any]] = msgspec.json.Decoder(
    _record_struct("ice", ICE_NUMBERS)
)


def _parse_fast(payload: bytes, *, require_seq: bool) -> TelemetryRecord | None:
    """The usual payload checked in C by msgspec, or None for the exact path to decide.

    msgspec decodes and checks every type, range and literal in one pass (3.4 µs against
    7-11 µs for orjson + validate() on a slow machine). It refuses anything validate()
    refuses, and more: an unknown key (which v1 allows), an invalid value hidden by a
    later duplicate key, and the other powertrain than the one guessed from the bytes.
    Like orjson, it lets the last duplicate win, so the dict holds what decode() would
    make, in the contract's key order. What it refuses goes through decode() + validate(),
    which decide and word the precise error.
    """
    if type(payload) is not bytes or len(payload) > MAX_PAYLOAD_BYTES:
        return None  # decode() also takes str, bytearray and memoryview
    decoder = _ICE_DECODER if payload.find(b'"ice"') >= 0 else _EV_DECODER
    try:
        struct = decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if require_seq and struct.seq is None:
        return None
    return msgspec.structs.asdict(struct)  # type: ignore[return-value]


def parse(payload: bytes, *, require_seq: bool = True) -> TelemetryRecord:
    """Decode and validate one v1 payload.

    Args:
        payload: The message value.
        require_seq: As for :func:`validate`.

    Returns:
        The record: what ``validate(decode(payload))`` returns, except that an integer
        in a non-integer field may come back as the equal float.

    Raises:
        ContractError: Why the payload is not a valid v1 message.
    """
    record = _parse_fast(payload, require_seq=require_seq)
    if record is not None:
        return record
    return validate(decode(payload), require_seq=require_seq)


def encode(record: TelemetryRecord | dict[str, Any]) -> bytes:
    """Serialise a record to compact JSON bytes."""
    return orjson.dumps(record)


def encode_decoded(record: TelemetryRecord | dict[str, Any], payload: bytes) -> bytes:
    """The compact encoding of a record that :func:`decode` made from ``payload`` unchanged.

    ``payload`` itself when it already is compact JSON holding each key once, else
    :func:`encode`: encoding cost ingest ~7 µs of ~40 µs per message on a slow machine.
    The proof: with no whitespace, each object member brings one `":` and a string can
    only add more, so as many `":` as top-level keys leaves room for no duplicate key
    (which a consumer's parser might resolve differently) and no nested object. Numbers
    keep the sender's spelling (``1e2``, not ``100.0``), the same values to any parser.

    Args:
        record: ``decode(payload)`` or ``parse(payload)``, not modified since (an
            integer that parse() made a float is still the same JSON number).
        payload: The bytes it was decoded from.
    """
    # No JSON whitespace at all, tested unrolled (a generator over the four cost more);
    # find() rather than `in`: 0.7-1.4 µs against 2.2 µs for the whole check.
    if (
        payload.count(b'":') == len(record)
        and payload.find(b" ") < 0
        and payload.find(b"\n") < 0
        and payload.find(b"\t") < 0
        and payload.find(b"\r") < 0
    ):
        return payload
    return encode(record)
