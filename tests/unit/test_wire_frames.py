"""Frames: a 4-byte big-endian length, then the payload; whatever the chunking of the stream."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio.wire import MAX_FRAME_BYTES, CodecError, FrameReader, FrameTooLarge, encode_frame


def test_frame_layout() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert MAX_FRAME_BYTES == 16 * 1024 * 1024


@settings(max_examples=50, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_reader_recovers_frames_whatever_the_chunking(
    payloads: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    reader = FrameReader()
    received: list[bytes] = []
    for start, end in itertools.pairwise(bounds):
        received.extend(reader.feed(stream[start:end]))
    assert received == payloads
    assert reader.buffered_bytes == 0


def test_partial_frame_stays_buffered() -> None:
    reader = FrameReader()
    frame = encode_frame(b"hello")
    assert reader.feed(frame[:2]) == []
    assert reader.feed(frame[2:7]) == []
    assert reader.buffered_bytes == 7
    assert reader.feed(frame[7:] + frame) == [b"hello", b"hello"]


def test_oversized_header_fails_at_once_and_for_good() -> None:
    reader = FrameReader(max_frame_bytes=10)
    assert reader.feed(encode_frame(b"0123456789")) == [b"0123456789"]
    with pytest.raises(FrameTooLarge):
        reader.feed((11).to_bytes(4, "big"))  # only the header: no need to wait for the body
    with pytest.raises(FrameTooLarge):
        reader.feed(encode_frame(b"ok"))
    assert reader.buffered_bytes == 0
    assert issubclass(FrameTooLarge, CodecError)


def test_encode_frame_refuses_oversized_payloads() -> None:
    assert encode_frame(b"x" * 10, max_frame_bytes=10) == b"\x00\x00\x00\x0a" + b"x" * 10
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 11, max_frame_bytes=10)
