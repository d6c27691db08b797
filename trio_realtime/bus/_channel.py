"""The EventChannel interface and the Subscription every implementation hands out.

A :class:`Subscription` is a bounded buffer of events with an explicit overflow policy. The
producer side (the bus routing a publish, or the remote client's reader) uses the
:class:`Sink` methods (``offer``, ``wait_room``…); the consumer side iterates it.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import attrs
import trio

from .._errors import SlowConsumer
from .._event import Event, parse_time
from .._payloads import registered_type, structure_payload
from .._topics import validate_pattern

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_REQUEST_TIMEOUT",
    "EventChannel",
    "Handler",
    "Offered",
    "Overflow",
    "Sink",
    "Subscription",
    "SubscriptionStatistics",
]

logger = logging.getLogger("trio_realtime")

#: Events a subscription buffers by default before its overflow policy applies.
DEFAULT_BUFFER_SIZE: Final = 1024
#: Requests a ``serve`` block answers at the same time, by default.
DEFAULT_MAX_CONCURRENCY: Final = 64
#: Seconds ``request`` waits for a reply by default.
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
#: A consumer that keeps finding events waiting yields to the scheduler once per this many
#: events (it never yields per event: that would cost a task switch per event).
RECEIVE_BATCH: Final = 64

#: A request handler: gets the request event, returns the reply's data (or an awaitable of it).
Handler = Callable[[Event], Awaitable[Any] | Any]


class Overflow(enum.Enum):
    """What a subscription does with a new event when its buffer is full.

    ``BLOCK``
        The publisher waits until there is room: lossless; the slowest consumer sets the pace.
        On a remote client, which cannot make the broker's publishers wait, a full ``block``
        subscription takes up to as many events again as its buffer holds, then falls
        behind: stored events come back from the store once the consumer has made room,
        others are counted as missed; it never stalls the connection (see the
        backpressure page).
    ``DROP_OLDEST``
        The oldest buffered event is dropped to make room: a consumer that falls behind sees
        the latest events (good for state and telemetry).
    ``DROP_NEWEST``
        The new event is dropped: a consumer that falls behind keeps what it had.
    ``DISCONNECT``
        The subscription ends: its next receive raises :exc:`~trio_realtime.SlowConsumer`.

    Dropped events are counted in :attr:`Subscription.missed`.
    """

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"
    DISCONNECT = "disconnect"


OverflowLike = Overflow | str

# The policies as module constants: an Enum member looked up on its class costs ~75 ns, on
# the path of every event offered to a full subscription.
_BLOCK: Final = Overflow.BLOCK
_DROP_OLDEST: Final = Overflow.DROP_OLDEST
_DROP_NEWEST: Final = Overflow.DROP_NEWEST


class Offered(enum.Enum):
    """What became of an event offered to a :class:`Sink`.

    ``ACCEPTED``
        The sink took it (buffered, queued, or held for later delivery).
    ``DROPPED``
        The sink let it go: its policy dropped it (counted as missed), its payload type
        rejected it, or the sink has ended.
    ``FULL``
        The sink is full and its policy is ``block``: nothing was done. The producer waits
        on :meth:`Sink.wait_room` and offers the event again.
    """

    ACCEPTED = "accepted"
    DROPPED = "dropped"
    FULL = "full"


ACCEPTED: Final = Offered.ACCEPTED
DROPPED: Final = Offered.DROPPED
FULL: Final = Offered.FULL


class Sink(Protocol):
    """Where the bus routes the events that match one subscription.

    A :class:`Subscription` is one; a broker session's remote subscription and a replay in
    progress are others. Every method is synchronous and never blocks but
    :meth:`wait_room`; none of them raises.
    """

    @property
    def pattern(self) -> str:
        """The pattern the sink subscribed to."""

    @property
    def group(self) -> str | None:
        """Its queue group, or None."""

    @property
    def ended(self) -> bool:
        """True once no more events are taken (:meth:`offer` answers ``DROPPED``)."""

    def offer(self, event: Event, *, force: bool = False) -> Offered:
        """Hand over *event* without waiting. With *force*, a full ``block`` sink takes it
        past its size instead of answering ``FULL`` (for the few events a subscriber must
        get at once, such as retained values when it subscribes)."""

    def has_room(self) -> bool:
        """Whether an offer now would be taken without overflow."""

    def accepts(self, topic: str) -> bool:
        """Whether the sink may receive events on *topic* at all (a queue group passes over
        a member that may not: a remote one whose permissions deny the topic)."""

    async def wait_room(self) -> None:
        """Return once the sink has room or has ended."""

    def add_missed(self, n: int) -> None:
        """Count *n* events lost before they reached the sink."""

    def end(self) -> None:
        """No more events will come; what was taken is still delivered."""

    def fail(self, exc: BaseException) -> None:
        """End the sink because of *exc*, which its consumer gets."""


def as_overflow(value: OverflowLike) -> Overflow:
    """*value* as an :class:`Overflow`, accepting the enum or its string value."""
    try:
        return Overflow(value)
    except ValueError:
        choices = ", ".join(repr(o.value) for o in Overflow)
        raise ValueError(f"overflow must be one of {choices}, not {value!r}") from None


def check_buffer_size(size: float) -> float:
    """Validate *size* as a subscription buffer size (a positive int, or ``math.inf``)."""
    if size != math.inf and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"max_buffer_size must be a positive int or math.inf, not {size!r}")
    return size


def check_since(since: object) -> int | datetime | None:
    """Validate a ``since`` argument, as every channel does: a seq (an int, 0 or more), a
    :class:`~datetime.datetime` (naive is taken as UTC; returned aware), or None.

    Raises:
        TypeError: if *since* is of another type.
        ValueError: if it is a negative seq.
    """
    if since is None:
        return None
    if isinstance(since, datetime):
        return parse_time(since)
    if isinstance(since, bool) or not isinstance(since, int):
        raise TypeError(f"since must be a seq (int), a datetime or None, not {since!r}")
    if since < 0:
        raise ValueError(f"since must not be negative, not {since!r}")
    return since


def check_int(value: object, what: str, *, minimum: int) -> None:
    """Raise ValueError unless *value* is an int (not a bool) of at least *minimum*."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int of at least {minimum}, not {value!r}")


