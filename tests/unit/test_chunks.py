from __future__ import annotations

import pytest

from services.kernel.kafka.chunks import CHUNK_HEADER, ChunkError, Reassembler


def _chunk(chunk_id: str, index: int, count: int) -> list[tuple[str, bytes]]:
    return [(CHUNK_HEADER, f"{chunk_id}:{index}:{count}".encode())]


def test_unchunked_values_pass_through() -> None:
    assert Reassembler().feed(0, b"whole", []) == b"whole"


def test_chunks_reassemble_per_partition_and_id() -> None:
    r = Reassembler()
    assert r.feed(0, b"ab", _chunk("x", 0, 3)) is None
    assert r.feed(1, b"other", _chunk("y", 0, 2)) is None
    assert r.feed(0, b"cd", _chunk("x", 1, 3)) is None
    assert r.feed(0, b"e", _chunk("x", 2, 3)) == b"abcde"
    assert r.feed(1, b"!", _chunk("y", 1, 2)) == b"other!"


def test_out_of_order_or_malformed_chunks_are_errors() -> None:
    r = Reassembler()
    with pytest.raises(ChunkError, match="out of order"):
        r.feed(0, b"b", _chunk("x", 1, 2))
    with pytest.raises(ChunkError, match="malformed"):
        r.feed(0, b"b", [(CHUNK_HEADER, b"nonsense")])
