"""dengine_trio: embedded Raft consensus on trio.

Start a node inside your trio program with ``EmbeddedEngine.start(load_config(path))``.
"""

from .config import ConfigError, NodeConfig, load_config
from .engine import Client, EmbeddedEngine
from .errors import DengineError, NoLeader, NotLeader, Overloaded, Stopped, Timeout, TooLarge
from .policy import ReadPolicy
from .statemachine import KVStateMachine, StateMachine

__all__ = [
    "Client",
    "ConfigError",
    "DengineError",
    "EmbeddedEngine",
    "KVStateMachine",
    "NoLeader",
    "NodeConfig",
    "NotLeader",
    "Overloaded",
    "ReadPolicy",
    "StateMachine",
    "Stopped",
    "Timeout",
    "TooLarge",
    "load_config",
]