def pattern_and_type(pattern: str | type) -> tuple[str, type | None]:
    """The pattern and payload type to subscribe to, from a pattern or a registered class."""
    if isinstance(pattern, str):
        return validate_pattern(pattern), None
    registered = registered_type(pattern)
    if registered is None:
        raise TypeError(
            f"subscribe() takes a pattern or a class registered with @event_type, not {pattern!r}"
        )
    return registered[1], pattern


@attrs.frozen(kw_only=True)
class SubscriptionStatistics:
    """A snapshot of one subscription's state.

    Attributes:
        pattern: What it subscribes to.
        group: Its queue group, if any.
        overflow: Its overflow policy.
        max_buffer_size: How many events it buffers before the policy applies.
        buffered: Events waiting to be received now.
        received: Events the consumer has received.
        missed: Events lost to overflow.
        rejected: Events not delivered because their payload did not fit the subscribed type.
    """

    pattern: str
    group: str | None
    overflow: Overflow
    max_buffer_size: float
    buffered: int
    received: int
    missed: int
    rejected: int


class Subscription:
    """A stream of the events that match one subscription: an async iterator of :class:`Event`.

    Get one from ``subscribe()`` on a bus or client, as an async context manager; leaving the
    block ends it::

        async with bus.subscribe("orders.>") as sub:
            async for event in sub:
                ...

    Iteration ends cleanly when the bus or client closes. After the block has exited,
    receiving raises :exc:`trio.ClosedResourceError`.
    """

    def __init__(
        self,
        pattern: str,
        *,
        group: str | None = None,
        max_buffer_size: float = DEFAULT_BUFFER_SIZE,
        overflow: OverflowLike = Overflow.BLOCK,
        payload_type: type | None = None,
        on_disconnect: Callable[[Subscription], None] | None = None,
    ) -> None:
        self.pattern: Final = pattern
        self.group: Final = group
        self.overflow: Final = as_overflow(overflow)
        self.max_buffer_size: Final = check_buffer_size(max_buffer_size)
        self.payload_type: Final = payload_type
        self._on_disconnect = on_disconnect
        self._buffer: deque[Event] = deque()
        self._readers = trio.lowlevel.ParkingLot()
        self._writers = trio.lowlevel.ParkingLot()
        self._received = 0
        self._missed = 0
        self._rejected = 0
        self._streak = 0
        self._batch = RECEIVE_BATCH  # 0 while a notice waits: every receive takes the slow path
        self._notice: BaseException | None = None
        self._notice_at = 0
        self._waiting_readers = 0
        self._waiting_writers = 0
        self._ended = False  # no more events will come: drain, then EndOfChannel
        self._closed = False  # the owner's block has exited: ClosedResourceError
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        group = f" group={self.group!r}" if self.group else ""
        return f"<Subscription {self.pattern!r}{group} buffered={len(self._buffer)}>"

    @property
    def missed(self) -> int:
        """How many events this subscription lost to overflow so far."""
        return self._missed

    @property
    def buffered(self) -> int:
        """How many events wait in the buffer now."""
        return len(self._buffer)

    def statistics(self) -> SubscriptionStatistics:
        """A snapshot of this subscription's counters."""
        return SubscriptionStatistics(
            pattern=self.pattern,
            group=self.group,
            overflow=self.overflow,
            max_buffer_size=self.max_buffer_size,
            buffered=len(self._buffer),
            received=self._received,
            missed=self._missed,
            rejected=self._rejected,
        )

    # -- consumer side --------------------------------------------------------------------

    def receive_nowait(self) -> Event:
        """The next buffered event, without waiting.

        Raises:
            trio.WouldBlock: if no event is buffered.
            trio.EndOfChannel: if the subscription has ended (the bus or client closed) and
                every buffered event has been received.
            SlowConsumer: if the subscription was ended by the ``disconnect`` policy.
            trio.ClosedResourceError: if the subscription's block has exited.
        """
        if self._closed:
            raise trio.ClosedResourceError("this subscription's block has exited")
        if self._failure is not None:
            raise self._failure
        notice = self._notice
        if notice is not None and self._received >= self._notice_at:
            self._notice = None
            self._batch = RECEIVE_BATCH
            raise notice
        buffer = self._buffer
        if buffer:
            event = buffer.popleft()
            self._received += 1
            if self._waiting_writers:
                self._writers.unpark()
            return event
        if self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Event:
        """The next event, waiting for one if none is buffered.

        When events are waiting this returns at once, yielding to the scheduler (and checking
        for cancellation) only once every few dozen events, so that consuming a backlog does
        not cost a task switch per event. When it has to wait, it is a full checkpoint.

        Raises:
            trio.EndOfChannel: when the bus or client closed and the buffer is drained.
            SlowConsumer: if the subscription was ended by the ``disconnect`` policy.
            trio.ClosedResourceError: if the subscription's block has exited.
        """
        buffer = self._buffer
        # Fast path: a non-empty buffer means the subscription is neither failed nor closed
        # (both clear it).
        if buffer and self._streak < self._batch:
            self._streak += 1
            self._received += 1
            if self._waiting_writers:
                self._writers.unpark()
            return buffer.popleft()
        return await self._receive_slow()

    async def _receive_slow(self) -> Event:
        if self._streak >= self._batch and self._notice is None:
            self._streak = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                event = self.receive_nowait()
            except trio.WouldBlock:
                self._streak = 0
                self._waiting_readers += 1
                try:
                    await self._readers.park()
                finally:
                    self._waiting_readers -= 1
                continue
            self._streak += 1
            return event

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        buffer = self._buffer
        if buffer and self._streak < self._batch:  # the fast path of receive(), inlined
            self._streak += 1
            self._received += 1
            if self._waiting_writers:
                self._writers.unpark()
            return buffer.popleft()
        try:
            return await self._receive_slow()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    # -- producer side (the bus, the remote client) ----------------------------------------

    def _convert(self, event: Event) -> Event | None:
        """*event* with its data as ``payload_type``, or None (counted) if it does not fit."""
        cls = self.payload_type
        if cls is None or isinstance(event.data, cls):
            return event
        try:
            data: Any = structure_payload(event.data, cls)
        except ValueError as exc:  # it names the fields that do not fit (data.items[2].price)
            self._rejected += 1
            logger.warning(
                "event %s on %r not delivered to subscription %r: %s",
                event.id,
                event.topic,
                self.pattern,
                exc,
            )
            return None
        return attrs.evolve(event, data=data)

    # -- the Sink protocol ------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """True once no more events will come (the consumer still drains the buffer)."""
        return self._ended

    def has_room(self) -> bool:
        """Whether the buffer has room for one more event."""
        return len(self._buffer) < self.max_buffer_size

    def accepts(self, topic: str) -> bool:
        """Always: a local subscription receives every topic its pattern matches."""
        return True

    def offer(self, event: Event, *, force: bool = False) -> Offered:
        """Hand *event* to the subscription without waiting; see :meth:`Sink.offer`.

        A full buffer applies the overflow policy: ``block`` answers ``FULL`` (the producer
        awaits :meth:`wait_room` and offers again), the others drop and answer ``DROPPED``.
        With *force*, a ``block`` subscription buffers past its size instead (used for
        retained events at subscribe time).
        """
        if self._ended:
            return DROPPED
        buffer = self._buffer
        full = len(buffer) >= self.max_buffer_size
        if full and not force and self.overflow is _BLOCK:
            return FULL  # (before converting: a producer offers it again once there is room)
        if self.payload_type is not None:
            converted = self._convert(event)
            if converted is None:
                return DROPPED
            event = converted
        if full:
            policy = self.overflow
            if policy is _BLOCK:
                pass  # forced past its size
            elif policy is _DROP_OLDEST:
                buffer.popleft()
                self._missed += 1
            elif policy is _DROP_NEWEST:
                self._missed += 1
                return DROPPED
            else:
                self._missed += 1 + len(buffer)
                buffer.clear()
                self.fail(
                    SlowConsumer(
                        f"subscription {self.pattern!r} fell behind by more than "
                        f"{self.max_buffer_size} events and was disconnected "
                        f"(overflow='disconnect')"
                    )
                )
                return DROPPED
        buffer.append(event)
        if self._waiting_readers:
            self._readers.unpark()
        return ACCEPTED

    def _notify(self, exc: BaseException) -> None:
        """Make the receive after the events buffered now raise *exc*, once; then go on."""
        self._notice = exc
        self._notice_at = self._received + len(self._buffer)
        self._batch = 0
        if self._waiting_readers:
            self._readers.unpark()

    def add_missed(self, n: int) -> None:
        """Count *n* events lost before they reached this subscription (a broker's ``gap``)."""
        self._missed += n

    async def wait_room(self) -> None:
        """Wait until the buffer has room (or the subscription ends)."""
        while not self._ended and len(self._buffer) >= self.max_buffer_size:
            self._waiting_writers += 1
            try:
                await self._writers.park()
            finally:
                self._waiting_writers -= 1

    def fail(self, exc: BaseException) -> None:
        """End the subscription: its next receive raises *exc*."""
        self._buffer.clear()
        self._failure = exc
        self.end()
        if self._on_disconnect is not None:
            self._on_disconnect(self)

    def end(self) -> None:
        """No more events will come; the consumer drains the buffer, then iteration ends."""
        self._ended = True
        self._readers.unpark_all()
        self._writers.unpark_all()

    def _close(self) -> None:
        """The owner's block exited: drop the buffer; further receives raise."""
        self.end()
        self._closed = True
        self._buffer.clear()


