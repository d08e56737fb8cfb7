"""The in-memory view of the Raft log (§5.3): append, truncate, term lookups, batching.

Index 0 is the empty prefix, with term 0. Entries are kept in a list, entry ``i`` at
position ``i - 1``. (Snapshots and compaction come later; this class is where an offset will go.)
"""

from __future__ import annotations

from collections.abc import Iterable

from .messages import Entry


class RaftLog:
    """The entries of one node's log, index 1 upward, contiguous (§5.3). Index 0 is the
    empty prefix with term 0. Raises ``ValueError`` at construction if the given entries do
    not run 1, 2, 3, ... The durable copy is the storage layer's; this is what the core
    reasons over."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: list[Entry] = list(entries)
        for pos, entry in enumerate(self._entries):
            if entry.index != pos + 1:
                raise ValueError(f"log entries are not contiguous at position {pos}")

    @property
    def last_index(self) -> int:
        """Index of the last entry; 0 for an empty log."""
        return len(self._entries)

    @property
    def last_term(self) -> int:
        """Term of the last entry; 0 for an empty log (used by the election restriction,
        §5.4.1)."""
        return self._entries[-1].term if self._entries else 0

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; 0 for index 0; None past the end."""
        if index == 0:
            return 0
        if 0 < index <= len(self._entries):
            return self._entries[index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        """The entry at ``index`` (1..last_index); ``IndexError`` past the end (an index
        <= 0 is the caller's bug and is not checked on this hot path)."""
        return self._entries[index - 1]

    def slice(self, first: int, last: int) -> list[Entry]:
        """Entries ``first..last``, both inclusive."""
        return self._entries[first - 1 : last]

    def matches(self, index: int, term: int) -> bool:
        """The log-matching check of AppendEntries: do we hold (index, term)?"""
        return self.term_at(index) == term

    def append(self, entries: Iterable[Entry]) -> None:
        """Add ``entries`` after the last one; the caller guarantees they continue the log
        (index last_index + 1 onward, terms not decreasing), after truncating a conflict."""
        self._entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop the entry at ``index`` and everything after it (a conflicting suffix)."""
        del self._entries[index - 1 :]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (§5.4.1): is a log ending at (last_index, last_term) at least
        as up-to-date as ours?"""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def first_index_of_term_at(self, index: int) -> int:
        """First index of the run of entries sharing the term of ``index`` (back-tracking hint)."""
        term = self._entries[index - 1].term
        while index > 1 and self._entries[index - 2].term == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int:
        """Last index holding ``term``, or 0 if the log has no entry of that term."""
        lo, hi = 0, len(self._entries)
        while lo < hi:  # terms never decrease along the log: binary search the first > term
            mid = (lo + hi) // 2
            if self._entries[mid].term <= term:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo > 0 and self._entries[lo - 1].term == term else 0

    def batch_from(self, first: int, max_entries: int, max_bytes: int) -> list[Entry]:
        """Entries from ``first`` for one AppendEntries: at most ``max_entries``, and at most
        ``max_bytes`` of command data, but always at least one entry if there is one."""
        batch = self._entries[first - 1 : first - 1 + max_entries]
        size = 0
        for count, entry in enumerate(batch):
            size += len(entry.data)
            if size > max_bytes and count > 0:
                return batch[:count]
        return batch
