"""The :class:`Store` interface and its statistics."""

from __future__ import annotations

import abc
import operator
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, Final

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Sequence
    from datetime import datetime
    from types import TracebackType
    from typing import Self

    from .._event import Event

__all__ = [
    "DEFAULT_READ_LIMIT",
    "MAX_CURSOR_NAME",
    "Store",
    "StoreStatistics",
]

#: How many events :meth:`Store.read` returns at most when no ``limit`` is given.
DEFAULT_READ_LIMIT: Final = 100
#: The longest name of a cursor (:meth:`Store.save_cursor`), in characters.
MAX_CURSOR_NAME: Final = 200


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """A snapshot of what a store holds and has done since it was opened.

    Attributes:
        events_stored: Events the store holds now.
        first_seq: The lowest seq still stored (``last_seq + 1`` when empty).
        last_seq: The highest seq ever assigned (0 if none).
        appends: :meth:`Store.append` calls that stored their events, since the store was
            opened.
        events_appended: Events those calls stored.
        transactions: Write transactions (group commits) that stored them; ``events_appended /
            transactions`` is the average batch size.
        largest_transaction: Events in the largest of those transactions.
        pending_appends: :meth:`Store.append` calls waiting for their transaction.
        reads: :meth:`Store.read` calls answered.
        events_removed: Events removed by retention (``max_events``, ``max_age``, and
            ``max_bytes`` where a store offers it).
        commit_seconds: Seconds the write transactions took, together (``commit_seconds /
            transactions`` is the average commit latency); 0 for a store that does not time
            them.
        size_bytes: The bytes the store takes on disk (an SQLite file with its write-ahead
            log), or None for a store that has no such size.
    """

    events_stored: int = 0
    first_seq: int = 1
    last_seq: int = 0
    appends: int = 0
    events_appended: int = 0
    transactions: int = 0
    largest_transaction: int = 0
    pending_appends: int = 0
    reads: int = 0
    events_removed: int = 0
    commit_seconds: float = 0.0
    size_bytes: int | None = None


def _not_open_error(store: object) -> RuntimeError:
    return RuntimeError(
        f"{store!r} is not open yet: use 'async with store:' or 'await store.open()' first"
    )


def check_retention(
    max_events: int | None, max_age: timedelta | float | None
) -> tuple[int | None, timedelta | None]:
    """Validate retention options; *max_age* as a timedelta.

    Raises:
        ValueError: if *max_events* is below 1 or *max_age* is not positive.
        TypeError: if either has the wrong type.
    """
    if max_events is not None:
        max_events = operator.index(max_events)
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
    age: timedelta | None
    if max_age is None:
        age = None
    elif isinstance(max_age, timedelta):
        age = max_age
    else:
        try:
            age = timedelta(seconds=max_age)
        except TypeError:
            raise TypeError(
                f"max_age must be a timedelta, a number of seconds or None, not {max_age!r}"
            ) from None
    if age is not None and age <= timedelta(0):
        raise ValueError(f"max_age must be positive, not {max_age!r}")
    return max_events, age


def check_max_bytes(max_bytes: int | None) -> int | None:
    """Validate a ``max_bytes`` option or argument.

    Raises:
        TypeError: if *max_bytes* is neither an int nor None.
        ValueError: if it is below 1.
    """
    if max_bytes is None:
        return None
    max_bytes = operator.index(max_bytes)
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
    return max_bytes


def check_cursor(name: object, seq: object = 0) -> None:
    """Validate a cursor's name (and the seq to save under it).

    Raises:
        TypeError: if *name* is not a string or *seq* not an int.
        ValueError: if *name* is empty or longer than :data:`MAX_CURSOR_NAME`, or *seq* is
            negative.
    """
    if not isinstance(name, str):
        raise TypeError(f"a cursor's name must be a string, not {name!r}")
    if not 0 < len(name) <= MAX_CURSOR_NAME:
        raise ValueError(
            f"a cursor's name must have 1 to {MAX_CURSOR_NAME} characters, not {len(name)}"
        )
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise TypeError(f"a cursor's seq must be an int, not {seq!r}")
    if seq < 0:
        raise ValueError(f"a cursor's seq must not be negative, not {seq!r}")


def check_read_args(after: int | None, limit: int, max_bytes: int | None = None) -> int:
    """Validate :meth:`Store.read` arguments; the seq to read after (0 for None).

    Raises:
        TypeError: if *after*, *limit* or *max_bytes* is not an int (*after* and *max_bytes*
            may be None).
        ValueError: if *limit* is negative, or *max_bytes* below 1.
    """
    limit = operator.index(limit)
    if limit < 0:
        raise ValueError(f"limit must not be negative, not {limit}")
    check_max_bytes(max_bytes)
    if after is None:
        return 0
    return max(operator.index(after), 0)