@runtime_checkable
class EventChannel(Protocol):
    """The one interface application code depends on, in process or remote.

    :class:`~trio_realtime.Bus` implements it in process, the remote client over a broker,
    and a test can pass either. :func:`trio_realtime.testing.check_channel` checks an
    implementation against the whole contract.
    """

    async def publish(
        self,
        topic: str | object,
        data: Any = None,
        *,
        headers: dict[str, str] | None = None,
        source: str | None = None,
        type: str | None = None,  # noqa: A002 - the envelope's field is called type
        retain: bool = False,
        ack: bool = False,
    ) -> Event:
        """Publish *data* on *topic* (or a typed payload instance) and return the event.

        With *ack*, return only once the event is routed (and stored, where it is persisted),
        with its ``seq``; everything published earlier through the same channel is routed
        by then too.
        """
        ...

    def subscribe(
        self,
        pattern: str | type,
        *,
        group: str | None = None,
        max_buffer_size: float = DEFAULT_BUFFER_SIZE,
        overflow: OverflowLike = Overflow.BLOCK,
        since: int | datetime | None = None,
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to a pattern (or a typed payload class) for the duration of a block.

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
            StoreUnavailable: with *since*, if there is no store (a bus opened without one,
                or a broker running without one).
        """
        ...

    async def request(
        self,
        topic: str,
        data: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> Event:
        """Publish a request and wait for the first reply."""
        ...

    def serve(
        self,
        pattern: str,
        handler: Handler,
        *,
        group: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> AbstractAsyncContextManager[None]:
        """Answer requests on *pattern* with *handler* for the duration of a block.

        At most *max_concurrency* requests are handled at the same time; the next waits for
        one of them to finish.
        """
        ...

    async def history(
        self, pattern: str, *, since: int | datetime | None = None, limit: int = 100
    ) -> list[Event]:
        """Stored events matching *pattern* after *since*, oldest first.

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
            StoreUnavailable: if there is no store (a bus opened without one, or a broker
                running without one).
        """
        ...

    async def aclose(self) -> None:
        """Close the channel now, as leaving the block that opened it does; a no-op once
        closed.

        Live subscriptions end cleanly (their buffered events are still received, then
        iteration stops); waiting operations and every later call raise
        :exc:`trio.ClosedResourceError`.
        """
        ...
