"""What a session sends its client: the client's subscriptions (sinks in the bus), the
outgoing queue they and the answers feed, and the writer, the only task that sends on the
socket.

:class:`SessionOutbox` is the base of :class:`~trio_realtime.broker._session.Session`: it
holds the state every part of a session shares, queues what goes out (events, with their
``gap`` reports when the queue overflows; answers; the error that explains a close) and
drains it, batching frames into one message when a backlog exists, through the protocol's
:class:`~trio_realtime.protocol.MessageBuilder`. A slow client never stalls anyone else: its
queue drops the oldest events or, if so configured, the client is disconnected with close code
4001. Acting on the client's frames is :mod:`trio_realtime.broker._handlers`'s.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final, cast

import trio

from .._errors import ConnectionClosed, LocalProtocolError, RemoteProtocolError, StoreError
from .._event import Event
from .._util import utf8_size
from ..bus._bus import Bus
from ..bus._channel import ACCEPTED, DROPPED, Offered
from ..bus._requests import read_cancel
from ..protocol import (
    CLOSE_SLOW_CONSUMER,
    INTERNAL,
    SLOW_CONSUMER,
    STORE_FAILED,
    Cancel,
    Connection,
    ConnectionState,
    Error,
    FrameError,
    Gap,
    MessageBuilder,
    Role,
    ServerFrame,
    close_code_for,
    encoded_size,
)
from ..protocol._batch import FRAME_OVERHEAD, SUB_ID_SIZE
from ..security import SubscribeDecision
from ._access import Access
from ._cancels import DeliveredRequests
from ._limits import (
    MAX_OPEN_REQUESTS,
    BrokerCounters,
    SessionLimits,
    TokenBucket,
    cost_of_answer,
    size_of_answer,
)

if TYPE_CHECKING:
    from .._transport import WebSocketTransport

__all__ = ["RemoteSubscription", "SessionOutbox"]

_ENDED: Final = frozenset({ConnectionState.CLOSED, ConnectionState.ERROR})


class _EventItem:
    """An event queued for the client, with the ids of the subscriptions it matched."""

    __slots__ = ("event", "size", "subs")

    def __init__(self, event: Event, sub: int, size: int) -> None:
        self.event = event
        self.subs = [sub]
        self.size = size  # counted against max_pending_bytes (the subs too)


class RemoteSubscription:
    """A client's subscription: a sink in the bus that feeds the session's queue."""

    def __init__(
        self, session: SessionOutbox, sub_id: int, pattern: str, group: str | None
    ) -> None:
        self.session = session
        self.id = sub_id
        self.pattern = pattern
        self.group = group
        self.missed = 0
        self.replay: trio.CancelScope | None = None
        self.ended = False
        #: The user's deny patterns that overlap the pattern: matching events are not
        #: delivered (live, retained or replayed). None: nothing to filter.
        self.denied: SubscribeDecision | None = None
        #: Events come as they are routed (not retained values, nor a ``since`` replay):
        #: only a request delivered live gives leave to reply to it.
        self.live = True

    def offer(self, event: Event, *, force: bool = False) -> Offered:
        if self.ended:
            return DROPPED
        denied = self.denied
        if denied is not None and not denied.delivers(event.topic):
            return DROPPED
        session = self.session
        if event.reply_to is not None and self.live:
            session._request_delivered(event.id, event.reply_to)
        session._enqueue_event(self.id, event)
        return ACCEPTED

    def take_cancel(self, cancel: Event) -> bool:
        """The bus hands over the cancel of a request on a topic this subscription matches
        (see :meth:`Bus.route_cancel <trio_realtime.Bus.route_cancel>`): whether it was
        passed on to the client, which was handling the request."""
        return not self.ended and self.session._take_cancel(cancel)

    def has_room(self) -> bool:
        return self.session._has_room()

    def accepts(self, topic: str) -> bool:
        denied = self.denied
        return denied is None or denied.delivers(topic)

    async def wait_room(self) -> None:
        await self.session._wait_room()

    def end(self) -> None:
        self.ended = True

    def add_missed(self, n: int) -> None:
        self.missed += n
        self.session._gaps[self.id] = self.session._gaps.get(self.id, 0) + n

    def fail(self, exc: BaseException) -> None:
        self.ended = True
        code = STORE_FAILED if isinstance(exc, StoreError) else INTERNAL
        self.session._error(self.id, code, f"subscription {self.id} ended: {exc}")


class SessionOutbox:
    """The sending half of a session (see the module's docstring), and the state the session's
    parts share. Made only as a :class:`~trio_realtime.broker._session.Session`."""

    # State that starts the same in every session and changes in few: read from the class
    # until a session first sets it, so that an idle session holds fewer attributes of its
    # own (CPython keeps up to 30 of them without a dict; past that, a dict costs ~1.5 KB).
    # (The subclasses keep to this too.)
    _delivered: DeliveredRequests | None = None  # (made at the first request delivered)
    events_out: int = 0
    dropped: int = 0
    _slow: bool = False
    _closing: bool = False
    #: The error frame the writer sends last, before the close (set by close()).
    _final: Error | None = None

    def __init__(
        self,
        limits: SessionLimits,
        counters: BrokerCounters,
        bus: Bus,
        transport: WebSocketTransport,
        session_id: str,
    ) -> None:
        self.limits = limits
        self.counters = counters
        self.bus = bus
        self.transport = transport
        self.id = session_id
        self.address = transport.remote
        #: The user the authenticator named, or None when the broker does not authenticate.
        #: Who the client is, and what it may do.
        self.access = Access()
        #: The publish-rate buckets this connection draws from (its own, its user's), set by
        #: the broker when the session starts; empty: no rate limit.
        self.rate_buckets: tuple[TokenBucket, ...] = ()
        #: The protocol connection: the one record of the client's subscriptions (each
        #: accepted one has its :class:`RemoteSubscription` attached) and open refs.
        self.conn: Connection[RemoteSubscription, None] = Connection(Role.SERVER)
        self._session_buffer = limits.session_buffer
        self._max_pending_bytes = limits.max_pending_bytes
        self._queue: deque[ServerFrame | _EventItem | str] = deque()
        self._queued_events = 0
        self._queued_bytes = 0  # of the queued events
        self._answer_bytes = 0  # of the queued answers
        self._publisher: str = f"session:{session_id}"  # who deduplication knows it as
        self._gaps: dict[int, int] = {}
        self._gaps_stored: dict[int, int] = {}  # of the gaps, how many were stored events
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._room_lot = trio.lowlevel.ParkingLot()
        self._writer_done = trio.Event()
        self._queued_control = 0  # answers queued (weighted: a history result by its events)
        self._processing = False  # the reader is acting on the client's frames
        self._nursery: trio.Nursery | None = None

    @property
    def user(self) -> str | None:
        """The user the authenticator named, or None when the broker does not authenticate."""
        return self.access.user

    # -- the outgoing queue ---------------------------------------------------------------

    def _enqueue(self, frame: ServerFrame | str) -> None:
        """Queue an answer (a frame, or the text the connection made of one) for the writer."""
        self._queue.append(frame)
        self._queued_control += cost_of_answer(frame)
        self._answer_bytes += size_of_answer(frame)
        if self._writer_lot:
            self._writer_lot.unpark()

    def _enqueue_event(self, sub_id: int, event: Event) -> None:
        queue = self._queue
        if queue:
            last = queue[-1]
            if type(last) is _EventItem and last.event is event:
                last.subs.append(sub_id)  # one frame for every subscription it matched
                last.size += SUB_ID_SIZE  # (freed with the item)
                self._queued_bytes += SUB_ID_SIZE
                return
        wire = event._wire  # (encoded once, by the publishing session or the bus)
        size = (wire[1] if wire is not None else encoded_size(event)) + FRAME_OVERHEAD
        buffer = self._session_buffer
        while self._queued_events and (
            self._queued_events >= buffer or self._queued_bytes + size > self._max_pending_bytes
        ):
            self.counters.count_limit(
                "session_buffer" if self._queued_events >= buffer else "max_pending_bytes"
            )
            self._overflow()
            if self._slow:
                return
        queue.append(_EventItem(event, sub_id, size))
        self._queued_events += 1
        self._queued_bytes += size
        if self._writer_lot:
            self._writer_lot.unpark()

    def _overflow(self) -> None:
        """The queue is full: drop its oldest event (counted, reported) or end the session."""
        if self.limits.slow_consumer == "disconnect":
            if not self._slow:
                self._slow = True
                self.counters.count_error(SLOW_CONSUMER)
                for _, remote in self.conn.subscriptions():
                    remote.end()  # a replay waiting for room stops too
                self._writer_lot.unpark_all()
                self._room_lot.unpark_all()
            return
        for i, item in enumerate(self._queue):
            if type(item) is _EventItem:
                del self._queue[i]
                self._queued_events -= 1
                self._queued_bytes -= item.size
                self.dropped += 1
                stored = item.event.seq is not None
                for sub_id in item.subs:
                    self._gaps[sub_id] = self._gaps.get(sub_id, 0) + 1
                    if stored:
                        self._gaps_stored[sub_id] = self._gaps_stored.get(sub_id, 0) + 1
                    sub = self.conn.subscription(sub_id)
                    if sub is not None:
                        sub.missed += 1
                return

    def _has_room(self) -> bool:
        return (
            self._queued_events < self._session_buffer
            and self._queued_bytes < self._max_pending_bytes
        )

    async def _wait_room(self) -> None:
        await trio.lowlevel.checkpoint()
        while not self._has_room() and not self._slow:
            await self._room_lot.park()

    def _error(self, ref: int | None, code: str, message: str) -> None:
        self.counters.count_error(code)
        self._enqueue(Error(ref=ref, code=code, message=message))

    # -- the writer: the one task that sends on the socket --------------------------------

    async def _writer(self) -> None:
        try:
            await self._write()
        except ConnectionClosed:
            self.conn.send_failed()
            self._nursery_cancel()  # the client is gone: end the session quietly
        finally:
            self._writer_done.set()

    async def _write(self) -> None:
        queue = self._queue
        conn = self.conn
        builder = MessageBuilder(conn, self.limits.max_message_size)
        counters = self.counters
        while True:
            if self._slow and not self._closing:
                self._closing = True
                self._final = Error(
                    code=SLOW_CONSUMER,
                    message=f"more than {self._session_buffer} events, or "
                    f"{self._max_pending_bytes} bytes, were waiting to be sent to this "
                    "client: it reads too slowly",
                )
                await self._send_final()
                self._writer_done.set()
                await self.transport.aclose(
                    CLOSE_SLOW_CONSUMER, "slow consumer", timeout=self.limits.shutdown_timeout
                )
                return
            if self._closing:
                await self._send_final()  # then the close frame (no new batches)
                return
            if conn.state in _ENDED:
                return
            if not queue and not self._gaps:
                await self._writer_lot.park()
                continue
            builder.start()
            if self._gaps:
                # As many gaps as fit in this message; the others go in the next.
                gaps, stored = self._gaps, self._gaps_stored
                for sub_id in list(gaps):
                    if builder.full:
                        break
                    if conn.subscription(sub_id) is not None:
                        gap = Gap(sub=sub_id, missed=gaps[sub_id], stored=stored.get(sub_id, 0))
                        if not builder.add_frame(gap, FRAME_OVERHEAD):
                            break
                    del gaps[sub_id]
                    stored.pop(sub_id, None)
            events = 0
            freed = 0
            while queue and not builder.full:
                item = queue[0]
                if type(item) is _EventItem:
                    subs = item.subs
                    fit = builder.add_event(subs, item.event)
                    if not fit:
                        break
                    if fit < len(subs):
                        item.subs = subs[fit:]  # the rest go in the next message
                    else:
                        queue.popleft()
                        events += 1
                        freed += item.size
                else:
                    answer = cast("ServerFrame | str", item)
                    cost = size_of_answer(answer)
                    if type(answer) is str:
                        if builder.count:
                            break  # (the welcome: alone)
                        builder.add_text(answer, cost)
                    elif not builder.add_frame(cast("ServerFrame", answer), cost):
                        break
                    queue.popleft()
                    self._queued_control -= cost_of_answer(answer)
                    self._answer_bytes -= cost
            self._queued_bytes -= freed
            self._queued_events -= events
            if self._room_lot:
                self._room_lot.unpark_all()
            if not builder.count:
                continue
            text = builder.finish()
            await self.transport.send(text)
            self.events_out += events
            counters.events_out += events
            counters.bytes_out += utf8_size(text)

    async def _send_final(self) -> None:
        """Send the error frame that explains the close, if any (a bounded time)."""
        final, self._final = self._final, None
        if final is None:
            return
        try:
            text = self.conn.send(final)
        except LocalProtocolError:  # pragma: no cover - an error may always be sent
            return
        with trio.move_on_after(self.limits.shutdown_timeout):
            await self.transport.send(text)

    async def close(self, code: int, reason: str, *, error: Error | None = None) -> None:
        """Close the WebSocket with *code* (waiting a bounded time for the client to agree),
        after the writer sent *error*, if given, to explain.

        The writer finishes the message it is sending and stops, so the close frame follows.
        """
        if error is not None and not self._closing:
            self._final = error
        self._closing = True
        self._writer_lot.unpark_all()
        self._room_lot.unpark_all()
        timeout = self.limits.shutdown_timeout
        if self._nursery is not None:
            with trio.move_on_after(timeout):
                await self._writer_done.wait()
        self.conn.close()  # (one that broke the protocol stays in ERROR)
        await self.transport.aclose(code, reason, timeout=timeout)

    async def _refuse(self, error: FrameError | RemoteProtocolError) -> None:
        """A fatal protocol violation: explain it in an error frame, then close (1009 for a
        message too large, else the code :func:`close_code_for` gives)."""
        self.counters.count_error(error.code)
        frame = Error(ref=error.ref, code=error.code, message=str(error))
        await self.close(close_code_for(error.code), str(error)[:120], error=frame)

    def _nursery_cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- subscriptions and the requests they deliver --------------------------------------

    def _end_subscription(self, sub_id: int, sub: RemoteSubscription) -> None:
        if sub.replay is not None:
            sub.replay.cancel()
        sub.end()
        self.bus.remove_sink(sub)
        self.conn.detach(sub_id)

    def _drop_subscriptions(self) -> None:
        for sub_id, sub in self.conn.subscriptions():
            self._end_subscription(sub_id, sub)

    def _grant_response(self, reply_to: str) -> None:
        """A request with *reply_to* is being delivered: the connection may answer it."""
        if self.access.received(reply_to):
            self.counters.count_limit("response_grants")

    def _request_delivered(self, request_id: str, reply_to: str) -> None:
        """A request is being delivered live: the connection may answer it, and its
        requester's cancel reaches it until it does."""
        if self.access.grants is not None:
            self._grant_response(reply_to)
        delivered = self._delivered
        if delivered is None:
            delivered = self._delivered = DeliveredRequests(MAX_OPEN_REQUESTS)
        if delivered.add(request_id, reply_to):
            self.counters.count_limit("open_requests")

    def _take_cancel(self, cancel: Event) -> bool:
        """Pass the cancel of a request on to the client, if it was delivered the request and
        has not answered it."""
        named = read_cancel(cancel)
        delivered = self._delivered
        if named is None or delivered is None or not delivered.take(*named):
            return False
        request_id, reply_to = named
        self._enqueue(Cancel(id=request_id, topic=cancel.topic, reply_to=reply_to))
        return True
