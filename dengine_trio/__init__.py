"""dengine_trio: embedded Raft consensus on trio.

Start a node inside your trio program with ``EmbeddedEngine.start(load_config(path))``.
"""

from .client_types import Item, Page, TxnOp, TxnOutcome, WriteOutcome
from .config import ConfigError, NodeConfig, load_config
from .engine import Client, EmbeddedEngine
from .errors import (
    CompareFailed,
    DengineError,
    IdempotencyKeyReused,
    NoLeader,
    NotLeader,
    Overloaded,
    Stopped,
    Timeout,
    TooLarge,
)
from .kv_commands import UNSET, Compare
from .policy import ReadPolicy
from .statemachine import KVStateMachine, StateMachine

__all__ = [
    "UNSET",
    "Client",
    "Compare",
    "CompareFailed",
    "ConfigError",
    "DengineError",
    "EmbeddedEngine",
    "IdempotencyKeyReused",
    "Item",
    "KVStateMachine",
    "NoLeader",
    "NodeConfig",
    "NotLeader",
    "Overloaded",
    "Page",
    "ReadPolicy",
    "StateMachine",
    "Stopped",
    "Timeout",
    "TooLarge",
    "TxnOp",
    "TxnOutcome",
    "WriteOutcome",
    "load_config",
]
