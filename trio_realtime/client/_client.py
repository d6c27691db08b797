"""The remote client: the :class:`~trio_realtime.EventChannel` of a broker, over WebSocket.

:func:`open_client` connects and yields a :class:`Client`, which application code uses exactly
like an in-process :class:`~trio_realtime.Bus`. Underneath, the client keeps one connection
at a time (a :class:`~trio_realtime.client._link.Link`) and, when it drops, reconnects with
exponential backoff, re-creates every subscription (resuming stored topics after the last
``seq`` it saw) and sends what waited in its outbox. Given several brokers (the nodes of a
cluster, and those they advertise), it goes round them (see :mod:`trio_realtime._nodes`).
"""

from __future__ import annotations

import logging
import math
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any, Final, TypeVar

import trio

from .._errors import ConnectionClosed, EpochChanged
from .._event import Event, make_event
from .._nodes import MAX_NODES, MAX_URL_LENGTH, Nodes, given_urls
from .._topics import validate_pattern
from .._transport import CLOSE_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE
from .._transport_client import DEFAULT_CONNECT_TIMEOUT, open_transport
from .._util import NoPublicConstructor, open_service_nursery
from ..bus._channel import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_REQUEST_TIMEOUT,
    Handler,
    Overflow,
    OverflowLike,
    Subscription,
    check_int,
    pattern_and_type,
)
from ..bus._requests import (
    DEFAULT_MAX_CONCURRENCY,
    Answering,
    ReplyInbox,
    check_reply,
    serving,
    with_timeout,
)
from ..protocol import AUTH_EXPIRED, Publish, Welcome
from ._link import (
    ClientCounters,
    Link,
    LinkContext,
    handshake,
    refused_as_too_big,
)
from ._oversized import Prober, skip_oversized
from ._state import ClientState as ClientState
from ._state import ClientStatistics as ClientStatistics
from ._state import (
    HistoryPage,
    HistoryQuery,
    Outbox,
    Pending,
    PublishAck,
    RemoteSub,
    RequestPending,
    backoff_delay,
    is_fatal,
    since_fields,
)
from ._tokens import TokenSource, fetch_token, keep_refreshed

__all__ = ["Client", "ClientState", "ClientStatistics", "open_client"]

logger = logging.getLogger("trio_realtime.client")

T = TypeVar("T")

#: Publishes (and other operations) that may wait to be sent, by default, before ``publish``
#: waits too.
DEFAULT_MAX_OUTBOX: Final = 10_000
#: Seconds before the first reconnect attempt, at most, by default (then doubling).
DEFAULT_BACKOFF_INITIAL: Final = 0.1
#: Seconds between reconnect attempts, at most, by default.
DEFAULT_BACKOFF_MAX: Final = 10.0
#: Seconds leaving a subscription's block waits for the broker's ``unsubscribed``.
UNSUBSCRIBE_TIMEOUT: Final = 5.0
#: The default ``source`` of the events a client publishes, when it has no name.
DEFAULT_SOURCE: Final = "trio-realtime"
#: A publisher that never has to wait yields to the scheduler once per this many publishes,
#: so that the writer sends them as one message (not a task switch and a message each).
PUBLISH_BATCH: Final = 64


