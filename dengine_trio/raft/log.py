"""The in-memory view of the Raft log (§5.3): append, truncate, term lookups, batching, and the
offset left by a snapshot (Raft paper §7, log compaction).

The log holds the entries after an offset ``(snapshot_index, snapshot_term)``: the last entry a
snapshot covers, whose term is still known although the entry itself is gone. With no snapshot
the offset is (0, 0), the empty prefix. Entry ``i`` is kept at position ``i - snapshot_index - 1``
of a list.
"""

from __future__ import annotations

from collections.abc import Iterable

from .messages import Entry


class RaftLog:
    """The entries of one node's log after its offset, contiguous (§5.3, §7).

    ``snapshot_index``/``snapshot_term``: the offset, the last entry compacted away (0, 0 for
    none): ``term_at`` still answers for it, and for nothing below it. Raises ``ValueError``
    at construction if the entries do not run ``snapshot_index + 1``, ``+ 2``, ... or the
    offset is inconsistent (negative, or a term without an index or the reverse). The durable
    copy is the storage layer's; this is what the core reasons over."""

    __slots__ = ("_entries", "_offset", "_offset_term")

    def __init__(
        self, entries: Iterable[Entry] = (), *, snapshot_index: int = 0, snapshot_term: int = 0
    ) -> None:
        if snapshot_index < 0 or snapshot_term < 0 or (snapshot_index == 0) != (snapshot_term == 0):
            raise ValueError(
                f"log offset ({snapshot_index}, {snapshot_term}) is not a snapshot's index and term"
            )
        self._offset = snapshot_index
        self._offset_term = snapshot_term
        self._entries: list[Entry] = list(entries)
        for pos, entry in enumerate(self._entries):
            if entry.index != snapshot_index + pos + 1:
                raise ValueError(f"log entries are not contiguous at position {pos}")

    @property
    def snapshot_index(self) -> int:
        """The offset: index of the last entry compacted away (0 with none)."""
        return self._offset

    @property
    def snapshot_term(self) -> int:
        """Term of the entry at the offset (0 with none)."""
        return self._offset_term

    @property
    def first_index(self) -> int:
        """Index of the first entry held (``snapshot_index + 1``), held or next to come."""
        return self._offset + 1

    @property
    def last_index(self) -> int:
        """Index of the last entry; the offset for a log holding no entry."""
        return self._offset + len(self._entries)

    @property
    def last_term(self) -> int:
        """Term of the last entry; the offset's term for a log holding no entry (used by the
        election restriction, §5.4.1)."""
        return self._entries[-1].term if self._entries else self._offset_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``: the offset's term at the offset; None below it
        (compacted away) and past the end."""
        pos = index - self._offset
        if pos == 0:
            return self._offset_term
        if 0 < pos <= len(self._entries):
            return self._entries[pos - 1].term
        return None

    def entry(self, index: int) -> Entry:
        """The entry at ``index`` (first_index..last_index); ``IndexError`` outside."""
        pos = index - self._offset - 1
        if pos < 0:
            raise IndexError(f"entry {index} is compacted away (log offset {self._offset})")
        return self._entries[pos]

    def slice(self, first: int, last: int) -> list[Entry]:
        """Entries ``first..last``, both inclusive; ``IndexError`` if ``first`` is compacted
        away (at or below the offset)."""
        if first <= self._offset:
            raise IndexError(f"entry {first} is compacted away (log offset {self._offset})")
        return self._entries[first - self._offset - 1 : last - self._offset]

    def matches(self, index: int, term: int) -> bool:
        """The log-matching check of AppendEntries: do we hold (index, term)? False for an
        index below the offset (its term is no longer known)."""
        return self.term_at(index) == term

    def append(self, entries: Iterable[Entry]) -> None:
        """Add ``entries`` after the last one; the caller guarantees they continue the log
        (index last_index + 1 onward, terms not decreasing), after truncating a conflict."""
        self._entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop the entry at ``index`` and everything after it (a conflicting suffix).
        ``ValueError`` at or below the offset: a snapshot covers only committed entries,
        which no conflict ever removes (§5.4)."""
        if index <= self._offset:
            raise ValueError(f"cannot truncate at {index}: compacted through {self._offset}")
        del self._entries[index - self._offset - 1 :]

    def compact(self, through_index: int) -> None:
        """Drop every entry up to ``through_index`` (a snapshot covers them, §7); its term
        becomes the offset's. At or below the offset this does nothing; ``ValueError`` past
        the last index."""
        if through_index <= self._offset:
            return
        if through_index > self.last_index:
            raise ValueError(
                f"cannot compact through {through_index}: log ends at {self.last_index}"
            )
        self._offset_term = self._entries[through_index - self._offset - 1].term
        del self._entries[: through_index - self._offset]
        self._offset = through_index

    def restore(self, index: int, term: int) -> None:
        """Become the empty log after a snapshot ending at (``index``, ``term``): every entry
        goes, and ``last_index``/``last_term`` are the snapshot's (InstallSnapshot, §7)."""
        if index <= 0 or term <= 0:
            raise ValueError(f"({index}, {term}) is not a snapshot's index and term")
        self._entries = []
        self._offset = index
        self._offset_term = term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (§5.4.1): is a log ending at (last_index, last_term) at least
        as up-to-date as ours?"""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def first_index_of_term_at(self, index: int) -> int:
        """First index of the run of entries sharing the term of ``index`` (back-tracking
        hint); a run reaching back into the compacted prefix is cut at ``first_index``, which
        is as far back as this log can vouch for. ``index`` must be held (first_index..)."""
        entries, offset = self._entries, self._offset
        term = self.entry(index).term
        while index > offset + 1 and entries[index - offset - 2].term == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int:
        """Last index holding ``term``, or 0 if the log (the offset included) has no entry of
        that term it knows of."""
        entries = self._entries
        lo, hi = 0, len(entries)
        while lo < hi:  # terms never decrease along the log: binary search the first > term
            mid = (lo + hi) // 2
            if entries[mid].term <= term:
                lo = mid + 1
            else:
                hi = mid
        if lo > 0 and entries[lo - 1].term == term:
            return self._offset + lo
        if lo == 0 and self._offset and self._offset_term == term:
            return self._offset
        return 0

    def batch_from(self, first: int, max_entries: int, max_bytes: int) -> list[Entry]:
        """Entries from ``first`` for one AppendEntries: at most ``max_entries``, and at most
        ``max_bytes`` of command data, but always at least one entry if there is one.
        ``IndexError`` if ``first`` is compacted away (send a snapshot instead)."""
        if first <= self._offset:
            raise IndexError(f"entry {first} is compacted away (log offset {self._offset})")
        start = first - self._offset - 1
        batch = self._entries[start : start + max_entries]
        size = 0
        for count, entry in enumerate(batch):
            size += len(entry.data)
            if size > max_bytes and count > 0:
                return batch[:count]
        return batch
