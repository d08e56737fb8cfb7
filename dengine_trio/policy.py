"""Read consistency policies, named as in the configuration file."""

from __future__ import annotations

from enum import Enum


class ReadPolicy(str, Enum):
    LINEARIZABLE = "LinearizableRead"
    LEASE = "LeaseRead"
    EVENTUAL = "EventualConsistency"
