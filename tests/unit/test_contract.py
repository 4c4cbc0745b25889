"""Contract v1 validator: accepts the simulator's records, rejects with a precise reason."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simulator import FleetConfig, iter_records
from telemetry.contract import (
    _FAST_CHECKS,
    ALL_FIELDS,
    EV_FIELDS,
    ICE_FIELDS,
    MAX_PAYLOAD_BYTES,
    NUMBER_FIELDS,
    ContractError,
    Problem,
    _parse_fast,
    decode,
    encode,
    encode_decoded,
    parse,
    validate,
)

pytestmark = pytest.mark.unit


def _records() -> tuple[dict[str, Any], dict[str, Any]]:
    ev = ice = None
    for record in iter_records(FleetConfig(vehicles=10, duration_s=2, seed=3, ev_share=0.5)):
        if record["powertrain"] == "ev":
            ev = record
        else:
            ice = record
    assert ev is not None
    assert ice is not None
    return ev, ice


EV, ICE = _records()


def test_simulator_records_are_valid() -> None:
    for record in (EV, ICE):
        assert parse(orjson.dumps(record)) == record


def test_field_lists_are_consistent() -> None:
    assert len(set(ALL_FIELDS)) == len(ALL_FIELDS)
    assert set(EV_FIELDS).isdisjoint(ICE_FIELDS)
    assert set(NUMBER_FIELDS) <= set(ALL_FIELDS)


@pytest.mark.parametrize("name", [f for f in ALL_FIELDS if f not in ICE_FIELDS])
def test_every_ev_field_is_required(name: str) -> None:
    record = dict(EV)
    del record[name]
    with pytest.raises(ContractError) as info:
        validate(record)
    assert info.value.field == name
    assert info.value.problem in {Problem.MISSING, Problem.UNKNOWN_SCHEMA}


@pytest.mark.parametrize("name", ICE_FIELDS)
def test_every_ice_field_is_required(name: str) -> None:
    record = dict(ICE)
    del record[name]
    with pytest.raises(ContractError, match=name) as info:
        validate(record)
    assert info.value.reason == f"missing:{name}"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("schema", 2, Problem.UNKNOWN_SCHEMA),
        ("schema", "1", Problem.UNKNOWN_SCHEMA),
        ("vehicle_id", "", Problem.BAD_VALUE),
        ("vehicle_id", "a/b", Problem.BAD_VALUE),
        ("vehicle_id", "x" * 65, Problem.BAD_VALUE),
        ("vehicle_id", 12, Problem.WRONG_TYPE),
        ("ts", 1.5, Problem.WRONG_TYPE),
        ("ts", None, Problem.NULL),
        ("state", None, Problem.NULL),
        ("vehicle_id", None, Problem.NULL),
        ("seq", -1, Problem.OUT_OF_RANGE),
        ("seq", None, Problem.NULL),
        ("powertrain", "diesel", Problem.BAD_VALUE),
        ("state", "flying", Problem.BAD_VALUE),
        ("speed_kmh", "fast", Problem.WRONG_TYPE),
        ("speed_kmh", True, Problem.WRONG_TYPE),
        ("speed_kmh", -1, Problem.OUT_OF_RANGE),
        ("speed_kmh", math.inf, Problem.NOT_FINITE),
        ("lat", math.nan, Problem.NOT_FINITE),
        ("lat", 91.0, Problem.OUT_OF_RANGE),
        ("battery_level_pct", 100.5, Problem.OUT_OF_RANGE),
        ("power_kw", [1], Problem.WRONG_TYPE),
    ],
)
def test_bad_values_name_field_and_problem(field: str, value: object, problem: Problem) -> None:
    record = dict(EV)
    record[field] = value
    with pytest.raises(ContractError) as info:
        validate(record)
    assert info.value.field == field
    assert info.value.problem is problem
    assert field in str(info.value)


def test_measurements_may_be_null_and_extras_pass_through() -> None:
    record = dict(EV, battery_temp_c=None, speed_kmh=None, firmware="2026.4")
    assert validate(record) is record


def test_seq_may_be_null_only_when_allowed() -> None:
    record = dict(EV, seq=None)
    assert validate(record, require_seq=False) is record
    with pytest.raises(ContractError, match="seq"):
        validate(record)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"", Problem.NOT_JSON),
        (b"{", Problem.NOT_JSON),
        (b"\xff\xfe{}", Problem.NOT_JSON),
        (b'{"a": NaN}', Problem.NOT_JSON),
        (b'{"a": 1e400}', Problem.NOT_JSON),
        (b"[1, 2]", Problem.NOT_OBJECT),
        (b"null", Problem.NOT_OBJECT),
        (b" " * (MAX_PAYLOAD_BYTES + 1), Problem.OVERSIZE),
        (b"[" * 5000 + b"]" * 5000, Problem.NOT_JSON),
    ],
)
def test_payload_level_problems(payload: bytes, problem: Problem) -> None:
    with pytest.raises(ContractError) as info:
        parse(payload)
    assert info.value.problem is problem
    assert info.value.field is None


def test_huge_integer_is_rejected_not_overflowed() -> None:
    payload = orjson.dumps(dict(EV, seq=0)).replace(b'"seq":0', b'"seq":' + b"9" * 40)
    with pytest.raises(ContractError) as info:
        parse(payload)
    assert info.value.field == "seq"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300))
def test_no_bytes_crash_the_parser(payload: bytes) -> None:
    try:
        parse(payload)
    except ContractError as exc:
        assert exc.reason
        assert str(exc)


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(ALL_FIELDS), value=json_values)
def test_any_value_in_any_field_is_accepted_or_rejected_with_reason(
    field: str, value: object
) -> None:
    record = dict(EV if field not in ICE_FIELDS else ICE)
    record[field] = value
    try:
        validate(record)
    except ContractError as exc:
        assert exc.field == field
        assert exc.reason.endswith(field)


@settings(max_examples=200, deadline=None)
@given(obj=st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_arbitrary_objects_never_crash(obj: dict[str, Any]) -> None:
    try:
        validate(obj)
    except ContractError as exc:
        assert exc.reason


def test_decode_returns_python_objects() -> None:
    assert decode(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}


def test_fast_path_fields_are_not_integers() -> None:
    # validate()'s one-pass check accepts any int or float: an integer field there
    # would let 1.5 through.
    for checks in _FAST_CHECKS.values():
        assert not [name for name, _low, _high, integer, _spec in checks if integer]


@pytest.mark.parametrize(
    ("field", "value"),
    [("speed_kmh", math.nan), ("speed_kmh", True), ("lat", "1"), ("lat", None), ("lat", 90.5)],
)
def test_fast_and_field_by_field_paths_agree(field: str, value: object) -> None:
    record = dict(EV)
    record[field] = value
    if value is None:
        assert validate(record) is record
        return
    with pytest.raises(ContractError) as info:
        validate(record)
    assert info.value.field == field


def test_compact_payload_is_its_own_encoding() -> None:
    payload = orjson.dumps(EV)
    assert encode_decoded(decode(payload), payload) is payload


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a": 1, "b": 2}',  # whitespace
        b'{"a":1,"b":2,"a":3}',  # duplicate key: a consumer could read 1 or 3
        b'{"a":1,"b":{"c":2}}',  # nested object
        b'{"a":"x\\":y","b":{"c":2,"d":3}}',  # a `":` in a string, nested keys
        b'{"a":1,\n"b":2}',
    ],
)
def test_other_payloads_are_encoded_again(payload: bytes) -> None:
    record = decode(payload)
    assert encode_decoded(record, payload) == encode(record)


@settings(max_examples=300, deadline=None)
@given(obj=st.dictionaries(st.text(max_size=6), json_values, max_size=6), spaced=st.booleans())
def test_encode_decoded_always_means_the_record(obj: dict[str, Any], spaced: bool) -> None:
    try:
        payload = orjson.dumps(obj)
    except TypeError:
        assume(False)  # an integer beyond 64 bits: no payload to start from
    if spaced:
        payload = payload.replace(b":", b": ", 1)
    record = decode(payload)
    out = encode_decoded(record, payload)
    assert decode(out) == record
    if out is payload:
        assert payload == encode(record)


def _exact(payload: bytes, *, require_seq: bool) -> dict[str, Any] | ContractError:
    try:
        return dict(validate(decode(payload), require_seq=require_seq))
    except ContractError as exc:
        return exc


def _same_as_exact(payload: bytes, *, require_seq: bool = True) -> dict[str, Any] | None:
    """Check parse() and its msgspec fast path against decode() + validate()."""
    exact = _exact(payload, require_seq=require_seq)
    parsed_fast = _parse_fast(payload, require_seq=require_seq)
    fast = None if parsed_fast is None else dict(parsed_fast)
    if fast is not None:
        # The fast path accepts nothing validate() refuses, and yields the same record.
        assert isinstance(exact, dict), exact
        assert fast == exact
        assert list(map(type, fast.values())) == [
            float
            if type(exact[k]) is int and k in NUMBER_FIELDS and not NUMBER_FIELDS[k].integer
            else type(exact[k])
            for k in fast
        ]
    try:
        parsed: dict[str, Any] | ContractError = dict(parse(payload, require_seq=require_seq))
    except ContractError as exc:
        parsed = exc
    if isinstance(exact, ContractError):
        assert isinstance(parsed, ContractError)
        assert parsed.reason == exact.reason
    else:
        assert parsed == exact
    return fast


def test_msgspec_fast_path_takes_the_usual_payloads() -> None:
    for record in (EV, ICE):
        assert _same_as_exact(orjson.dumps(record)) is not None
        assert _same_as_exact(orjson.dumps(dict(record, seq=None)), require_seq=False) is not None


_PAYLOAD = orjson.dumps(EV)
_SEQ = b'"seq":%d' % EV["seq"]


@pytest.mark.parametrize(
    "payload",
    [
        _PAYLOAD.replace(b'","ts":', b'\\n","ts":', 1),  # vehicle_id ends with a newline
        _PAYLOAD.replace(b'"schema":1', b'"schema":1.0'),
        _PAYLOAD.replace(b'"schema":1', b'"schema":true'),
        _PAYLOAD.replace(_SEQ, b'"seq":null'),
        _PAYLOAD.replace(_SEQ, _SEQ + b".0"),
        _PAYLOAD.replace(_SEQ, _SEQ + b',"firmware":"1.2"'),  # unknown key: allowed
        _PAYLOAD.replace(_SEQ, b'"seq":-1,' + _SEQ),  # a later duplicate wins
        _PAYLOAD.replace(_SEQ, _SEQ + b',"powertrain":"ice"'),
        _PAYLOAD.replace(b'"powertrain":"ev"', b'"powertrain":"EV"'),
        _PAYLOAD.replace(b'"lat":', b'"lat":1e999,"lat":'),
        _PAYLOAD.replace(b'"lat":', b'"lat":90.0000001,"x":', 1),
        _PAYLOAD.replace(b"{", b'{"a":{"b":[1,2]},', 1),
        _PAYLOAD.replace(b"}", b" }"),
        _PAYLOAD + b"x",
    ],
)
def test_msgspec_fast_path_edge_cases(payload: bytes) -> None:
    _same_as_exact(payload)
    _same_as_exact(payload, require_seq=False)


def _field_values(field: str) -> st.SearchStrategy[object]:
    spec = NUMBER_FIELDS.get(field)
    edges: list[object] = []
    if spec is not None:
        edges = [
            spec.low,
            spec.high,
            spec.low - 1,
            spec.high + 1,
            float(spec.low),
            spec.high + 1e-9,
        ]
        edges += [int(spec.high) + 1, -0.0]
    return st.sampled_from(edges or [None]) | json_values


@settings(max_examples=500, deadline=None)
@given(data=st.data(), require_seq=st.booleans(), powertrain=st.sampled_from(["ev", "ice"]))
def test_msgspec_fast_path_agrees_with_validate(
    data: st.DataObject, require_seq: bool, powertrain: str
) -> None:
    record: dict[str, Any] = dict(EV if powertrain == "ev" else ICE)
    for field in data.draw(st.lists(st.sampled_from(ALL_FIELDS), max_size=3)):
        if data.draw(st.booleans()):
            record[field] = data.draw(_field_values(field))
        else:
            record.pop(field, None)
    try:
        payload = orjson.dumps(record)
    except TypeError:
        assume(False)  # an integer beyond 64 bits: no payload to start from
    _same_as_exact(payload, require_seq=require_seq)


def test_parse_takes_what_decode_takes() -> None:
    payload = orjson.dumps(EV)
    for same in (payload.decode(), bytearray(payload), memoryview(payload)):
        assert parse(same) == EV  # type: ignore[arg-type]
