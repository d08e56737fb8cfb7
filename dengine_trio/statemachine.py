"""The replicated state machine: what committed commands do.

``StateMachine`` is the extension point (the mission's "custom state machine"): the engine feeds
every committed command, in log order, to ``apply`` and hands its result back to the proposer.
``KVStateMachine`` is the default, a dictionary of bytes to bytes.
"""

from __future__ import annotations

from typing import Protocol

import msgpack

OP_PUT = 0
OP_DELETE = 1


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> bytes:
        """Apply one committed command; deterministic, no I/O that can fail differently on
        different nodes. The returned bytes go back to whoever proposed the command."""
        ...

    def reset(self) -> None:
        """Forget everything: the engine replays the log from the start after a restart."""
        ...


def encode_put(key: bytes, value: bytes) -> bytes:
    return msgpack.packb((OP_PUT, key, value))


def encode_delete(key: bytes) -> bytes:
    return msgpack.packb((OP_DELETE, key))


class KVStateMachine:
    """Keys and values are bytes. A command that does not decode is a no-op on every node
    alike (it was committed, so all replicas must agree on ignoring it)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def apply(self, index: int, command: bytes) -> bytes:
        try:
            op = msgpack.unpackb(command)
            if op[0] == OP_PUT:
                self.data[op[1]] = op[2]
            elif op[0] == OP_DELETE:
                self.data.pop(op[1], None)
        except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException):
            return b"\x00"
        return b""

    def reset(self) -> None:
        self.data = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)
