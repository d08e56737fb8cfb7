"""Errors of the storage layer. Each one stops a node from starting rather than lose data."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error raised by ``dengine_trio.storage``."""


class CorruptLogError(StorageError):
    """The write-ahead log is damaged somewhere other than a torn tail.

    Recovery never skips a damaged record: doing so could replay a log with a hole in it.
    """


class CorruptHardStateError(StorageError):
    """The hard state file (term, vote) cannot be trusted."""


class StorageLockedError(StorageError):
    """Another process holds ``db_root_dir``."""


class UnrecoverableStorageError(StorageError):
    """No snapshot and log that together hold every entry this node had: starting would
    forget committed entries, so the node refuses (``Storage.open``, "Restart from a
    snapshot" in the package docstring). The message names each file and why it was not
    used."""