class Store(trio.abc.AsyncResource, abc.ABC):
    """Where events are kept, each under a seq: the interface every event store implements.

    A store is opened once and closed once::

        async with SQLiteStore("events.db") as store:
            [stored] = await store.append([Event(topic="orders.created", data={"id": 1})])
            events = await store.read("orders.>", after=0)

    Contract (checked for an implementation by
    :func:`trio_realtime.testing.check_store`):

    * seqs start at 1, strictly increase across the whole store and are never reused, not even
      after retention removed events; the events of one append get consecutive seqs;
    * :meth:`append` stores its batch atomically (all or nothing), and does not yield to other
      tasks before its batch is queued, so that concurrent appends get seqs in the order the
      calls were made;
    * an append that raises :exc:`trio.Cancelled` stored nothing; one that returns stored
      everything (see the implementation for what it does when cancelled mid-write);
    * what :meth:`read` returns equals what was appended (with ``seq`` set): ``data`` comes back
      as plain JSON (a tuple as a list), except that the payloads of types registered with
      :func:`~trio_realtime.event_type` come back as instances of their class;
    * :meth:`read` with ``max_bytes`` returns the longest prefix of what it would return
      without it whose :func:`~trio_realtime.store.approximate_size` adds up to at most
      ``max_bytes``, but at least one event when any matches;
    * retention, where an implementation offers it, removes events from the oldest end only, so
      the events a store holds always have the seqs ``first_seq() .. last_seq()``;
    * :meth:`aclose` is idempotent and closes even when cancelled; after it, every operation
      raises :exc:`trio.ClosedResourceError`;
    * a store that :attr:`keeps_cursors` gives back from :meth:`load_cursor` the seq last
      saved under a name with :meth:`save_cursor` (None for a name never saved).
    """

    __slots__ = ()

    #: Whether the store keeps cursors (:meth:`save_cursor`) with its events. A store that
    #: cannot keep them leaves this false, as this class does: its :meth:`load_cursor` then
    #: always answers None, and readers that save cursors start afresh after a restart.
    keeps_cursors: ClassVar[bool] = False

    #: The most events one :meth:`append` may store (None: no limit); a bus appends no more
    #: at once.
    max_append: ClassVar[int | None] = None

    async def __aenter__(self) -> Self:
        """Open the store (see :meth:`open`) and return it."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the store (see :meth:`aclose`)."""
        await self.aclose()

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the store: create its data, or load what is there.

        A store is opened once; ``async with store:`` calls this.

        Raises:
            StoreError: if the storage is unusable (the message names it and what to do).
            RuntimeError: if the store was already opened.
            trio.ClosedResourceError: if the store was closed.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the store, after storing the appends already queued (unless cancelled).

        Idempotent, and closes even when cancelled (appends still queued then fail with
        :exc:`trio.ClosedResourceError`).
        """

    @property
    @abc.abstractmethod
    def epoch(self) -> str:
        """A random id given to the store's data when it was created, kept with the data.

        Seq 42 of one epoch is not seq 42 of another (a store that was wiped and recreated).

        Raises:
            RuntimeError: if the store was never opened.
        """

    @abc.abstractmethod
    async def append(self, events: Sequence[Event]) -> list[Event]:
        """Store *events* atomically and return copies of them with ``seq`` set.

        Raises:
            InvalidTopic: if a topic (or ``reply_to``) is not a valid topic; nothing is stored.
            TypeError: if ``data`` or ``headers`` of an event are not JSON-compatible, or a
                field has the wrong type; nothing is stored.
            ValueError: if an event id is already stored, or appears twice in *events*;
                nothing is stored.
            StoreError: if the storage failed; nothing is stored.
            trio.ClosedResourceError: if the store is closed.
        """

    @abc.abstractmethod
    async def read(
        self,
        pattern: str,
        *,
        after: int | None = None,
        since: datetime | None = None,
        limit: int = DEFAULT_READ_LIMIT,
        max_bytes: int | None = None,
    ) -> list[Event]:
        """Stored events whose topic matches *pattern*, in seq order.

        Args:
            pattern: A topic, or a pattern with ``*`` (one token) and a final ``>`` (one or more
                tokens).
            after: Only events with a greater seq.
            since: Only events whose ``time`` is at or after this (a naive time is UTC).
            limit: At most this many events; read the next page with ``after`` set to the
                last seq returned.
            max_bytes: At most this many bytes of events, as
                :func:`~trio_realtime.store.approximate_size` counts them: the events
                returned are the longest prefix of the matching ones that fits, but at least
                one when any matches (None: no limit). This bounds the memory a page takes
                whatever the size of the events. A page cut short by ``max_bytes`` has fewer
                than ``limit`` events although more match: page on until a page comes back
                empty.

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
            ValueError: if *limit* is negative or *max_bytes* below 1.
            StoreError: if the storage failed.
            trio.ClosedResourceError: if the store is closed.
        """

    @abc.abstractmethod
    async def last_seq(self) -> int:
        """The highest seq ever assigned in this store (0 if none).

        Raises:
            trio.ClosedResourceError: if the store is closed.
        """

    @abc.abstractmethod
    async def first_seq(self) -> int:
        """The lowest seq still stored, or ``last_seq() + 1`` when the store is empty.

        A reader that wants events after seq *n* and finds ``first_seq() > n + 1`` knows that
        retention removed some of them.

        Raises:
            trio.ClosedResourceError: if the store is closed.
        """

    @abc.abstractmethod
    async def apply_retention(self) -> int:
        """Apply the retention limits now and return how many events were removed.

        Stores apply retention by themselves; this is for tests and maintenance. A store
        without retention limits removes nothing.

        Raises:
            trio.ClosedResourceError: if the store is closed.
        """

    # -- a store shared by several processes (such as a cluster's brokers) ------------------

    @property
    def shared(self) -> bool:
        """Whether other processes may append to the store while this one has it open.

        A bus with a shared store routes stored events from :meth:`tail` (every process's, in
        seq order) rather than from what its own appends return. False for this class.
        """
        return False

    async def append_from(
        self, events: Sequence[Event], origins: Sequence[str | None]
    ) -> list[Event]:
        """Append *events* as :meth:`append` does, with an *origin* for each: a short string
        that a shared store keeps with the event and gives back with it from :meth:`tail` (a
        bus keeps there who published the event, and whether it was retained). A store that
        is not :attr:`shared` drops them: this implementation calls :meth:`append`.

        Raises:
            ValueError: if *origins* does not have one item per event; and as :meth:`append`.
        """
        if len(origins) != len(events):
            raise ValueError(f"{len(origins)} origins for {len(events)} events")
        return await self.append(events)

    def tail(self, after: int) -> AsyncGenerator[list[tuple[Event, str | None]], None]:
        """Every event stored after seq *after*, whoever stored it, in seq order, in batches
        as they come, each with its origin (see :meth:`append_from`; None if it has none);
        without end. For a :attr:`shared` store; use it with :func:`contextlib.aclosing`.

        Raises:
            NotImplementedError: in a store that is not shared (this implementation).
            StoreError: if the store can no longer be followed.
            trio.ClosedResourceError: if the store is closed.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a shared store: it has no tail")

    async def load_cursor(self, name: str) -> int | None:
        """The seq last saved under *name* with :meth:`save_cursor`, or None if none was.

        A cursor is a reader's position in the store, such as how far a webhook endpoint has
        delivered the stored events, kept with the events so that it survives a restart and
        goes with them: a store whose data is new has no cursors. In a store that does not
        :attr:`keeps_cursors` (the default implementation), it is always None.

        Raises:
            TypeError: if *name* is not a string.
            ValueError: if *name* is empty or longer than :data:`MAX_CURSOR_NAME`.
            StoreError: if the storage failed.
            trio.ClosedResourceError: if the store is closed.
        """
        check_cursor(name)
        await trio.lowlevel.checkpoint()
        return None

    async def save_cursor(self, name: str, seq: int) -> None:
        """Save *seq* as the cursor *name* (replacing what was saved under that name).

        Saving is durable as appending is (for an SQLite store, as its ``synchronous``
        setting says). A store that does not :attr:`keeps_cursors` (the default
        implementation) keeps nothing.

        Raises:
            TypeError: if *name* is not a string or *seq* not an int.
            ValueError: if *name* is empty or longer than :data:`MAX_CURSOR_NAME`, or *seq*
                is negative.
            StoreError: if the storage failed.
            trio.ClosedResourceError: if the store is closed.
        """
        check_cursor(name, seq)
        await trio.lowlevel.checkpoint()

    @abc.abstractmethod
    def statistics(self) -> StoreStatistics:
        """A snapshot of the store's :class:`StoreStatistics`."""
