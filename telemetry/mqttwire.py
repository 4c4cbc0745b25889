"""MQTT's variable byte integer (the packets' remaining length), shared by every reader.

Ingest's socket reader and the simulator's publisher both frame MQTT packets from whole
reads; both use these two functions (MQTT 5 §1.5.5).
"""

from __future__ import annotations

from typing import Final

# At most four bytes of seven bits: a length below 2**28.
_MAX_SHIFT: Final = 21


class MalformedLength(ValueError):  # noqa: N818 - names the protocol violation
    """A remaining length longer than four bytes."""


def encode_length(n: int) -> bytes:
    """``n`` as an MQTT variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_length(data: bytes, at: int) -> tuple[int, int] | None:
    """The variable byte integer starting at ``data[at]``.

    Returns:
        (value, index after it), or None when ``data`` ends before it does.

    Raises:
        MalformedLength: It runs over four bytes.
    """
    end = len(data)
    value = 0
    shift = 0
    while at < end:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > _MAX_SHIFT:
            msg = "MQTT remaining length longer than four bytes"
            raise MalformedLength(msg)
    return None
