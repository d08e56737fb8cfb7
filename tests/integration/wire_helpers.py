"""Talking to a node's Raft port by hand: the handshake, and reading until it hangs up."""

from __future__ import annotations

import trio

from dengine_trio.wire import FrameReader, Hello, HelloReply, decode, encode, encode_frame


async def raw_handshake(
    stream: trio.SocketStream, hello: Hello, reader: FrameReader | None = None
) -> HelloReply:
    await stream.send_all(encode_frame(encode(hello)))
    reader = reader or FrameReader()
    frames: list[bytes] = []
    while not frames:
        data = await stream.receive_some()
        assert data, "closed without a HelloReply"
        frames = reader.feed(data)
    reply = decode(frames[0])
    assert isinstance(reply, HelloReply)
    return reply


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the other side sends until it closes the connection."""
    received = b""
    while True:
        try:
            data = await stream.receive_some()
        except trio.BrokenResourceError:  # a reset: closed with our bytes unread
            return received
        if not data:
            return received
        received += data
