"""The remote client: the :class:`~trio_realtime.EventChannel` of a broker, over WebSocket.

:func:`open_client` connects and yields a :class:`Client`, which application code uses exactly
like an in-process :class:`~trio_realtime.Bus`. Underneath, the client keeps one connection
at a time (a :class:`~trio_realtime.client._link.Link`) and, when it drops, reconnects with
exponential backoff, re-creates every subscription (resuming stored topics after the last
``seq`` it saw) and sends what waited in its outbox. Given several brokers (the nodes of a
cluster, and those they advertise), it goes round them (see :mod:`trio_realtime._nodes`).

That machinery is :class:`~trio_realtime.client._connector.Connector`'s, the base of
:class:`Client`; this module puts the :class:`~trio_realtime.EventChannel` API on it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

import trio

from .._event import Event, make_event
from .._nodes import given_urls
from .._topics import validate_pattern
from .._transport import DEFAULT_MAX_MESSAGE_SIZE
from .._transport_client import DEFAULT_CONNECT_TIMEOUT
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
from ..bus._requests import DEFAULT_MAX_CONCURRENCY, check_reply, serving, with_timeout
from ..protocol import Publish
from ._connector import Connector
from ._state import ClientState as ClientState
from ._state import ClientStatistics as ClientStatistics
from ._state import HistoryPage, HistoryQuery, PublishAck, RemoteSub, RequestPending, since_fields
from ._tokens import TokenSource

__all__ = ["Client", "ClientState", "ClientStatistics", "open_client"]

#: Publishes (and other operations) that may wait to be sent, by default, before ``publish``
#: waits too.
DEFAULT_MAX_OUTBOX: Final = 10_000
#: Seconds before the first reconnect attempt, at most, by default (then doubling).
DEFAULT_BACKOFF_INITIAL: Final = 0.1
#: Seconds between reconnect attempts, at most, by default.
DEFAULT_BACKOFF_MAX: Final = 10.0
#: A publisher that never has to wait yields to the scheduler once per this many publishes,
#: so that the writer sends them as one message (not a task switch and a message each).
PUBLISH_BATCH: Final = 64


class Client(Connector, metaclass=NoPublicConstructor):
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

    # -- closing --------------------------------------------------------------------------

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
