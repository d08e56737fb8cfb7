"""Frames on a stream: a 4-byte big-endian payload length, then the payload."""

from __future__ import annotations

import struct

from dengine_trio.wire.errors import FrameTooLarge

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Default limit on one frame's payload; a transport may configure its own."""

_HEADER = struct.Struct(">I")
HEADER_BYTES = _HEADER.size


def encode_frame(payload: bytes, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Prefix ``payload`` with its length; raises ``FrameTooLarge`` above ``max_frame_bytes``."""
    if len(payload) > max_frame_bytes:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds {max_frame_bytes}")
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into frame payloads.

    ``feed`` returns every frame completed by the bytes received so far; a partial frame stays
    buffered. A header announcing more than ``max_frame_bytes`` raises ``FrameTooLarge`` as soon
    as the header arrives, without waiting for (or buffering) the body; the stream is then
    unusable (frames before it in the same ``feed`` are dropped with the connection) and every
    later ``feed`` raises again.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._error: FrameTooLarge | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet part of a returned frame (a partial frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads of the frames it completes, in order (maybe
        none). Raises ``FrameTooLarge`` as the class says."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end_of_data = len(buf)
        with memoryview(buf) as view:
            while end_of_data - pos >= HEADER_BYTES:
                (size,) = _HEADER.unpack_from(buf, pos)
                if size > self.max_frame_bytes:
                    self._error = FrameTooLarge(
                        f"frame of {size} bytes exceeds {self.max_frame_bytes}"
                    )
                    break
                end = pos + HEADER_BYTES + size
                if end > end_of_data:
                    break
                frames.append(view[pos + HEADER_BYTES : end].tobytes())
                pos = end
        if self._error is not None:
            buf.clear()
            raise self._error
        del buf[:pos]
        return frames
