"""One connected client on the broker's side: its nursery, its queue, its limits.

A session runs its tasks in its own nursery: the reader (the session's main task: it reads
messages, feeds the sans-IO :class:`~trio_realtime.protocol.Connection` and acts on each
frame), the writer (the only task that sends on the socket: it drains the outgoing queue,
batching frames into one message when a backlog exists, through the protocol's
:class:`~trio_realtime.protocol.MessageBuilder`), the acker (from the first persisted publish),
and the ``since`` replays of its subscriptions. Every other path (pings, pongs, error frames,
the error announcing a close) queues for the writer. Its heartbeat is no task of its own: the
broker's :class:`~trio_realtime.broker._limits.HeartbeatTimers` calls
:meth:`Session.heartbeat_due` at each of its deadlines.

Each remote subscription is a sink in the broker's bus; a slow client never stalls anyone
else: its queue drops the oldest events (reported with ``gap`` frames) or, if so configured,
the client is disconnected with close code 4001.

A session knows the broker only through a :class:`SessionContext`: the bus, the limits, the
counters it adds to, the two calls that register it with the broker, and the timers that run
its heartbeat. What its client may do (its user, permissions, inbox, leave to reply and
expiry) is its :class:`~trio_realtime.broker._access.Access`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
import trio

from .._errors import (
    ConnectionClosed,
    InvalidTopic,
    LocalProtocolError,
    NoResponders,
    Refused,
    RemoteProtocolError,
    StoreError,
    StoreUnavailable,
)
from .._event import Event, parse_time
from .._topics import is_reserved, validate_pattern, validate_topic
from .._util import open_service_nursery, utf8_size
from ..bus._bus import Bus, PendingCommit
from ..bus._channel import ACCEPTED, DROPPED, Offered
from ..bus._requests import cancel_event, read_cancel
from ..protocol import (
    AUTH_EXPIRED,
    AUTH_FAILED,
    BAD_FRAME,
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT,
    CLOSE_POLICY,
    CLOSE_PROTOCOL,
    CLOSE_SLOW_CONSUMER,
    FORBIDDEN,
    INTERNAL,
    INVALID_TOPIC,
    LIMIT,
    NO_RESPONDERS,
    NO_STORE,
    PROTOCOL,
    RATE_LIMITED,
    SLOW_CONSUMER,
    STORE_FAILED,
    TOO_LARGE,
    USER_HEADER,
    Ack,
    Cancel,
    Connection,
    ConnectionState,
    Error,
    FrameError,
    Gap,
    Heartbeat,
    HeartbeatAction,
    Hello,
    History,
    HistoryResult,
    MessageBuilder,
    Ping,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    Role,
    ServerFrame,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    close_code_for,
    encoded_size,
)
from ..protocol._batch import FRAME_OVERHEAD, MESSAGE_MARGIN, SUB_ID_SIZE
from ..security import (
    Authenticator,
    AuthFailed,
    HandshakeInfo,
    SubscribeDecision,
)
from ._access import Access
from ._cancels import DeliveredRequests
from ._history import MAX_HISTORY, read_history, read_history_filtered
from ._limits import (
    CANCEL_BURST,
    CANCEL_RATE,
    MAX_ANSWER_BACKLOG,
    MAX_OPEN_REQUESTS,
    RATE_REFUSALS_BEFORE_CLOSE,
    REFRESH_BURST,
    REFRESH_RATE,
    REFRESH_REFUSALS_BEFORE_CLOSE,
    BrokerCounters,
    HeartbeatTimers,
    SessionLimits,
    TokenBucket,
    cost_of_answer,
    size_of_answer,
)

if TYPE_CHECKING:
    from .._transport import WebSocketTransport

__all__ = ["BrokerCounters", "Session", "SessionContext", "SessionLimits"]

logger = logging.getLogger("trio_realtime.broker")

#: The longest ``hello.instance`` used to scope deduplication; longer ones are cut.
MAX_INSTANCE_LENGTH: Final = 256

_ENDED: Final = frozenset({ConnectionState.CLOSED, ConnectionState.ERROR})


# ---------------------------------------------------------------------------------------------
# What a session knows of its broker


@attrs.frozen(kw_only=True)
class SessionContext:
    """What a session gets from its broker.

    Attributes:
        bus: The bus its subscriptions and publishes go to.
        limits: The settings it applies.
        counters: Where it counts errors, limits hit and events.
        started: Called once the handshake is done; False if the broker is shutting down
            (the session then leaves).
        ended: Called when a started session ends.
        heartbeats: The timers that run the sessions' heartbeats.
        auth: Who checks the ``hello`` token, or None: every client is anonymous, with full
            access.
        auth_failed: Called when the authenticator refused a client, with the reason (which
            never holds token material).
    """

    bus: Bus
    limits: SessionLimits
    counters: BrokerCounters
    started: Callable[[Session], Awaitable[bool]]
    ended: Callable[[Session], Awaitable[None]]
    heartbeats: HeartbeatTimers
    auth: Authenticator | None = None
    auth_failed: Callable[[Session, str], None] = lambda session, reason: None


class _EventItem:
    """An event queued for the client, with the ids of the subscriptions it matched."""

    __slots__ = ("event", "size", "subs")

    def __init__(self, event: Event, sub: int, size: int) -> None:
        self.event = event
        self.subs = [sub]
        self.size = size  # counted against max_pending_bytes (the subs too)


class RemoteSubscription:
    """A client's subscription: a sink in the bus that feeds the session's queue."""

    def __init__(self, session: Session, sub_id: int, pattern: str, group: str | None) -> None:
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


class Session:
    """The broker's side of one client connection. Created and run by the broker."""

    # State that starts the same in every session and changes in few: read from the class
    # until a session first sets it, so that an idle session holds fewer attributes of its
    # own (CPython keeps up to 30 of them without a dict; past that, a dict costs ~1.5 KB).
    client: str | None = None
    _rate_refusals: int = 0  # publishes refused in a row for their rate
    _refresh_bucket: TokenBucket | None = None  # (made at the first refresh)
    _cancel_bucket: TokenBucket | None = None  # (made at the first cancel)
    _delivered: DeliveredRequests | None = None  # (made at the first request delivered)
    events_in: int = 0
    events_out: int = 0
    dropped: int = 0
    _replays: trio.Semaphore | None = None  # (made at the first replay)
    _slow: bool = False
    _closing: bool = False
    #: The error frame the writer sends last, before the close (set by close()).
    _final: Error | None = None
    #: The acks of persisted publishes (made at the first: see _acks_send).
    _acks: trio.MemorySendChannel[tuple[int, PendingCommit]] | None = None

    def __init__(
        self, context: SessionContext, transport: WebSocketTransport, session_id: str
    ) -> None:
        self.context = context
        self.limits = limits = context.limits
        self.counters = context.counters
        self.bus = context.bus
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
        self._heartbeat_policy = Heartbeat(limits.heartbeat, trio.current_time())
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<Session {self.id} client={self.client!r} address={self.address}>"

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

    # -- the writer: the one task that sends on the socket ----------------------------------

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

    # -- the session's life ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; tidy up the client's subscriptions."""
        try:
            async with open_service_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                hello = await self._handshake()
                if hello is None:
                    return
                if not await self.context.started(self):
                    await self.close(CLOSE_GOING_AWAY, "broker shutting down")
                    return
                heartbeats = self.context.heartbeats
                heartbeat = heartbeats.add(self, trio.current_time())
                try:
                    if self.context.auth is not None:
                        nursery.start_soon(self._watch_expiry)
                    await self._reader()
                finally:
                    heartbeats.remove(heartbeat)
                    self._drop_subscriptions()
                    await self.context.ended(self)
        except ConnectionClosed:
            pass

    async def _handshake(self) -> Hello | None:
        """Read until the client's ``hello``; answer ``welcome``. None if the client left, or
        was refused (then the connection is closed)."""
        limits = self.limits
        refusal: FrameError | RemoteProtocolError | None = None
        with trio.move_on_after(limits.handshake_timeout):
            while refusal is None:
                try:
                    text = await self.transport.receive()
                except RemoteProtocolError as exc:  # binary, or too big: fatal before hello
                    refusal = exc
                    break
                self._heartbeat_policy.received(trio.current_time())
                self.conn.receive_text(text)
                for item in self.conn.frames():
                    if type(item) is FrameError:  # fatal before hello
                        refusal = item
                        break
                    if type(item) is Hello:
                        self.client = item.client
                        refusal = await self._authenticate(item)
                        if refusal is not None:
                            break
                        if item.instance:
                            instance = item.instance[:MAX_INSTANCE_LENGTH]
                            # (a user's instance: nobody else can claim its published ids)
                            user = self.access.user
                            who = "" if user is None else f"user:{user}:"
                            self._publisher = f"{who}instance:{instance}"
                        welcome = Welcome(
                            session=self.id,
                            broker=limits.name,
                            heartbeat=limits.heartbeat,
                            epoch=self.bus.store.epoch if self.bus.store is not None else None,
                            user=self.access.user,
                            inbox=self.access.inbox,
                            expires_in=self.access.expires_in(),
                            nodes=limits.nodes,
                        )
                        # Sent through the connection now (it is open from here on: the
                        # frames the client pipelined come out next), queued as text.
                        self._enqueue(self.conn.send(welcome))
                        return item
        if refusal is not None:  # (refused outside the timeout: the refusal takes its time)
            await self._refuse(refusal)
            return None
        self.counters.count_error("handshake_timeout")
        message = f"no 'hello' within the handshake timeout ({limits.handshake_timeout:g} s)"
        await self.close(
            CLOSE_PROTOCOL,
            "no 'hello' within the handshake timeout",
            error=Error(code=PROTOCOL, message=message),
        )
        return None

    async def _authenticate(self, hello: Hello) -> RemoteProtocolError | None:
        """Ask the authenticator who the client is; the refusal to send, if it says nobody."""
        auth = self.context.auth
        if auth is None:
            return None
        handshake = self._handshake_info()
        try:
            identity = await auth.authenticate(hello.token, handshake)
        except AuthFailed as exc:
            self.context.auth_failed(self, exc.reason)
            return RemoteProtocolError("authentication failed", code=AUTH_FAILED)
        self.access.take(identity)
        return None

    def _handshake_info(self) -> HandshakeInfo:
        """What the authenticator may know of the connection besides its token."""
        transport = self.transport
        return HandshakeInfo(
            remote=self.address,
            subprotocol=transport.subprotocol,
            certificate_subject=transport.certificate_subject,
        )

    async def _watch_expiry(self) -> None:
        """Close the connection (``auth_expired``, 1008) when its credential expires; a
        ``refresh`` moves the deadline."""
        await self.access.wait_expired()
        self.counters.count_error(AUTH_EXPIRED)
        await self.close(
            CLOSE_POLICY,
            "credential expired",
            error=Error(
                code=AUTH_EXPIRED,
                message="this connection's credential expired: connect again with a new one, "
                "or send 'refresh' before it expires",
            ),
        )
        self._nursery_cancel()

    async def _refresh(self, frame: Refresh) -> None:
        """Take a new credential for the same user; end the subscriptions it no longer
        allows."""
        now = trio.current_time()
        bucket = self._refresh_bucket
        if bucket is None:
            bucket = self._refresh_bucket = TokenBucket(REFRESH_RATE, REFRESH_BURST, now)
        if not bucket.has_token(now):
            self._error(
                frame.ref,
                RATE_LIMITED,
                f"refreshing faster than allowed ({REFRESH_BURST} at once, then one every "
                f"{1 / REFRESH_RATE:g} s): the token was not checked",
            )
            return
        bucket.take()
        auth = self.context.auth
        if auth is None:  # nothing to refresh: every client is anonymous, with full access
            self._enqueue(Refreshed(ref=frame.ref))
            return
        handshake = self._handshake_info()
        try:
            with trio.fail_after(self.limits.handshake_timeout):
                identity = await auth.authenticate(frame.token, handshake)
        except AuthFailed as exc:
            await self._refresh_refused(frame.ref, exc.reason)
            return
        except trio.TooSlowError:
            await self._refresh_refused(frame.ref, "the authenticator did not answer in time")
            return
        access = self.access
        if identity.user != access.user:
            why = f"the credential names user {identity.user!r}, not {access.user!r}"
            await self._refresh_refused(frame.ref, why, note=" (it names another user)")
            return
        access.refused_refreshes = 0
        access.take(identity)
        for sub_id, sub in self.conn.subscriptions():
            decision = access.check_subscribe(sub.pattern, sub.group)
            if decision is not None and not decision.allowed:
                self._end_subscription(sub_id, sub)
                self._enqueue(
                    Unsubscribed(
                        id=sub_id,
                        reason=f"the refreshed permissions of user {access.user!r} no longer "
                        f"allow it: {decision.reason}",
                    )
                )
            else:
                sub.denied = decision if decision is not None and decision.filter else None
        self._enqueue(Refreshed(ref=frame.ref, user=access.user, expires_in=access.expires_in()))

    async def _refuse(self, error: FrameError | RemoteProtocolError) -> None:
        """A fatal protocol violation: explain it in an error frame, then close (1009 for a
        message too large, else the code :func:`close_code_for` gives)."""
        self.counters.count_error(error.code)
        frame = Error(ref=error.ref, code=error.code, message=str(error))
        await self.close(close_code_for(error.code), str(error)[:120], error=frame)

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

    def _cancel(self, frame: Cancel) -> None:
        """The client gave up on one of its requests: tell whoever handles it."""
        now = trio.current_time()
        bucket = self._cancel_bucket
        if bucket is None:
            bucket = self._cancel_bucket = TokenBucket(CANCEL_RATE, CANCEL_BURST, now)
        if not bucket.has_token(now):
            self.counters.count_limit("cancel_rate")
            self._error(
                None,
                RATE_LIMITED,
                f"cancelling faster than allowed ({CANCEL_BURST} at once, then "
                f"{CANCEL_RATE:g} a second): the cancel of request {frame.id!r} was dropped",
            )
            return
        bucket.take()
        try:
            validate_topic(frame.topic)
            validate_topic(frame.reply_to)
        except InvalidTopic as exc:
            self._error(None, INVALID_TOPIC, f"cancel of request {frame.id!r}: {exc}")
            return
        refusal = (
            f"topic {frame.topic!r}: '$' topics are reserved for the broker"
            if is_reserved(frame.topic)
            else self.access.check_cancel(frame.topic, frame.reply_to)
        )
        if refusal is not None:
            self._error(None, FORBIDDEN, f"cancel of request {frame.id!r} refused: {refusal}")
            return
        cancel = cancel_event(frame.topic, frame.id, frame.reply_to, source=self.limits.name)
        self.bus.route_cancel(cancel)

    def heartbeat_due(self, now: float) -> float | None:
        """Ping a client silent for an interval; close it (4002) if the ping gets no answer in
        time (the protocol's :class:`~trio_realtime.protocol.Heartbeat` policy). Called by
        the broker's :class:`~trio_realtime.broker._limits.HeartbeatTimers` at the deadline
        this returned last: the next deadline, or None once the session is closing."""
        policy = self._heartbeat_policy
        while True:
            action, deadline = policy.poll(now)
            if action is HeartbeatAction.WAIT:
                return deadline
            if action is HeartbeatAction.PING:
                if self._processing:
                    # Busy with the client's frames (waiting on the bus): not the client's
                    # silence. The ping still tells the client that the broker is alive.
                    policy.received(now)
                self._enqueue(Ping())
            elif self._processing:
                policy.received(now)
            else:
                self.counters.count_error("heartbeat_timeout")
                assert self._nursery is not None  # (registered while the nursery is open)
                self._nursery.start_soon(self._close_silent)
                return None

    async def _close_silent(self) -> None:
        """The client did not answer the heartbeat's ping: close it (4002)."""
        await self.close(CLOSE_HEARTBEAT, "heartbeat timeout")
        self._nursery_cancel()

    def _nursery_cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def _acks_send(self) -> trio.MemorySendChannel[tuple[int, PendingCommit]]:
        """Where persisted publishes wait for their ack, in order. The channel and the acker
        task are made at the first one: most connections never need them."""
        send = self._acks
        if send is None:
            send, receive = trio.open_memory_channel[tuple[int, PendingCommit]](math.inf)
            self._acks = send
            assert self._nursery is not None  # (publishes are read inside the nursery)
            self._nursery.start_soon(self._acker, receive)
        return send

    @property
    def _replay_slots(self) -> trio.Semaphore:
        """The ``since`` replays this connection may have under way (made at the first)."""
        replays = self._replays
        if replays is None:
            replays = self._replays = trio.Semaphore(self.limits.max_replays)
        return replays

    async def _acker(self, receive: trio.MemoryReceiveChannel[tuple[int, PendingCommit]]) -> None:
        """Answer persisted publishes in order, once stored: a whole commit's acks at once."""
        while True:
            # Everything already queued, and already stored, is acked without a checkpoint (a
            # channel's receive() is one), so that the acks of one group commit leave in one
            # message rather than one or two each. (Each round still ends with a checkpoint:
            # receive() when the queue is empty, or waiting for a commit.)
            try:
                ref, pending = receive.receive_nowait()
            except trio.WouldBlock:
                ref, pending = await receive.receive()
            try:
                event = pending.result if pending.done.is_set() else None
                if event is None:
                    event = await pending.wait()
            except StoreError as exc:
                self._error(ref, STORE_FAILED, f"the event was not stored: {exc}")
            except trio.ClosedResourceError:
                self._error(ref, INTERNAL, "the broker is shutting down; the event was not stored")
            except Refused as exc:  # such as an id another publisher's event has
                self._error(ref, exc.code, f"the event was not stored: {exc}")
            except (ValueError, TypeError) as exc:  # refused by the store
                self._error(ref, BAD_FRAME, f"the event was not stored: {exc}")
            else:
                self._enqueue(Ack(ref=ref, id=event.id, seq=event.seq, duplicate=pending.duplicate))

    # -- reading and acting ---------------------------------------------------------------

    async def _reader(self) -> None:
        conn = self.conn
        policy = self._heartbeat_policy
        max_pending_bytes = self._max_pending_bytes
        while True:
            # While acting on the client's frames (which may wait on the bus), silence from
            # the client is ours: the heartbeat does not count it.
            self._processing = True
            for item in conn.frames():
                if type(item) is Publish:  # the bulk of the traffic: no dispatch
                    await self._publish(item)
                elif type(item) is FrameError:
                    if item.fatal:
                        await self._refuse(item)
                        return
                    self.counters.count_error(item.code)
                    self._enqueue(item.to_frame())
                else:
                    await self._handle(item)
                    # One message may hold thousands of frames: let other connections in
                    # between them. (Publishes yield in the bus, every few.)
                    await trio.lowlevel.checkpoint()
                # A client that sends requests but does not read the answers is not read
                # either until it does (TCP then pushes back on it): checked between frames,
                # since one message may ask for many answers.
                if (
                    self._answer_bytes > max_pending_bytes
                    or self._queued_control > MAX_ANSWER_BACKLOG
                ):
                    await self._wait_answers_read()
            self._processing = False
            policy.received(trio.current_time())
            try:
                text = await self.transport.receive()
            except ConnectionClosed:
                return
            except RemoteProtocolError as exc:  # a binary message, or one too big
                policy.received(trio.current_time())
                if exc.code == TOO_LARGE:  # fatal: answered, then closed with 1009
                    await self._refuse(exc)
                    return
                self.counters.count_error(exc.code)
                self._enqueue(Error(ref=exc.ref, code=exc.code, message=str(exc)))
                continue
            policy.received(trio.current_time())
            self.counters.bytes_in += utf8_size(text)
            conn.receive_text(text)

    def _within_rate(self) -> bool:
        """Take a token from each of the rate buckets, if each has one (else none)."""
        now = trio.current_time()
        buckets = self.rate_buckets
        has_tokens = [bucket.has_token(now) for bucket in buckets]  # (every one refilled)
        if all(has_tokens):
            for bucket in buckets:
                bucket.take()
            self._rate_refusals = 0
            return True
        self._rate_refusals += 1
        return False

    async def _wait_answers_read(self) -> None:
        limit = self._max_pending_bytes
        # Waiting on the client now: its silence counts again, so a client that reads
        # nothing for a heartbeat interval is closed (it cannot answer the ping unread).
        self._processing = False
        while (self._queued_control > MAX_ANSWER_BACKLOG or self._answer_bytes > limit) and not (
            self._closing or self._slow
        ):
            await self._room_lot.park()
        self._processing = True

    def _error(self, ref: int | None, code: str, message: str) -> None:
        self.counters.count_error(code)
        self._enqueue(Error(ref=ref, code=code, message=message))

    async def _handle(self, frame: Any) -> None:
        kind = type(frame)
        if kind is Publish:
            await self._publish(frame)
        elif kind is Subscribe:
            await self._subscribe(frame)
        elif kind is Unsubscribe:
            # (the connection forgets the id once this frame is handled)
            sub = self.conn.subscription(frame.id)
            if sub is not None:
                self._end_subscription(frame.id, sub)
            self._enqueue(Unsubscribed(id=frame.id))
        elif kind is Ping:
            self._enqueue(Pong())
        elif kind is History:
            await self._history(frame)  # one at a time: a client cannot pile up store reads
        elif kind is Refresh:
            await self._refresh(frame)
        elif kind is Cancel:
            self._cancel(frame)
        # Pong: its arrival already counts as a sign of life.

    async def _publish(self, frame: Publish) -> None:
        event = frame.event
        ref = frame.ref
        self.events_in += 1
        self.counters.events_in += 1
        reply_to = event.reply_to
        try:
            validate_topic(event.topic)
            if reply_to is not None:
                validate_topic(reply_to)
        except InvalidTopic as exc:
            self._error(ref, INVALID_TOPIC, str(exc))
            return
        if is_reserved(event.topic):
            self._error(
                ref, FORBIDDEN, f"topic {event.topic!r}: '$' topics are reserved for the broker"
            )
            return
        if reply_to is not None and is_reserved(reply_to):
            self._error(
                ref,
                FORBIDDEN,
                f"reply_to {reply_to!r}: '$' topics are reserved for the broker; replies go "
                "to a topic the requester subscribes to, such as an '_inbox.' topic",
            )
            return
        access = self.access
        replying = False  # an answer that uses up one of the connection's leaves to reply
        if access.permissions is not None:
            refusal, replying = access.check_publish(event.topic, reply_to)
            if refusal is not None:
                self._error(ref, FORBIDDEN, refusal)
                return
        if self.rate_buckets and not self._within_rate():
            if self._rate_refusals >= RATE_REFUSALS_BEFORE_CLOSE:
                await self._refuse(
                    RemoteProtocolError(
                        f"{self._rate_refusals} publishes in a row over the rate limit",
                        code=RATE_LIMITED,
                    )
                )
                self._nursery_cancel()
                return
            self._error(ref, RATE_LIMITED, "publishing faster than allowed: not routed")
            return
        if replying:
            access.replied(event.topic)
        user = access.user
        headers = event.headers
        if user is not None or USER_HEADER in headers:
            # Who published it, as the broker knows it, never as the client claims. (In
            # place: the event was decoded from this frame, nothing else holds it yet.)
            if type(headers) is not dict:
                headers = dict(headers)
                object.__setattr__(event, "headers", headers)
            if user is None:
                del headers[USER_HEADER]
            else:
                headers[USER_HEADER] = user
        try:
            # Encoding now (it is cached for the writers) refuses here, to the publisher, what
            # could be decoded but not encoded again (such as data nested too deeply).
            size = encoded_size(event)
        except (TypeError, LocalProtocolError) as exc:
            self._error(ref, BAD_FRAME, f"the event cannot be relayed: {exc}")
            return
        if size > self.limits.max_event_size:
            self.counters.count_limit("max_event_size")
            self._error(
                ref,
                TOO_LARGE,
                f"the event takes {size} bytes encoded; the most is {self.limits.max_event_size} "
                "(max_event_size: the message size limit less room for the frame)",
            )
            return
        delivered = self._delivered
        if delivered is not None:
            delivered.answered(event.topic)  # (a reply: its request can no longer be cancelled)
        try:
            result = await self.bus.publish_pipelined(
                event, retain=frame.retain, publisher=self._publisher
            )
        except NoResponders as exc:
            self._error(ref, NO_RESPONDERS, str(exc))
            return
        except trio.ClosedResourceError:
            self._error(ref, INTERNAL, "the broker is shutting down")
            return
        if ref is None:
            return
        if isinstance(result, PendingCommit):
            self._acks_send.send_nowait((ref, result))
        else:
            self._enqueue(Ack(ref=ref, id=result.id, seq=result.seq))

    async def _refresh_refused(self, ref: int | None, reason: str, *, note: str = "") -> None:
        """Tell the refusal of a ``refresh`` (not fatal, unless it is the
        :data:`REFRESH_REFUSALS_BEFORE_CLOSE`-th in a row): *reason* to the log and
        ``$sys.auth.failed``, *note* to the client."""
        self.context.auth_failed(self, f"refresh: {reason}")
        access = self.access
        access.refused_refreshes += 1
        if access.refused_refreshes >= REFRESH_REFUSALS_BEFORE_CLOSE:
            await self._refuse(
                RemoteProtocolError(
                    f"{access.refused_refreshes} refresh tokens in a row were refused",
                    code=AUTH_FAILED,
                    ref=ref,
                )
            )
            self._nursery_cancel()
            return
        message = f"the new credential was refused{note}; the connection keeps its current one"
        self._error(ref, AUTH_FAILED, message)

    async def _subscribe(self, frame: Subscribe) -> None:
        try:
            validate_pattern(frame.pattern)
        except InvalidTopic as exc:
            self._error(frame.id, INVALID_TOPIC, str(exc))
            return
        if frame.since is not None and frame.since < 0:
            self._error(
                frame.id, BAD_FRAME, f"'since' must be a seq (0 or more), not {frame.since}"
            )
            return
        since: int | datetime | None = frame.since
        if frame.since_time is not None:
            since = parse_time(frame.since_time)
        if since is not None and self.bus.store is None:
            self._error(frame.id, NO_STORE, "this broker has no store: 'since' cannot be served")
            return
        limit = self.limits.max_subscriptions
        if self.conn.attached_count >= limit:
            self.counters.count_limit("max_subscriptions")
            self._error(
                frame.id,
                LIMIT,
                f"this connection holds {limit} subscriptions, the most it may "
                "(max_subscriptions): unsubscribe one first",
            )
            return
        decision = self.access.check_subscribe(frame.pattern, frame.group)
        if decision is not None and not decision.allowed:
            self._error(
                frame.id,
                FORBIDDEN,
                f"user {self.user!r} may not subscribe to {frame.pattern!r}: {decision.reason}",
            )
            return
        sub = RemoteSubscription(self, frame.id, frame.pattern, frame.group)
        if decision is not None and decision.filter:
            sub.denied = decision
        self.conn.attach(frame.id, sub)
        # Where to resume if the connection drops before a stored event arrives.
        # (Not for a queue group member: it would replay what the other members handled.)
        resume = (
            self.bus.last_seq
            if self.bus.store is not None and since is None and frame.group is None
            else None
        )
        self._enqueue(Subscribed(id=frame.id, seq=resume))
        if since is None:
            sub.live = False  # (the retained values come first)
            self.bus.add_sink(sub)
            sub.live = True
            return
        # Replays run in the session's nursery; a connection has at most max_replays under
        # way (each holding a page of stored events), and waits for one to finish first.
        assert self._nursery is not None
        # A slot frees as the client reads what the replays send: waiting on the client now,
        # so its silence counts again (a client that stops reading is closed, as ever).
        self._processing = False
        try:
            await self._replay_slots.acquire()
        finally:
            self._processing = True
        sub.live = False  # (until the replay is done)
        try:
            sub.replay = await self.bus.add_sink_since(
                sub, since, on_done=partial(self._replay_done, sub), nursery=self._nursery
            )
        except BaseException:
            self._replay_slots.release()
            raise

    def _replay_done(self, sub: RemoteSubscription) -> None:
        """The ``since`` replay of *sub* ended: events now come as they are routed."""
        sub.live = True
        self._replay_slots.release()

    async def _history(self, frame: History) -> None:
        """Answer with the stored events that fit in one message (``more`` if others match)."""
        since: int | datetime | None = frame.since
        if frame.since is not None and frame.since < 0:
            self._error(
                frame.ref, BAD_FRAME, f"'since' must be a seq (0 or more), not {frame.since}"
            )
            return
        limit = max(0, min(frame.limit, MAX_HISTORY))
        budget = self.limits.max_message_size - MESSAGE_MARGIN - FRAME_OVERHEAD
        try:
            decision = self.access.check_subscribe(frame.pattern, None)
        except InvalidTopic as exc:
            self._error(frame.ref, INVALID_TOPIC, str(exc))
            return
        if decision is not None and not decision.allowed:
            self._error(
                frame.ref,
                FORBIDDEN,
                f"user {self.user!r} may not read the history of {frame.pattern!r}: "
                f"{decision.reason}",
            )
            return
        resume: int | None = None
        try:
            validate_pattern(frame.pattern)
            if frame.since_time is not None:
                since = parse_time(frame.since_time)
            if decision is None or not decision.filter:
                events, more = await read_history(self.bus, frame.pattern, since, limit, budget)
            else:
                events, more, resume = await read_history_filtered(
                    self.bus, frame.pattern, since, limit, budget, decision
                )
        except InvalidTopic as exc:
            self._error(frame.ref, INVALID_TOPIC, str(exc))
        except StoreUnavailable:
            self._error(frame.ref, NO_STORE, "this broker has no store: no history to read")
        except ValueError as exc:
            self._error(frame.ref, INTERNAL, str(exc))
        except StoreError as exc:
            self._error(frame.ref, STORE_FAILED, f"reading the store failed: {exc}")
        else:
            self._enqueue(
                HistoryResult(ref=frame.ref, events=tuple(events), more=more, resume=resume)
            )
