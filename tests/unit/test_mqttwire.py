"""MQTT variable byte integers (telemetry/mqttwire.py), at the boundaries of MQTT 5 §1.5.5."""

from __future__ import annotations

import pytest

from telemetry.mqttwire import MalformedLength, decode_length, encode_length

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "size"),
    [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3), (2_097_151, 3), (2_097_152, 4),
     (268_435_455, 4)],
)  # fmt: skip
def test_round_trip_and_size(value: int, size: int) -> None:
    raw = encode_length(value)
    assert len(raw) == size
    assert decode_length(b"\x30" + raw + b"rest", 1) == (value, 1 + size)


def test_cut_short_is_incomplete_and_five_bytes_are_malformed() -> None:
    assert decode_length(b"\x30\xff\xff", 1) is None
    with pytest.raises(MalformedLength):
        decode_length(b"\x30\xff\xff\xff\xff\x01", 1)
