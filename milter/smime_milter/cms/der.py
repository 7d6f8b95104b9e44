"""A minimal DER walker for the hot path of signature checking.

asn1crypto builds an object per element; for the few fields read on every
message (signed attributes, the certificate set) slicing the bytes directly
is several times cheaper. Only definite lengths are accepted: anything else
raises ValueError and callers fall back to asn1crypto or report malformed
input.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

MAX_LENGTH_OCTETS = 4


class Tlv(NamedTuple):
    """One element: its tag byte and where its encoding and content lie
    (a tuple: built for every element walked, it must be cheap)."""

    tag: int
    start: int
    content_start: int
    end: int


#: Builds a Tlv without the Python-level ``__new__`` NamedTuple generates.
_new_tlv = tuple.__new__


def read(data: bytes | memoryview, offset: int, limit: int | None = None) -> Tlv:
    """The element starting at ``offset`` (single-byte tags only)."""
    if limit is None:
        limit = len(data)
    if offset + 2 > limit:
        raise ValueError("truncated DER element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not supported here")
    length = data[offset + 1]
    position = offset + 2
    if length > 0x7F:
        count = length & 0x7F
        if count == 0 or count > MAX_LENGTH_OCTETS:
            raise ValueError("indefinite or oversized DER length")
        if position + count > limit:
            raise ValueError("truncated DER length")
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    end = position + length
    if end > limit:
        raise ValueError("DER element runs past its container")
    return _new_tlv(Tlv, (tag, offset, position, end))


def children(data: bytes | memoryview, start: int, end: int) -> Iterator[Tlv]:
    """The elements packed in ``data[start:end]``."""
    position = start
    while position < end:
        element = read(data, position, end)
        yield element
        position = element.end


def encode(tag: int, content: bytes) -> bytes:
    """One DER element (definite length) around ``content``."""
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content
