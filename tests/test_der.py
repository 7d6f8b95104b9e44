"""The hot-path DER walker: exact slices for good input, ValueError for bad."""

from __future__ import annotations

import pytest
from asn1crypto import core

from smime_milter.cms import der


def test_children_slice_exactly() -> None:
    values = [core.Integer(5), core.OctetString(b"x" * 300), core.ObjectIdentifier("1.2.3")]
    encoded = b"".join(v.dump() for v in values)
    elements = list(der.children(encoded, 0, len(encoded)))
    assert [encoded[e.start : e.end] for e in elements] == [v.dump() for v in values]
    assert [e.tag for e in elements] == [0x02, 0x04, 0x06]
    long_one = elements[1]
    assert encoded[long_one.content_start : long_one.end] == b"x" * 300


@pytest.mark.parametrize(
    "data",
    [
        b"\x04",  # no length
        b"\x04\x05abc",  # content shorter than the length
        b"\x04\x80abc\x00\x00",  # indefinite length (BER)
        b"\x04\x85\x00\x00\x00\x00\x01a",  # five length octets
        b"\x1f\x01\x00",  # multi-byte tag
        b"\x04\x82\x01",  # truncated length octets
    ],
)
def test_malformed_input_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        list(der.children(data, 0, len(data)))


def test_child_may_not_run_past_its_container() -> None:
    outer = b"\x30\x03\x04\x05abcde"
    with pytest.raises(ValueError):
        list(der.children(outer, 2, 5))


@pytest.mark.parametrize("size", [0, 5, 127, 128, 255, 256, 70_000])
def test_encode_round_trips_through_read(size: int) -> None:
    content = b"\x01" * size
    encoded = der.encode(0x04, content)
    assert encoded == core.OctetString(content).dump()
    element = der.read(encoded, 0)
    assert (element.tag, encoded[element.content_start : element.end]) == (0x04, content)
