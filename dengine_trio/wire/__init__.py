"""Wire layer: messages between nodes, their msgpack encoding and the frame format."""

from dengine_trio.wire.codec import TAGS, converter, decode, encode
from dengine_trio.wire.errors import CodecError, FrameTooLarge
from dengine_trio.wire.frames import MAX_FRAME_BYTES, FrameReader, encode_frame
from dengine_trio.wire.messages import (
    PEER_MESSAGE_TYPES,
    PROTOCOL_VERSION,
    SNAPSHOT_TYPES,
    Channel,
    ForwardAccepted,
    ForwardPropose,
    ForwardResult,
    ForwardStatus,
    Hello,
    HelloReply,
    JoinRequest,
    SnapshotChunk,
    SnapshotOffer,
    SnapshotReceived,
    SnapshotResume,
)

__all__ = [
    "MAX_FRAME_BYTES",
    "PEER_MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "SNAPSHOT_TYPES",
    "TAGS",
    "Channel",
    "CodecError",
    "ForwardAccepted",
    "ForwardPropose",
    "ForwardResult",
    "ForwardStatus",
    "FrameReader",
    "FrameTooLarge",
    "Hello",
    "HelloReply",
    "JoinRequest",
    "SnapshotChunk",
    "SnapshotOffer",
    "SnapshotReceived",
    "SnapshotResume",
    "converter",
    "decode",
    "encode",
    "encode_frame",
]
