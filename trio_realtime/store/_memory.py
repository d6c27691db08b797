"""MemoryStore: the event store that lives in the process's memory."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Final

import trio

from ._base import (
    DEFAULT_READ_LIMIT,
    Store,
    StoreStatistics,
    _not_open_error,
    check_cursor,
    check_max_bytes,
    check_read_args,
    check_retention,
)
from ._codec import (
    StoredRow,
    decode_row,
    encode_events,
    plan_pattern,
    row_size,
    stored_row_size,
    to_micros,
    with_seqs,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from .._event import Event

__all__ = ["DEFAULT_MEMORY_MAX_BYTES", "DEFAULT_MEMORY_MAX_EVENTS", "MemoryStore"]

#: The ``max_events`` that ``trio-realtime serve --store memory`` uses when given no retention
#: limit: a broker that keeps events in memory must not keep them all.
DEFAULT_MEMORY_MAX_EVENTS: Final = 100_000

#: The ``max_bytes`` (256 MiB) that ``trio-realtime serve --store memory`` uses when given no
#: retention limit, so that a stream of large events cannot fill the memory either.
DEFAULT_MEMORY_MAX_BYTES: Final = 256 * 1024 * 1024

# Removed rows are dropped from the front of the list in one go once this many have piled up
# (and they are at least half of it), so that removing old events costs O(1) amortised.
_COMPACT_AFTER: Final = 1024
_MICROSECOND: Final = timedelta(microseconds=1)


class MemoryStore(Store):
    """An event store in memory, for tests and for processes that need no durability.

    It behaves as :class:`SQLiteStore` does (events go through the same JSON encoding), but
    its data, and so its :attr:`epoch`, live only as long as the object.

    Retention is applied on every append and read, so the limits hold whenever the store is
    looked at.

    Args:
        max_events: Keep at most this many events, removing the oldest (None: no limit).
        max_age: Remove events whose ``time`` is older than this (a timedelta, or seconds), once
            every event before them is too (None: no limit).
        max_bytes: Keep events whose :func:`~trio_realtime.store.approximate_size` adds up to
            at most this, removing the oldest (None: no limit). An event larger than this by
            itself is removed as soon as it is stored (it still gets its seq). Sizes are
            counted once, when events are appended. The memory the store takes is close to
            the approximate size of its events (1.3 times it for events of about 200 bytes,
            measured; about the same for large ones, in ASCII).
    """

    def __init__(
        self,
        *,
        max_events: int | None = None,
        max_age: timedelta | float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._max_events, self._max_age = check_retention(max_events, max_age)
        self._max_age_us = None if self._max_age is None else self._max_age // _MICROSECOND
        self._max_bytes = check_max_bytes(max_bytes)
        self._epoch = secrets.token_hex(16)
        self._state = "new"
        self._rows: list[StoredRow] = []
        self._head = 0  # index in _rows of the first stored row
        self._ids: dict[str, int] = {}  # id -> seq of every stored event
        self._cursors: dict[str, int] = {}
        self._bytes = 0  # the approximate size of the stored events (counted with max_bytes)
        self._last_seq = 0
        self._appends = 0
        self._events_appended = 0
        self._largest = 0
        self._reads = 0
        self._removed = 0

    def __repr__(self) -> str:
        return f"<MemoryStore {self._state}, {len(self._rows) - self._head} events>"

    @property
    def max_events(self) -> int | None:
        """The most events kept (None: no limit)."""
        return self._max_events

    @property
    def max_age(self) -> timedelta | None:
        """The age past which events are removed (None: no limit)."""
        return self._max_age

    @property
    def max_bytes(self) -> int | None:
        """The most bytes of events kept, by their approximate size (None: no limit)."""
        return self._max_bytes

    @property
    def epoch(self) -> str:
        """A random id of this store's data (it changes with every new MemoryStore)."""
        if self._state == "new":
            raise _not_open_error(self)
        return self._epoch

    def _check_open(self) -> None:
        if self._state != "open":
            if self._state == "closed":
                raise trio.ClosedResourceError(f"{self!r} is closed")
            raise _not_open_error(self)

    async def open(self) -> None:
        """Open the store (it starts empty)."""
        if self._state == "closed":
            raise trio.ClosedResourceError(f"{self!r} is closed and cannot be reopened")
        if self._state == "open":
            raise RuntimeError(f"{self!r} is already open")
        await trio.lowlevel.checkpoint()
        self._state = "open"

    async def aclose(self) -> None:
        """Close the store and drop its events. Idempotent."""
        self._state = "closed"
        self._rows = []
        self._head = 0
        self._ids = {}
        self._cursors = {}
        self._bytes = 0
        await trio.lowlevel.checkpoint()

    async def append(self, events: Sequence[Event]) -> list[Event]:
        """Store *events* atomically and return copies of them with ``seq`` set.

        See :meth:`Store.append`. Appending happens without yielding in between, so it is
        never interrupted: it raises :exc:`trio.Cancelled` only before storing anything.
        """
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        rows = encode_events(events)
        ids = self._ids
        for row in rows:
            if row[0] in ids:
                raise ValueError(
                    f"event id {row[0]!r} is already stored (seq {ids[row[0]]}); "
                    f"event ids must be unique"
                )
        seq = self._last_seq
        stored = self._rows
        first = seq + 1
        for row in rows:
            seq += 1
            stored.append((seq, *row))
            ids[row[0]] = seq
        self._last_seq = seq
        if self._max_bytes is not None:
            self._bytes += sum(map(row_size, rows))
        result = with_seqs(events, range(first, seq + 1))
        if rows:
            self._appends += 1
            self._events_appended += len(rows)
            self._largest = max(self._largest, len(rows))
            self._trim()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    async def read(
        self,
        pattern: str,
        *,
        after: int | None = None,
        since: datetime | None = None,
        limit: int = DEFAULT_READ_LIMIT,
        max_bytes: int | None = None,
    ) -> list[Event]:
        """Stored events whose topic matches *pattern*, in seq order (see :meth:`Store.read`)."""
        plan = plan_pattern(pattern)
        start = check_read_args(after, limit, max_bytes)
        since_us = None if since is None else to_micros(since)
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._trim()
        matches = plan.matches
        found: list[Event] = []
        rows, head = self._rows, self._head
        budget = max_bytes
        if head < len(rows) and limit:
            for i in range(head + max(0, start + 1 - rows[head][0]), len(rows)):
                row = rows[i]
                if matches(row[2]) and (since_us is None or row[5] >= since_us):
                    if budget is not None:
                        budget -= stored_row_size(row)
                        if budget < 0 and found:
                            break
                    found.append(decode_row(row))
                    if len(found) >= limit:
                        break
        self._reads += 1
        await trio.lowlevel.cancel_shielded_checkpoint()
        return found

    async def last_seq(self) -> int:
        """The highest seq ever assigned (0 if none)."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        return self._last_seq

    async def first_seq(self) -> int:
        """The lowest seq still stored, or ``last_seq() + 1`` when empty."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        self._trim()
        return self._first_seq()

    async def apply_retention(self) -> int:
        """Apply ``max_events``, ``max_age`` and ``max_bytes`` now; how many events went."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        return self._trim()

    #: It keeps cursors, in memory as its events.
    keeps_cursors = True

    async def load_cursor(self, name: str) -> int | None:
        """The seq last saved under *name*, or None (see :meth:`Store.load_cursor`)."""
        check_cursor(name)
        self._check_open()
        await trio.lowlevel.checkpoint()
        return self._cursors.get(name)

    async def save_cursor(self, name: str, seq: int) -> None:
        """Save *seq* as the cursor *name* (see :meth:`Store.save_cursor`)."""
        check_cursor(name, seq)
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._cursors[name] = seq
        await trio.lowlevel.cancel_shielded_checkpoint()

    def statistics(self) -> StoreStatistics:
        """A snapshot of the store's statistics (each append is one transaction)."""
        return StoreStatistics(
            events_stored=len(self._rows) - self._head,
            first_seq=self._first_seq(),
            last_seq=self._last_seq,
            appends=self._appends,
            events_appended=self._events_appended,
            transactions=self._appends,
            largest_transaction=self._largest,
            pending_appends=0,
            reads=self._reads,
            events_removed=self._removed,
        )

    def _first_seq(self) -> int:
        if self._head < len(self._rows):
            return self._rows[self._head][0]
        return self._last_seq + 1

    def _trim(self) -> int:
        """Remove the events past the retention limits, oldest first; how many went."""
        rows, start = self._rows, self._head
        end = len(rows)
        head = start
        if self._max_events is not None and end - head > self._max_events:
            head = end - self._max_events
        if self._max_age_us is not None:
            cutoff = time.time_ns() // 1000 - self._max_age_us
            while head < end and rows[head][5] < cutoff:
                head += 1
        ids = self._ids
        max_bytes = self._max_bytes
        if max_bytes is None:
            for i in range(start, head):
                del ids[rows[i][1]]
        else:
            size = self._bytes
            for i in range(start, head):
                row = rows[i]
                del ids[row[1]]
                size -= stored_row_size(row)
            while size > max_bytes:  # size is 0 once every row is gone
                row = rows[head]
                del ids[row[1]]
                size -= stored_row_size(row)
                head += 1
            self._bytes = size
        removed = head - start
        if removed:
            if head >= _COMPACT_AFTER and head * 2 >= end:
                del rows[:head]
                head = 0
            self._head = head
            self._removed += removed
        return removed
