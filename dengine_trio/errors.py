"""Typed errors of the embedded client API. Every one derives from ``DengineError``."""

from __future__ import annotations


class DengineError(Exception):
    """Base of every error the engine raises to its callers."""


class NotLeader(DengineError):
    """This node cannot serve the request; ``leader_id`` (None if unknown) can."""

    def __init__(self, leader_id: int | None) -> None:
        super().__init__(f"not the leader (leader: {leader_id})")
        self.leader_id = leader_id


class NoLeader(DengineError):
    """No leader is known or reachable right now; retry after an election timeout."""


class Timeout(DengineError):
    """The request did not complete in time. A write may or may not have been applied."""


class Stopped(DengineError):
    """The engine is stopping or stopped."""


class TooLarge(DengineError):
    """A key, value or request exceeds the configured limit."""


class Overloaded(DengineError):
    """Too many requests are pending on this node (backpressure); retry later."""