class Client(metaclass=NoPublicConstructor):
    """A connection to a broker that implements :class:`~trio_realtime.EventChannel`.

    Get one from :func:`open_client`. It is not thread-safe: use it from the Trio thread it
    was opened in.

    Attributes:
        url: The URL of the broker the client is connected to; while it is not, of the one
            it is trying, or tried last (one of :attr:`urls`).
        name: The name the client gave the broker in ``hello``, if any.
        session: The broker's id for the current (or last) connection.
        epoch: The identity of the broker's store, or None (``seq`` numbers are comparable
            only within one epoch).
        broker: The broker's name.
        user: The user the broker authenticated this client as (``welcome.user``), or None
            when the broker does not authenticate.
        expires: When the connection's credential expires, in UNIX time by this machine's
            clock (from ``welcome.expires_in``, then each ``refreshed.expires_in``), or None
            if it does not.
        instance: A random id, the same on every connection of this client, sent in
            ``hello``: the broker recognises by it a publish sent again after a reconnect
            (its ack then says ``duplicate``, with the seq the event was stored under).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        urls: Sequence[str],
        *,
        discover: bool,
        token: TokenSource,
        name: str | None,
        reconnect: bool,
        connect_timeout: float,
        max_outbox: int,
        backoff_initial: float,
        backoff_max: float,
        max_message_size: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._nursery = nursery
        self._nodes = Nodes(urls)
        self._discover = discover
        self.url: str = self._nodes.given[0]
        self.name: Final = name
        self.instance: Final = secrets.token_hex(16)
        self._token = token
        #: The token sent on the last connect.
        self._last_token: str | None = token if isinstance(token, str) else None
        self._source = name or DEFAULT_SOURCE
        self._reconnect = reconnect
        self._connect_timeout = connect_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_message_size = max_message_size
        self._ssl_context = ssl_context
        self.session: str | None = None
        self.epoch: str | None = None
        self.user: str | None = None
        self.expires: float | None = None
        self.broker: str | None = None
        self._state = ClientState.CONNECTING
        self._state_changed = trio.Event()
        self._closed_reason: ConnectionClosed | None = None
        self._run_scope = trio.CancelScope()  # the connection loop's, for aclose()
        self._run_done = trio.Event()
        self._link: Link | None = None
        self._outbox = Outbox(max_outbox)
        #: Every live subscription (and the inbox), in the order they were made.
        self._subs: dict[RemoteSub, None] = {}
        self._inbox: RemoteSub | None = None
        self._replies: ReplyInbox[RequestPending] = ReplyInbox()
        self._answering = Answering()  # what the serve blocks handle, for cancels
        self._unyielded = 0
        self._reconnects = 0
        self._published = 0
        self._oversized = 0
        #: What links count (events received, errors, catch-ups).
        self._counters = ClientCounters()

    def __repr__(self) -> str:
        return f"<Client {self.url} {self._state.value} session={self.session}>"

    @property
    def urls(self) -> tuple[str, ...]:
        """The brokers the client connects to, in the order it tries them: the URLs given to
        :func:`open_client`, then those the brokers advertised (``welcome.nodes``)."""
        return self._nodes.urls

    @property
    def state(self) -> ClientState:
        """The client's :class:`ClientState`."""
        return self._state

    def statistics(self) -> ClientStatistics:
        """A snapshot of the client's counters."""
        link = self._link
        return ClientStatistics(
            state=self._state,
            url=self.url,
            reconnects=self._reconnects,
            catch_ups=self._counters.catch_ups,
            published=self._published,
            received=self._counters.received,
            outbox=len(self._outbox),
            in_flight=link.in_flight if link is not None else 0,
            subscriptions=sum(1 for rs in self._subs if rs.sub is not None),
            errors=self._counters.errors,
            oversized=self._oversized,
            requests_cancelled=self._answering.cancelled,
            requests_expired=self._answering.expired,
            late_replies=self._replies.late,
        )

    async def wait_connected(self) -> None:
        """Wait until the client is connected (return at once if it is).

        Raises:
            trio.ClosedResourceError: if the client is closed (its block exited).
            ConnectionClosed: if the connection was lost for good (reconnecting is off, or
                gave up).
        """
        await trio.lowlevel.checkpoint()
        while self._state is not ClientState.CONNECTED:
            self._check_open()
            await self._state_changed.wait()

    async def wait_state_change(self, state: ClientState) -> ClientState:
        """Wait until the client's :attr:`state` is not *state*, and return the new state.

        Returns at once if it already differs. Pass the state you last saw to watch every
        change (``CONNECTED`` → ``DISCONNECTED`` → ``CONNECTING`` → … → ``CLOSED``)::

            state = client.state
            while state is not ClientState.CLOSED:
                state = await client.wait_state_change(state)

        Changes in quick succession may be seen as one: this reports where the client is,
        not each step it took. It never raises for a closed client: it returns ``CLOSED``.
        """
        await trio.lowlevel.checkpoint()
        while self._state is state:
            await self._state_changed.wait()
        return self._state

    # -- publishing -----------------------------------------------------------------------

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
        """Publish *data* on *topic* through the broker, and return the event.

        ``publish(obj)`` publishes an instance of a class registered with
        :func:`~trio_realtime.event_type` on its registered topic. The event is checked here
        first (topic, data, headers), exactly as the bus checks it.

        Without *ack*, this returns the event built here (``seq`` None) once it is in the
        client's outbox: it is sent in order with the client's other frames, batched with
        them, and after a reconnect if the connection is down. It does not cost a task switch
        per call. A fire-and-forget publish the broker refuses is logged and counted in
        :meth:`statistics` (``errors``). With *ack*, this waits until the broker routed (and,
        for a stored topic, stored) the event, and returns it with the broker's ``seq``; it
        is sent again after a reconnect if its answer was lost.

        Args:
            topic: Where to publish (no wildcards), or a typed payload instance.
            data: A JSON-compatible value, or a typed payload instance.
            headers: String metadata.
            source: Who publishes (default: the client's *name*, else ``"trio-realtime"``).
            type: The event type (default: the topic, or the payload's registered name).
            retain: Keep this event as the topic's retained value on the broker.
            ack: Wait for the broker's acknowledgement (see above).

        Raises:
            InvalidTopic: if *topic* is not a valid topic (or, with *ack*, the broker says so).
            TypeError: if *data* is not JSON-compatible (the message names the value).
            PermissionDenied: with *ack*, if the broker refused (such as a ``$…`` topic).
            TooLarge: with *ack*, if the event is larger than the broker's
                ``max_event_size`` (or than this client's ``max_message_size``).
            DuplicateEventId: with *ack*, if the id is another publisher's stored event's.
            StoreError: with *ack*, if the broker's store failed to store it.
            Refused: with *ack*, if the broker refused for another reason (its ``code``
                says which).
            trio.ClosedResourceError: if the client is closed (its block exited).
            ConnectionClosed: if the connection was lost for good (reconnecting is off, or
                gave up).
        """
        event = make_event(topic, data, headers=headers, source=source or self._source, type=type)
        if ack:
            return await self._submit(PublishAck(event, retain))
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._state is ClientState.CLOSED:
            raise self._closed_error()
        # The outbox, inlined: this is the hot path.
        outbox = self._outbox
        if len(outbox.items) >= outbox.max_size:
            self._unyielded = 0
            await self._wait_room()
        elif self._unyielded >= PUBLISH_BATCH:
            # Let the writer (and everyone else) run once per batch, not once per publish.
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            self._unyielded += 1
        outbox.append(Publish(event=event, retain=retain))
        self._published += 1
        return event

    async def _wait_room(self) -> None:
        """Wait until the outbox has room; raise if the client closes meanwhile."""
        outbox = self._outbox
        while outbox.full():
            await outbox.wait_room()
            self._check_open()

    async def _submit(self, pending: Pending[T]) -> T:
        """Queue *pending* (waiting for room) and wait for its answer."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        await self._wait_room()
        self._outbox.append(pending)
        if isinstance(pending, (PublishAck, RequestPending)):
            self._published += 1
        return await pending.wait()

    # -- subscribing ----------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self,
        pattern: str | type,
        *,
        group: str | None = None,
        max_buffer_size: float = DEFAULT_BUFFER_SIZE,
        overflow: OverflowLike = Overflow.BLOCK,
        since: int | datetime | None = None,
    ) -> AsyncIterator[Subscription]:
        """Subscribe to *pattern* on the broker for the duration of an ``async with`` block.

        Enters once the broker confirmed the subscription, and yields a
        :class:`~trio_realtime.Subscription`. It survives reconnects: the client subscribes
        again, and if it had received stored events, resumes after the last ``seq`` it saw,
        without loss or duplicates (for stored topics). Leaving the block unsubscribes on the
        broker and waits (a bounded time) for it to confirm, so that the broker no longer
        routes to it once the block has exited (a block left because it is cancelled does
        not wait).

        The buffer and *overflow* policy apply to the local subscription as on the bus, but
        a client cannot make the broker's publishers wait, and a slow subscription never
        stalls the connection: its other subscriptions, replies and acknowledgements keep
        flowing. A full ``block`` subscription takes events past its buffer, up to as many
        again (at most twice *max_buffer_size* buffered; there, a consumer that keeps up gets
        a turn to drain first). Beyond that it falls *behind*: its events are not
        delivered now. Stored events (those with a ``seq``) are not lost: once the consumer
        has made room, the subscription catches up from the broker's store, in order and
        without duplicates (``statistics().catch_ups``). Events that are not stored, and
        those of a subscription that cannot resume (a queue group member), are dropped and
        counted in :attr:`~trio_realtime.Subscription.missed`. See :doc:`backpressure`.

        Args:
            pattern: A topic pattern (``*`` one token, ``>`` one or more at the end), or a
                class registered with :func:`~trio_realtime.event_type`.
            group: A queue group: each matching event goes to one member of each group.
            max_buffer_size: Events buffered here before *overflow* applies.
            overflow: ``"block"`` (default), ``"drop_oldest"``, ``"drop_newest"`` or
                ``"disconnect"`` (or an :class:`~trio_realtime.Overflow`).
            since: Replay stored events after this ``seq`` (or from this time) first, then
                continue live. Needs a broker with a store.

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern (checked here first).
            PermissionDenied: if the broker refused the subscription.
            StoreUnavailable: for *since*, if the broker has no store (as a bus without one).
            LimitExceeded: if the broker's ``max_subscriptions`` is reached.
            TypeError: if *since* is neither a seq, a datetime nor None.
            ValueError: if *since* is a negative seq.
            Refused: if the broker refused it for another reason (its ``code`` says which).
            trio.ClosedResourceError: if the client is closed (its block exited).
            ConnectionClosed: if the connection was lost for good (reconnecting is off, or
                gave up).
        """
        pattern, payload_type = pattern_and_type(pattern)
        since_seq, since_time = since_fields(since)
        rs = RemoteSub(pattern, group=group, since=since_seq, since_time=since_time)
        sub = Subscription(
            pattern,
            group=group,
            max_buffer_size=max_buffer_size,
            overflow=overflow,
            payload_type=payload_type,
            on_disconnect=lambda _sub: self._forget(rs),
        )
        rs.sub = sub
        try:
            await self._start(rs)
        except BaseException:
            sub._close()
            raise
        try:
            yield sub
        finally:
            # Close first: nothing more is delivered to it, and a catch-up waiting for its
            # consumer to make room stops.
            sub._close()
            await self._stop(rs)

    async def _start(self, rs: RemoteSub) -> None:
        """Subscribe *rs* on the broker and wait for the answer."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        self._add(rs)
        try:
            await rs.settled.wait()
        except BaseException:
            self._forget(rs)
            raise
        if rs.error is not None:
            raise rs.error

    def _add(self, rs: RemoteSub) -> None:
        self._subs[rs] = None
        link = self._link
        if link is not None:
            self._outbox.append(link.subscribe(rs))

    def _forget(self, rs: RemoteSub) -> None:
        """Drop *rs*, unsubscribing on the broker without waiting."""
        if rs not in self._subs:
            return
        del self._subs[rs]
        link = self._link
        if link is not None:
            link.unsubscribe(rs)
        rs.id = None

    async def _stop(self, rs: RemoteSub) -> None:
        """Drop *rs* and wait (shielded, bounded) until the broker confirms."""
        if rs not in self._subs:
            return
        del self._subs[rs]
        link = self._link
        done = link.unsubscribe(rs) if link is not None else None
        rs.id = None
        if done is not None and not _being_cancelled():
            # (A block left because it is cancelled does not wait: when the cancellation
            # takes the client with it, nothing would send the unsubscribe anyway.)
            with trio.move_on_after(UNSUBSCRIBE_TIMEOUT, shield=True):
                await done.wait()

    def _refused(self, rs: RemoteSub, error: Exception) -> None:
        """The broker refused to (re-)create *rs*."""
        self._subs.pop(rs, None)
        if rs is self._inbox:
            self._inbox = None
        if not rs.settled.is_set():
            rs.settle(error)
        elif rs.sub is not None:
            logger.warning("the broker refused or ended the subscription %r: %s", rs.pattern, error)
            rs.sub.fail(error)

    # -- request/reply --------------------------------------------------------------------

    @asynccontextmanager
    async def serve(
        self,
        pattern: str,
        handler: Handler,
        *,
        group: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> AsyncIterator[None]:
        """Answer requests on *pattern* with *handler* for the duration of a block.

        ``handler(event)`` (a function or a coroutine function) is called for each request;
        its return value becomes the reply's data, published to the request's ``reply_to``.
        If it raises, the requester's :meth:`request` raises
        :exc:`~trio_realtime.RequestFailed` with its message, and serving goes on. Events
        without ``reply_to`` are handled too; their result is discarded. The subscription
        survives reconnects like any other; the handlers run in the client's nursery and are
        cancelled when the block exits (or end quietly if the client closes for good).

        Each handler runs in a cancel scope of its own, cancelled when the requester gives up
        (its request is cancelled, or times out: the broker sends ``cancel``) and at the
        request's deadline: the handler sees :exc:`trio.Cancelled`, and its reply, if it
        returns one all the same, is not sent. A request whose deadline passed before a slot
        was free is not started. (See :ref:`tutorial-cancellation`.)

        Args:
            pattern: The topics to answer (wildcards allowed).
            handler: Called with each request event; returns the reply's data.
            group: A queue group, so that several responders share the requests.
            max_concurrency: Requests handled at the same time, at most.

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
            PermissionDenied: if the broker refused the subscription.
            trio.ClosedResourceError: if the client is closed (its block exited).
            ConnectionClosed: if the connection was lost for good (reconnecting is off, or
                gave up).
        """
        async with (
            self.subscribe(pattern, group=group) as sub,
            serving(self._nursery, self, sub, handler, max_concurrency, self._answering),
        ):
            yield

    async def request(
        self,
        topic: str,
        data: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> Event:
        """Publish a request on *topic* and return the first reply.

        Replies come to one inbox subscription per client (``_inbox.<unique>.>``), made on
        the first request and kept across reconnects. A request whose answer from the broker
        was lost with the connection is sent again (with the same event id) after a reconnect.

        The request carries the time left of its *timeout* (the header ``rttimeout``, in
        milliseconds). If the request is cancelled, or times out, before its reply came, the
        client sends ``cancel`` for it, and the broker passes it on to the responder, whose
        handler is cancelled; a reply that comes later is dropped (counted in
        :meth:`statistics`: ``late_replies``).

        Args:
            topic: Where to send the request (no wildcards).
            data: A JSON-compatible value, or a typed payload instance.
            headers: String metadata.
            timeout: Seconds to wait for the reply (making the inbox and waiting for room in
                the outbox included).

        Raises:
            NoResponders: at once, if nothing subscribes to *topic* on the broker.
            RequestFailed: if the responder's handler raised (with its message).
            trio.TooSlowError: if no reply came within *timeout* seconds.
            InvalidTopic: if *topic* is not a valid topic.
            trio.ClosedResourceError: if the client is closed (its block exited).
            ConnectionClosed: if the connection was lost for good (reconnecting is off, or
                gave up).
        """
        reply_to = self._replies.reply_to()
        event = make_event(
            topic,
            data,
            headers=with_timeout(headers, timeout),
            source=self._source,
            type=None,
            reply_to=reply_to,
        )
        pending = RequestPending(event, self._replies, trio.current_time() + timeout)
        with self._replies.expect(reply_to, pending):
            try:
                with trio.fail_after(timeout):
                    await self._ensure_inbox()
                    reply: Event = await self._submit(pending)
            finally:
                pending.abandoned = True
                if not pending.done.is_set():
                    self._cancel_request(pending)
        return check_reply(topic, reply)

    def _cancel_request(self, pending: RequestPending) -> None:
        """*pending* was given up on before its reply came: send its ``cancel``, if it was
        sent on this connection (one sent on a connection since lost cannot be cancelled:
        its ``reply_to`` is not in this connection's inbox; its deadline still ends it)."""
        reply_to = pending.event.reply_to
        if (
            pending.sent
            and self._state is ClientState.CONNECTED
            and reply_to is not None
            and self._replies.current(reply_to) == reply_to
        ):
            self._outbox.append(pending.cancel())

    async def _ensure_inbox(self) -> None:
        rs = self._inbox
        if rs is None:
            self._check_open()
            rs = self._inbox = RemoteSub(self._replies.pattern)
            self._add(rs)
        await rs.settled.wait()
        if rs.error is not None:
            raise rs.error

    # -- history --------------------------------------------------------------------------

    async def history(
        self, pattern: str, *, since: int | datetime | None = None, limit: int = 100
    ) -> list[Event]:
        """Stored events matching *pattern* after *since* (a ``seq`` or a time), oldest first.

        A broker may answer in parts, each small enough for one message (``history_result``
        with ``more``): this asks again after the last event received until it has *limit*
        events or the broker has no more.

        Args:
            pattern: Which topics to read (wildcards allowed).
            since: Only events with a greater ``seq``, or published at or after this time.
            limit: At most this many events (the broker may cap it).

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
            PermissionDenied: if the broker refused.
            StoreUnavailable: if the broker has no store (as a bus without one).
            StoreError: if the broker's store failed to read (as a bus's would).
            TypeError: if *since* is neither a seq, a datetime nor None.
            ValueError: if *since* is a negative seq, or *limit* not an int of 0 or more.
            Refused: if the broker refused for another reason (its ``code`` says why).
            trio.ClosedResourceError: if the client is closed (its block exited).
            ConnectionClosed: if the connection was lost for good (reconnecting is off, or
                gave up).
        """
        validate_pattern(pattern)
        check_int(limit, "limit", minimum=0)
        since_seq, since_time = since_fields(since)
        events: list[Event] = []
        while True:
            query = HistoryQuery(
                pattern, since=since_seq, since_time=since_time, limit=limit - len(events)
            )
            try:
                page: HistoryPage = await self._submit(query)
            finally:
                query.abandoned = True
            events += page.events
            if not (page.more and (page.events or page.resume is not None)):
                return events
            if len(events) >= limit:
                return events
            since_seq = page.resume if page.resume is not None else page.events[-1].seq
            since_time = None
            if since_seq is None:  # pragma: no cover - stored events have a seq
                return events

    # -- the connection's life ------------------------------------------------------------

    def _set_state(self, state: ClientState) -> None:
        if state is not self._state:
            self._state = state
            changed, self._state_changed = self._state_changed, trio.Event()
            changed.set()

    def _check_open(self) -> None:
        if self._state is ClientState.CLOSED:
            raise self._closed_error()

    def _closed_error(self) -> ConnectionClosed | trio.ClosedResourceError:
        """A fresh exception saying why the client is closed.

        As a bus does, a client closed by its owner (its block exited) raises
        :exc:`trio.ClosedResourceError`; :exc:`ConnectionClosed` means the connection was
        lost for good, which the owner did not ask for.
        """
        reason = self._closed_reason
        if reason is None:
            return trio.ClosedResourceError(f"the client of {self.url} is closed")
        return type(reason)(str(reason), code=reason.code, reason=reason.reason)

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt *attempt* (0, 1, …)."""
        return backoff_delay(attempt, self._backoff_initial, self._backoff_max)

    async def aclose(self) -> None:
        """Close the client now, as leaving its ``open_client`` block does; a no-op once closed.

        Sends what waits in the outbox (for a bounded time), closes the connection, and
        returns once it is closed. Live subscriptions end cleanly (their buffered events are
        still received); waiting operations, and every later call, raise
        :exc:`trio.ClosedResourceError`.
        """
        await self._shutdown()
        self._run_scope.cancel()
        await self._run_done.wait()

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The connection loop, in a scope that :meth:`aclose` cancels."""
        try:
            with self._run_scope:
                await self._keep_connected(task_status=task_status)
        finally:
            self._run_done.set()

    async def _keep_connected(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Connect, then keep connected (reconnecting as allowed) until cancelled or closed.

        The first connection is made before ``task_status.started()``: each given URL is
        tried once, in order, and if none accepts, this raises (no retry). Afterwards the
        client goes round its URLs (:attr:`urls`), starting after the node it lost: an
        attempt that fails moves on to the next node at once, and only a whole round of
        failures backs off (as a loss does, so that a node's clients do not all come back at
        once). A node that refuses the handshake for good (:func:`is_fatal`) is passed over;
        when every node of a round does, the client gives up.
        """
        first = True
        failures: list[ConnectionClosed] = []  # the first connect's, one per URL
        attempt = 0  # rounds (and losses) since the last connection: the backoff's exponent
        tried = refused = 0  # nodes tried in this round, and of them, refusals for good
        stuck = 0  # connections in a row that ended on a message too large, nothing changed
        while True:
            self._set_state(ClientState.CONNECTING)
            link: Link | None = None
            changed = False  # since the last connection ended on a message too large
            try:
                token = await self._fetch_token(first)
                async with open_transport(
                    self.url,
                    max_message_size=self._max_message_size,
                    connect_timeout=self._connect_timeout,
                    ssl_context=self._ssl_context,
                ) as transport:
                    conn, welcome = await handshake(
                        transport,
                        url=self.url,
                        token=token,
                        name=self.name,
                        timeout=self._connect_timeout,
                        instance=self.instance,
                    )
                    if not first:
                        self._reconnects += 1
                    link = self._connected(
                        Link(self._link_context(), transport, conn, welcome), first
                    )
                    if first:
                        first = False
                        task_status.started()
                    attempt = tried = refused = 0
                    received = self._counters.received
                    reason = await self._run_link(link)
                    changed = self._counters.received > received
                    if link.close_code is not None:
                        await transport.aclose(link.close_code, str(reason), timeout=0.5)
            except ConnectionClosed as exc:
                if first:
                    failures.append(exc)
                    if len(failures) < len(self._nodes.given):
                        self.url = self._nodes.after(self.url)
                        continue
                    if len(failures) == 1:
                        raise
                    raise _none_accepted(failures) from exc
                reason = exc
            oversized = refused_as_too_big(reason, self._max_message_size) or (
                link is not None and link.oversized
            )
            if link is not None:
                changed = self._disconnected(link, oversized=oversized) or changed
            if self._state is ClientState.CLOSED:
                return
            fatal = is_fatal(reason) and not self._renewable(link)
            if link is None:
                tried += 1
                refused += fatal
            round_over = link is None and tried >= len(self._nodes.urls)
            if (
                not self._reconnect
                or (fatal and link is not None)  # (a policy close: not to be evaded elsewhere)
                or (round_over and refused == tried)
            ):
                logger.warning("%s", reason)
                self._close(reason)
                return
            url = self._nodes.after(self.url)
            if link is not None or round_over or oversized:
                self._set_state(ClientState.DISCONNECTED)
            if oversized:
                # Back off longer each time a connection ended so with nothing changed (no
                # event received, read or skipped): the same message may well come again.
                changed = await self._skip_oversized() or changed
                stuck = 0 if changed else stuck + 1
            else:
                stuck = 0
            if link is not None or round_over:
                tried = refused = 0
                delay = self._backoff(max(attempt, stuck))
                attempt += 1
                logger.info("%s; reconnecting to %s in %.2f s", reason, url, delay)
                await trio.sleep(delay)
            else:
                logger.info("%s; trying %s", reason, url)
            self.url = url

    async def _fetch_token(self, first: bool) -> str | None:
        """The token for the next connect. A token callable that fails is the first connect's
        failure (it propagates), or a failed reconnect attempt (backed off); one that takes
        longer than the connect timeout fails with ConnectionClosed."""
        timeout = self._connect_timeout
        try:
            with trio.fail_after(timeout):
                token = await fetch_token(self._token)
        except trio.TooSlowError:
            raise ConnectionClosed(
                f"the token callable gave no token within {timeout:g} s (connect_timeout) "
                f"to connect to {self.url}"
            ) from None
        except Exception as exc:
            if first:
                raise
            raise ConnectionClosed(
                f"could not get a token to connect to {self.url}: {exc}"
            ) from exc
        self._last_token = token
        return token

    def _renewable(self, link: Link | None) -> bool:
        """Whether *link* ended because its credential expired, and a token callable may give
        a fresh one to reconnect with."""
        return (
            callable(self._token)
            and link is not None
            and link.last_error is not None
            and link.last_error.code == AUTH_EXPIRED
        )

    async def _run_link(self, link: Link) -> ConnectionClosed:
        """Run *link*; with a token callable and a credential that expires, refresh it in
        time."""
        source = self._token
        welcome = link.conn.welcome
        expires_in = None if welcome is None else welcome.expires_in
        if not callable(source) or expires_in is None:
            return await link.run()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    keep_refreshed,
                    self._outbox,
                    source,
                    expires_in,
                    url=self.url,
                    timeout=self._connect_timeout,
                    refreshed=self._refreshed,
                )
            )
            reason = await link.run()
            nursery.cancel_scope.cancel()
        return reason

    def _refreshed(self, token: str, expires_in: float | None) -> None:
        self._last_token = token  # (for the side connections of an oversized catch-up)
        self.expires = None if expires_in is None else time.time() + expires_in

    def _link_context(self) -> LinkContext:
        """What a link of this client gets: the narrow view of the client it works with."""
        return LinkContext(
            url=self.url,
            max_message_size=self._max_message_size,
            outbox=self._outbox,
            replies=self._replies,
            answering=self._answering,
            counters=self._counters,
            refused=self._refused,
        )

    def _connected(self, link: Link, first: bool) -> Link:
        """Make *link* the current connection: re-create every subscription on it."""
        welcome = link.conn.welcome
        assert welcome is not None
        if not first and welcome.epoch != self.epoch:
            # Another store: our seqs mean nothing there. Every subscription that was resuming
            # from the store replays the new one from its start; one that had received stored
            # events or asked for a since is told (once, after what it has received).
            for rs in self._subs:
                if rs.last_seq is None and rs.since is None and rs.resume_seq is None:
                    continue
                by_seq = rs.last_seq is not None or rs.since is not None
                rs.last_seq = None
                rs.resume_seq = None
                rs.since = 0 if welcome.epoch is not None else None
                rs.since_time = None
                if by_seq and rs.sub is not None:
                    rs.sub._notify(EpochChanged(rs.pattern, self.epoch, welcome.epoch))
        self.session = welcome.session
        self.epoch = welcome.epoch
        self.user = welcome.user
        self.expires = None if welcome.expires_in is None else time.time() + welcome.expires_in
        self.broker = welcome.broker
        if self._discover:
            self._learn_nodes(welcome)
        if welcome.inbox is not None:
            # This connection's own inbox: replies come there (the broker may refuse a
            # reply_to elsewhere). Requests sent again take it as their reply_to.
            self._replies.rebase(welcome.inbox)
            if self._inbox is not None:
                self._inbox.pattern = self._replies.pattern
        self._link = link
        self._outbox.push_front([link.subscribe(rs) for rs in self._subs])
        self._set_state(ClientState.CONNECTED)
        return link

    def _learn_nodes(self, welcome: Welcome) -> None:
        """Add the nodes the broker advertised to the rotation (what it advertised before
        goes); what is not fit to dial is logged and counted as bad input."""
        learned = self._nodes.learn(welcome.nodes)
        if learned.invalid or learned.excess:
            self._counters.errors += 1
            logger.warning(
                "the broker at %s advertised node URLs this client does not take "
                "(welcome.nodes): %d not %s URLs of at most %d printable characters, and %d "
                "beyond the first %d",
                self.url,
                learned.invalid,
                "wss://" if self._nodes.tls else "ws://",
                MAX_URL_LENGTH,
                learned.excess,
                MAX_NODES,
            )

    def _disconnected(self, link: Link, *, oversized: bool = False) -> bool:
        """*link* ended: requeue what it had in flight; its ids mean nothing any more.

        *oversized*: it ended on a message too large, which may have been the answer to a
        history read in flight: those are sent again asking for fewer events (or fail, asking
        for one). Returns whether there were any.
        """
        changed = False
        self._link = None
        for rs in self._subs:
            rs.id = None
        for done in link.unsubscribing.values():
            done.set()
        link.unsubscribing.clear()
        requeue: list[Pending[Any]] = []
        for pending in link.conn.forget_pending():
            pending.ref = None
            if oversized and isinstance(pending, HistoryQuery) and not pending.abandoned:
                pending.shrink(self._max_message_size)
                changed = True
            if not pending.done.is_set() and not pending.abandoned:
                requeue.append(pending)
        self._outbox.drop_control()
        self._outbox.push_front(requeue)
        self._outbox.notify_drained()
        return changed

    async def _skip_oversized(self) -> bool:
        """The connection ended on a message too large to receive: count it, and catch up
        the subscriptions that resubscribing would replay it to (see
        ``_oversized.skip_oversized``). Whether that read or skipped anything."""
        self._oversized += 1
        prober = Prober(
            self.url,
            token=self._last_token,
            name=self.name,
            max_message_size=self._max_message_size,
            timeout=self._connect_timeout,
            ssl_context=self._ssl_context,
        )
        try:
            delivered, skipped = await skip_oversized(list(self._subs), prober)
        finally:
            await prober.aclose()
        self._counters.received += delivered
        return bool(delivered or skipped)

    def _close(self, reason: ConnectionClosed | None) -> None:
        """Close for good: end subscriptions (failing them with *reason*, if any) and fail
        every operation still waiting."""
        if self._state is ClientState.CLOSED:
            return
        self._closed_reason = reason
        self._set_state(ClientState.CLOSED)
        subs = list(self._subs)
        self._subs.clear()
        self._inbox = None
        for rs in subs:
            rs.settle(self._closed_error())
            if rs.sub is not None:
                if reason is None:
                    rs.sub.end()
                else:
                    rs.sub.fail(self._closed_error())
        link = self._link
        waiting: list[Any] = self._outbox.close()
        if link is not None:
            waiting += link.conn.forget_pending()
            for done in link.unsubscribing.values():
                done.set()
        waiting += self._replies.waiters()
        for item in waiting:
            if isinstance(item, Pending):
                item.fail(self._closed_error())
        dropped = sum(1 for item in waiting if type(item) is Publish)
        if dropped:
            logger.warning("%d published events were not sent: the client closed", dropped)

    async def _shutdown(self) -> None:
        """Leave gracefully: send what waits (bounded), then close. Cancelled, it closes at
        once: its writer, in the client's nursery, is cancelled too."""
        if _being_cancelled():
            self._close(None)
            return
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            while True:
                link = self._link
                if link is None or not (self._outbox.items or link.writing):
                    break
                await self._outbox.wait_drained()
        self._close(None)


def _none_accepted(failures: list[ConnectionClosed]) -> ConnectionClosed:
    """The first connect's failure when none of several brokers accepted: the last one's
    kind, close code and reason, with every broker's failure in its message."""
    last = failures[-1]
    message = f"none of the {len(failures)} brokers accepted a connection: " + "; ".join(
        str(exc) for exc in failures
    )
    return type(last)(message, code=last.code, reason=last.reason)


def _being_cancelled() -> bool:
    """Whether the current task is being cancelled (its effective deadline has passed)."""
    return trio.current_effective_deadline() == -math.inf


@asynccontextmanager
async def open_client(
    url: str | Sequence[str],
    *,
    token: TokenSource = None,
    name: str | None = None,
    reconnect: bool = True,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_outbox: int = DEFAULT_MAX_OUTBOX,
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
    backoff_max: float = DEFAULT_BACKOFF_MAX,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ssl_context: ssl.SSLContext | None = None,
    discover: bool = True,
) -> AsyncIterator[Client]:
    """Connect to the broker at *url* (or to one of several) for the duration of an
    ``async with`` block.

    Yields a :class:`Client`, which implements :class:`~trio_realtime.EventChannel`: code
    written against a :class:`~trio_realtime.Bus` runs unchanged::

        async with open_client("ws://127.0.0.1:8765", name="billing") as client:
            async with client.subscribe("orders.>") as sub:
                async for event in sub:
                    ...

    Entering waits for the first connection and handshake; if they fail, this raises at
    once (the first connect is not retried). Afterwards a lost connection is re-established
    with exponential backoff and full jitter (a random wait of up to *backoff_initial*,
    doubling per failed attempt up to *backoff_max*), unless *reconnect* is false, the broker
    closed with 1008 (policy; but see *token* for an expired credential) or refused the
    handshake. Once the client gives up, it is
    closed: waiting and later operations raise :exc:`~trio_realtime.ConnectionClosed`, and
    subscriptions' receives raise it too.

    Given several URLs (the nodes of a cluster), the client fails over between them. The
    first connect tries them in order, each within *connect_timeout*, and raises only if
    none accepts. Afterwards, a lost connection is re-established on the next node, round
    the list: an attempt that fails moves on to the next node at once, and the backoff
    applies between whole rounds (and before the first attempt after a loss). On the new
    node the client re-creates its subscriptions as after any reconnect: a persisted
    subscription resumes after the last ``seq`` it received, without loss or duplicates
    when the nodes share one store (the same ``welcome.epoch``); another store is an epoch
    change (:exc:`~trio_realtime.EpochChanged`). A node that refuses the handshake for good
    is passed over, and the client gives up once every node of a round has; a connection
    closed with 1008 gives up at once. A broker may advertise the cluster's other nodes
    (``welcome.nodes``; ``Broker(advertise_urls=…)``): with *discover*, the client adds them
    after the given URLs (the given ones stay first), each time in place of those
    advertised before. It takes at most the first 32, and only WebSocket URLs of the given
    URLs' scheme (so a ``wss://`` client never moves to ``ws://``); it logs and counts the
    others (``statistics().errors``). :attr:`Client.url` is the broker it is connected to,
    :attr:`Client.urls` every one it may connect to.

    Leaving the block (or :meth:`Client.aclose`) sends what waits in the outbox (a bounded
    time; not when the block is left because it is cancelled, which takes the client's
    writer with it: then it closes at once), ends every subscription's iteration cleanly,
    fails operations still waiting with :exc:`trio.ClosedResourceError`, and closes the
    WebSocket with code 1000. No task
    outlives the block. An exception raised in the block propagates as itself.

    Args:
        url: The broker's ``ws://`` or ``wss://`` URL, or a sequence of them (all ``ws://``
            or all ``wss://``), tried in that order.
        token: The credential sent in ``hello``, if the broker wants one: a str, or a
            function (or async function) that returns one. A function is called (and given
            ``connect_timeout`` seconds to answer) at every connect, and, when the broker
            says the credential expires (``welcome.expires_in``), again shortly before it
            does (a fifth of its lifetime, and at most 30 s, ahead):
            the client sends the new token in a ``refresh`` frame, so a long-lived client
            never drops for an expired credential. A refresh that fails is logged and tried
            again; should the credential expire all the same (the broker closes with
            ``auth_expired``), the client reconnects with a fresh token. A fixed str cannot
            be renewed: the client then closes for good.
        name: The client's name for the broker's logs, and the default ``source`` of the
            events it publishes.
        reconnect: Re-establish a lost connection (else the client closes).
        connect_timeout: Seconds to connect, then seconds for the ``hello``/``welcome``
            handshake.
        max_outbox: Publishes that may wait to be sent (while disconnected, or faster than
            the network) before ``publish`` waits.
        backoff_initial: Seconds of the first reconnect delay, at most.
        backoff_max: Seconds of the reconnect delay, at most.
        max_message_size: The largest message received or sent, in bytes of UTF-8 text. The
            default is the broker's default (1 MiB): keep the two the same. A frame larger
            than this is not sent (an acknowledged publish raises
            :exc:`~trio_realtime.TooLarge`); a broker closes the
            connection on a message larger than its own limit, and never sends one. A larger
            message received closes the connection (1009) and is lost, with the events in
            it: the client logs a warning, counts it (``statistics().oversized``) and
            reconnects. First, so that it is not sent the same stored events again, it reads
            what its resuming subscriptions would be replayed from the store itself (history
            reads on a side connection, in pages it can receive), skips each stored event too
            large on its own (counted in the subscription's ``missed``), and resumes after
            them. An event that was not stored cannot be read again (nor is it replayed): it
            is lost. Reconnects after which nothing changed back off.
        ssl_context: For ``wss://`` URLs (default: the system's trusted certificates).
        discover: Also fail over to the nodes the brokers advertise (``welcome.nodes``). The
            client then sends its *token* to those too: pass False to connect only to the
            URLs given.

    Raises:
        ConnectionClosed: if the first connection failed (the message names the URL and why;
            with several URLs, each URL and why, as the kind of exception the last one
            raised).
        HandshakeError: if the broker refused the first handshake (such as a bad token).
        ValueError: if *url* is not a WebSocket URL (or one of several is not, or they are
            none, or they mix ``ws://`` and ``wss://``), or an option is out of range.
        TypeError: if one of several URLs is not a str.
    """
    urls = given_urls(url)
    check_int(max_outbox, "max_outbox", minimum=1)
    if not 0 < backoff_initial <= backoff_max:
        raise ValueError(
            f"need 0 < backoff_initial <= backoff_max, not {backoff_initial!r}, {backoff_max!r}"
        )
    if not connect_timeout > 0:
        raise ValueError(f"connect_timeout must be positive, not {connect_timeout!r}")
    if max_message_size < 1024:
        raise ValueError(f"max_message_size must be at least 1024, not {max_message_size!r}")
    async with open_service_nursery() as nursery:
        client = Client._create(
            nursery,
            urls,
            discover=discover,
            token=token,
            name=name,
            reconnect=reconnect,
            connect_timeout=connect_timeout,
            max_outbox=max_outbox,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            max_message_size=max_message_size,
            ssl_context=ssl_context,
        )
        await nursery.start(client._run)
        try:
            yield client
        finally:
            await client._shutdown()
