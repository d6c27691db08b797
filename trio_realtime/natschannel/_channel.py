"""NatsChannel: the EventChannel over NATS, with no broker of its own in between.

Events travel as NATS messages (:mod:`trio_realtime._nats_wire` says how), on one NATS
connection per channel (:mod:`trio_realtime._nats`: nats-py on a trio-asyncio loop, crossing
between the loops in batches):

* ``publish`` queues the message for the connection's pump and returns (ordered per channel);
  with ``ack=True`` it returns once NATS has it (a round trip), or, for a stored topic, once
  the store has it, with its seq.
* ``subscribe`` subscribes on NATS (see :mod:`._routes`): the channel's subscriptions of one
  pattern and queue group share one NATS subscription; a queue group is a NATS queue group.
* ``request`` is a NATS request (nats-py's: one reply inbox per connection), and ``serve``
  answers on the request's reply subject; NATS's no-responders status is
  :exc:`~trio_realtime.NoResponders`, at once.
* Retained values live in a JetStream stream (:mod:`._retained`).
* With a store (``stream=``, or ``store=``), events on its topics are stored first (in
  batches, in order), then published with their seq: ``history`` and ``subscribe(since=…)``
  read the store, and subscriptions read back from it what they lost. The store must be one
  that every publisher's channel shares: a JetStream stream.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._errors import ConnectionClosed, NoResponders, StoreUnavailable
from .._event import Event, make_event
from .._nats import (
    CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_PENDING,
    DEFAULT_RECONNECT_WAIT,
    NatsConnection,
    open_nats,
)
from .._nats_wire import DEFAULT_PREFIX, INBOX_SUBJECT_PREFIX, encode
from .._nats_wire import subject_of as _subject_of
from .._topics import PatternIndex, is_transient, validate_pattern, validate_topic
from .._util import NoPublicConstructor, open_service_nursery
from ..bus._channel import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_REQUEST_TIMEOUT,
    Handler,
    Overflow,
    OverflowLike,
    Subscription,
    check_int,
    check_since,
    pattern_and_type,
)
from ..bus._requests import Answering, check_reply, serving, with_timeout
from ..store import JetStreamStore
from ._requests import Requests, cancels
from ._retained import RetainedStream
from ._routes import Routes

if TYPE_CHECKING:
    import ssl

    from ..store import Store

__all__ = ["NatsChannel", "NatsChannelStatistics", "open_nats_channel"]

logger = logging.getLogger("trio_realtime.natschannel")

#: The ``source`` of the events a channel without a name publishes.
DEFAULT_SOURCE: Final = "trio-realtime"
#: A publisher that never has to wait yields to the scheduler once per this many publishes.
PUBLISH_BATCH: Final = 64
#: Most events the channel hands the store in one append.
MAX_COMMIT_BATCH: Final = 1000
#: Publishes on stored topics that may wait for the store before publishers wait too.
MAX_PENDING_COMMITS: Final = 16384


@attrs.frozen(kw_only=True)
class NatsChannelStatistics:
    """A snapshot of a :class:`NatsChannel` (counters are totals since it opened).

    Attributes:
        connected: Whether NATS is reachable now.
        server: The NATS server connected to, or None.
        disconnects: Times the connection to NATS was lost.
        reconnects: Times it was made again after a loss.
        subscriptions: Live subscriptions (those of ``serve`` blocks included).
        nats_subscriptions: NATS subscriptions held for them (one per pattern and group).
        published: Events published.
        pending: Messages queued for NATS and not handed to it yet.
        received: Messages received on the channel's NATS subscriptions.
        delivered: Events handed to subscriptions (one message to three subscriptions
            counts 3).
        dropped: NATS messages the channel dropped because a subscription fell so far
            behind that its route's buffer was full (``missed`` of the subscriptions).
        recovered: Stored events read back from the store after such a loss, or an outage.
        bad_messages: Messages on the channel's subjects that were not valid events.
        stored: Events appended to the store.
        store_errors: Publishes without ``ack`` whose event the store failed to store.
        retained: Whether retained values are available (JetStream is).
        requests_cancelled: Requests that this channel's ``serve`` blocks stopped handling
            (the handler cancelled) or did not start, because their requester cancelled them.
        requests_expired: The same, because their deadline passed.
        late_replies: Replies to this channel's requests that came when no request waited for
            them (given up on, or answered twice): dropped.
    """

    connected: bool
    server: str | None
    disconnects: int
    reconnects: int
    subscriptions: int
    nats_subscriptions: int
    published: int
    pending: int
    received: int
    delivered: int
    dropped: int
    recovered: int
    bad_messages: int
    stored: int
    store_errors: int
    retained: bool
    requests_cancelled: int
    requests_expired: int
    late_replies: int


class _Commit:
    """A publish on a stored topic, on its way through the store."""

    __slots__ = ("done", "error", "event", "result", "retain", "waited")

    def __init__(self, event: Event, retain: bool) -> None:
        self.event = event
        self.retain = retain
        self.done = trio.Event()
        self.result: Event | None = None
        self.error: BaseException | None = None
        self.waited = False

    async def wait(self) -> Event:
        self.waited = True
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class NatsChannel(metaclass=NoPublicConstructor):
    """The :class:`~trio_realtime.EventChannel` over NATS. Get one from
    :func:`open_nats_channel` (or :func:`~trio_realtime.open_channel` with a ``nats://``
    URL)."""

    def __init__(
        self,
        connection: NatsConnection,
        nursery: trio.Nursery,
        *,
        prefix: str,
        source: str,
        store: Store | None,
        persist: Sequence[str] | None,
        retained: RetainedStream | None,
        max_pending: int,
    ) -> None:
        self._connection = connection
        self._nursery = nursery
        #: The subject prefix: an event on ``T`` travels on ``<prefix>.T``.
        self.prefix: Final = prefix
        self._prefix = prefix + "."
        #: The default ``source`` of the events it publishes.
        self.source: Final = source
        #: The store of the stored topics, or None.
        self.store: Final = store
        self._persist: PatternIndex[str] | None = None
        if persist is not None:
            self._persist = PatternIndex()
            for pattern in persist:
                self._persist.add(pattern, pattern)
        self._persisted: dict[str, bool] = {}
        self._retained = retained
        self._routes = Routes(
            connection, nursery, prefix, store=store, retained=retained, max_pending=max_pending
        )
        self._answering = Answering()
        self._closed = False
        self._unyielded = 0
        self._published = 0
        self._stored = 0
        self._store_errors = 0
        self._requests = Requests(connection, nursery, prefix, source)
        # Publishes on stored topics: those waiting for the committer, and counts.
        self._commits: deque[_Commit] = deque()
        self._commits_lot = trio.lowlevel.ParkingLot()
        self._commits_room = trio.lowlevel.ParkingLot()
        self._committed_lot = trio.lowlevel.ParkingLot()
        self._submitted = 0
        self._committed = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<NatsChannel prefix={self.prefix!r} {state}>"

    # -- publishing ---------------------------------------------------------------------------

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

        Returns once the message is queued for NATS (in order with this channel's other
        publishes); a queue full of messages NATS has not taken yet (``max_pending``, while
        NATS is slow or unreachable) makes it wait. With *retain*, JetStream keeps the event
        as the topic's retained value before this returns.

        With *ack*, returns once NATS has the message, and everything published earlier
        through this channel (a round trip); on a stored topic, once the store has stored it,
        with its ``seq``.

        Raises:
            InvalidTopic: if *topic* is not a valid topic.
            TypeError: if *data* is not JSON-compatible (the message names the value).
            StoreUnavailable: with *retain*, if NATS has no JetStream.
            StoreError: if the store (or JetStream, keeping a retained value) failed.
            ConnectionClosed: with *ack*, if NATS did not confirm.
            trio.ClosedResourceError: if the channel is closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        event = make_event(topic, data, headers=headers, source=source or self.source, type=type)
        if retain and (self._retained is None or not self._retained.available):
            raise StoreUnavailable(
                "retained values over NATS need JetStream: run nats-server with -js (and open "
                "the channel with retained=True)"
            )
        if self.store is not None and self._is_persisted(event.topic):
            commit = await self._submit(event, retain)
            return await commit.wait() if ack else event
        if retain:
            assert self._retained is not None
            await self._retained.publish(event)
        await self._send(event)
        if ack:
            await self._synced()
        return event

    def _is_persisted(self, topic: str) -> bool:
        cached = self._persisted.get(topic)
        if cached is None:
            if self._persist is None:
                cached = not (is_transient(topic) or topic.startswith(INBOX_SUBJECT_PREFIX))
            else:
                cached = bool(self._persist.match(topic))
            if len(self._persisted) >= 4096:
                self._persisted.clear()
            self._persisted[topic] = cached
        return cached

    def is_persisted(self, topic: str) -> bool:
        """Whether events published on *topic* are stored (False without a store)."""
        return self.store is not None and self._is_persisted(validate_topic(topic))

    async def _send(self, event: Event) -> None:
        """Queue *event*'s message for NATS, waiting while the queue is full."""
        headers, body = encode(event)
        subject = _subject_of(self._prefix, event.topic)
        connection = self._connection
        while True:
            try:
                connection.publish_nowait(subject, body, headers=headers)
            except trio.WouldBlock:
                try:
                    await connection.flush()  # until what is queued is handed over
                except ConnectionClosed:
                    pass  # NATS did not confirm, but the queue has room again
                self._check_open()
                continue
            break
        self._published += 1
        self._unyielded += 1
        if self._unyielded >= PUBLISH_BATCH:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _synced(self) -> None:
        """Wait until everything published so far is stored (where it is to be) and NATS has
        it."""
        target = self._submitted
        while self._committed < target:
            await self._committed_lot.park()
            self._check_open()
        await self._connection.flush()

    # -- stored topics: the committer ---------------------------------------------------------

    async def _submit(self, event: Event, retain: bool) -> _Commit:
        while len(self._commits) >= MAX_PENDING_COMMITS:
            await self._commits_room.park()
            self._check_open()
        commit = _Commit(event, retain)
        self._commits.append(commit)
        self._submitted += 1
        self._commits_lot.unpark()
        return commit

    async def _commit_loop(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Store the publishes on stored topics in batches, in order; then publish each with
        its seq (and retain it, if asked)."""
        store = self.store
        assert store is not None
        task_status.started()
        commits = self._commits
        while True:
            if not commits:
                await self._commits_lot.park()
                continue
            batch = [commits.popleft() for _ in range(min(len(commits), MAX_COMMIT_BATCH))]
            self._commits_room.unpark_all()
            outcomes = await self._append(store, [c.event for c in batch])
            for commit, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Event):
                    self._stored += 1
                    try:
                        if commit.retain:
                            assert self._retained is not None
                            await self._retained.publish(outcome)
                        await self._send(outcome)
                    except Exception as exc:  # noqa: BLE001 - stored, but not retained or sent
                        commit.error = exc
                    else:
                        commit.result = outcome
                else:
                    commit.error = outcome
                if commit.error is not None and not commit.waited:
                    self._store_errors += 1
                    logger.warning(
                        "event %s on %r was not stored and sent: %s",
                        commit.event.id,
                        commit.event.topic,
                        commit.error,
                    )
                commit.done.set()
            self._committed += len(batch)
            self._committed_lot.unpark_all()

    async def _append(self, store: Store, events: list[Event]) -> list[Event | BaseException]:
        """Store *events*; if the batch as a whole is refused, store them one by one."""
        try:
            return list(await store.append(events))
        except (ValueError, TypeError) as exc:
            if len(events) == 1:
                return [exc]
            return [(await self._append(store, [event]))[0] for event in events]
        except Exception as exc:
            logger.exception("storing %d events failed", len(events))
            return [exc] * len(events)

    def _fail_commits(self) -> None:
        for commit in self._commits:
            commit.error = trio.ClosedResourceError("the channel closed before storing the event")
            commit.done.set()
        self._commits.clear()
        self._commits_room.unpark_all()
        self._committed_lot.unpark_all()

    # -- subscribing --------------------------------------------------------------------------

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
        """Subscribe to *pattern* for the duration of an ``async with`` block.

        As :meth:`Bus.subscribe <trio_realtime.Bus.subscribe>`: the retained values that
        match come first, then live events. The subscription is in place at the NATS server
        when the block starts (events published from then on, by anyone, reach it), and gone
        from it when the block has exited. A queue group is a NATS queue group: each event
        goes to one member of the group among all NATS clients.

        Over NATS a slow subscriber cannot make publishers wait: see :mod:`._routes`
        (``block`` waits here, then drops what NATS has no room for, counted in ``missed``;
        stored events are read back from the store).

        Args:
            pattern: A topic pattern, or a class registered with
                :func:`~trio_realtime.event_type`.
            group: A queue group.
            max_buffer_size: Events buffered before *overflow* applies.
            overflow: ``"block"`` (default), ``"drop_oldest"``, ``"drop_newest"`` or
                ``"disconnect"``.
            since: Replay stored events after this ``seq`` (or from this time) first, then go
                on live with no gap and no duplicate. Needs a store. (No retained values
                then.)

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
            TypeError: if *since* is neither a seq, a datetime nor None.
            ValueError: if *since* is a negative seq.
            StoreUnavailable: with *since*, if the channel has no store.
            trio.ClosedResourceError: if the channel is closed.
        """
        await trio.lowlevel.checkpoint()
        pattern, payload_type = pattern_and_type(pattern)
        since = check_since(since)
        self._check_open()
        if since is not None and self.store is None:
            raise StoreUnavailable(
                "subscribe(since=…) needs a channel with a store: open it with stream=…"
            )
        sub = Subscription(
            pattern,
            group=group,
            max_buffer_size=max_buffer_size,
            overflow=overflow,
            payload_type=payload_type,
            on_disconnect=self._routes.disconnected,
        )
        try:
            async with self._routes.member(sub, since=since, retained=since is None):
                if self._closed:
                    sub.end()
                yield sub
        finally:
            sub._close()

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

        As :meth:`Bus.serve <trio_realtime.Bus.serve>`. The reply goes to the request's NATS
        reply subject, so a plain NATS requester gets it too (with the event's headers,
        ``ce-error`` when the handler failed).
        """
        check_int(max_concurrency, "max_concurrency", minimum=1)
        validate_pattern(pattern)
        self._check_open()
        sub = Subscription(pattern, group=group)
        try:
            async with (
                self._routes.member(sub, since=None, retained=False),
                cancels(self._connection, self._nursery, self.prefix, pattern, self._answering),
                serving(self._nursery, self, sub, handler, max_concurrency, self._answering),
            ):
                yield
        finally:
            sub._close()

    # -- requests -----------------------------------------------------------------------------

    async def request(
        self,
        topic: str,
        data: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> Event:
        """Publish a request on *topic* and return the first reply (a NATS request).

        Raises:
            InvalidTopic: if *topic* is not a valid topic.
            NoResponders: at once, if nothing subscribes to *topic*.
            RequestFailed: if the responder's handler raised (with its message).
            trio.TooSlowError: if no reply came within *timeout* seconds.
            trio.ClosedResourceError: if the channel is closed.
        """
        self._check_open()
        event = make_event(
            topic, data, headers=with_timeout(headers, timeout), source=self.source, type=None
        )
        message_headers, body = encode(event)
        subject = _subject_of(self._prefix, event.topic)
        reply = await self._requests.send(event, subject, message_headers, body, timeout)
        if reply is None:
            raise NoResponders(event.topic)
        return check_reply(event.topic, reply)

    # -- the store ----------------------------------------------------------------------------

    async def history(
        self,
        pattern: str,
        *,
        since: int | datetime | None = None,
        limit: int = 100,
        max_bytes: int | None = None,
    ) -> list[Event]:
        """Stored events matching *pattern* after *since* (a ``seq`` or a time), oldest
        first: as :meth:`Bus.history <trio_realtime.Bus.history>`.

        Raises:
            StoreUnavailable: if the channel has no store.
            TypeError: if *since* is neither a seq, a datetime nor None.
            ValueError: if *since* is a negative seq, or *limit* not an int of 0 or more.
            trio.ClosedResourceError: if the channel is closed.
        """
        validate_pattern(pattern)
        since = check_since(since)
        check_int(limit, "limit", minimum=0)
        self._check_open()
        if self.store is None:
            raise StoreUnavailable("history() needs a channel with a store: open it with stream=…")
        if isinstance(since, datetime):
            return await self.store.read(pattern, since=since, limit=limit, max_bytes=max_bytes)
        return await self.store.read(pattern, after=since, limit=limit, max_bytes=max_bytes)

    # -- the connection -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether NATS is reachable now."""
        return self._connection.connected

    async def wait_changed(self) -> bool:
        """Wait until NATS is reached or lost; return :attr:`connected`."""
        return await self._connection.wait_changed()

    async def _watch(self) -> None:
        """After an outage, have the subscriptions read back what they lost."""
        up = self._connection.connected
        while True:
            now = await self._connection.wait_changed()
            if now and not up and not self._closed:
                await self._routes.resync()
            up = now

    def statistics(self) -> NatsChannelStatistics:
        """A snapshot of the channel's :class:`NatsChannelStatistics`."""
        nats = self._connection.statistics()
        routes = self._routes
        return NatsChannelStatistics(
            connected=nats.connected,
            server=nats.server,
            disconnects=nats.disconnects,
            reconnects=nats.reconnects,
            subscriptions=routes.subscriptions,
            nats_subscriptions=routes.nats_subscriptions,
            published=self._published,
            pending=nats.pending,
            received=routes.received,
            delivered=routes.delivered,
            dropped=routes.dropped,
            recovered=routes.recovered,
            bad_messages=routes.bad_messages,
            stored=self._stored,
            store_errors=self._store_errors,
            retained=self._retained is not None and self._retained.available,
            requests_cancelled=self._answering.cancelled,
            requests_expired=self._answering.expired,
            late_replies=self._requests.late,
        )

    # -- closing ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the channel is closed")

    async def aclose(self) -> None:
        """Close the channel now, as leaving its block does; a no-op once closed.

        Live subscriptions end cleanly (their buffered events are still received), waiting
        requests and publishes raise :exc:`trio.ClosedResourceError`, and so does every later
        call. The connection to NATS stays open until the block exits.
        """
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._routes.close()
        self._fail_commits()
        self._requests.close()

    async def _drain(self) -> None:
        """Wait (bounded) until the publishes on stored topics queued so far are stored."""
        with trio.move_on_after(CLOSE_TIMEOUT):
            target = self._submitted
            while self._committed < target and not self._closed:
                await self._committed_lot.park()


def _servers(value: str | Sequence[str]) -> list[str]:
    urls = [value] if isinstance(value, str) else list(value)
    found = [url.strip() for item in urls for url in item.split(",") if url.strip()]
    if not found:
        raise ValueError("no NATS server URL given (nats://HOST:PORT)")
    return found


@asynccontextmanager
async def open_nats_channel(
    servers: str | Sequence[str],
    *,
    prefix: str = DEFAULT_PREFIX,
    name: str | None = None,
    stream: str | None = None,
    store: Store | None = None,
    persist: Sequence[str] | None = None,
    retained: bool = True,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    reconnect_wait: float = DEFAULT_RECONNECT_WAIT,
    max_pending: int = DEFAULT_MAX_PENDING,
    tls: ssl.SSLContext | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
) -> AsyncIterator[NatsChannel]:
    """Open an :class:`~trio_realtime.EventChannel` over NATS for the ``async with`` block.

    ::

        async with open_nats_channel("nats://127.0.0.1:4222") as channel:
            async with channel.subscribe("orders.>") as sub:
                ...

    Entering waits for the first connection to NATS (at most *connect_timeout* seconds);
    afterwards nats-py reconnects by itself after an outage, and subscribes again. Leaving
    the block (or :meth:`NatsChannel.aclose`) ends every subscription's iteration cleanly,
    hands NATS what is still queued (a bounded time) and closes the connection; no task
    outlives the block.

    Args:
        servers: ``nats://HOST:PORT`` (or ``tls://``) URLs, as a list or one string
            (comma-separated URLs allowed); nats-py picks among them and fails over.
            ``user:password@`` or ``token@`` before the host authenticate.
        prefix: The subject prefix: an event on ``T`` travels on ``<prefix>.T``; retained
            values are kept on ``<prefix>r.T``. Applications sharing one NATS need
            different prefixes.
        name: The channel's name: the ``source`` of the events it publishes (unless
            ``publish`` is given another; ``"trio-realtime"`` without a name), and its
            connection's name in the NATS server's monitoring.
        stream: Keep the events of stored topics in this JetStream stream (created when
            missing), through the channel's own connection: a
            :class:`~trio_realtime.store.JetStreamStore` on the subjects ``<prefix>s.<topic>``,
            shared by every channel (and broker) given the same stream. Without a stream or a
            store, ``history`` and ``subscribe(since=…)`` raise
            :exc:`~trio_realtime.StoreUnavailable`.
        store: Another store for them, instead of *stream* (a ``JetStreamStore`` of your
            own making, with its retention limits, say): one that every channel of the event
            space shares. Opened on entry, closed on exit.
        persist: Patterns of the topics to store. By default, with a store, every topic
            except ``$…`` and inboxes.
        retained: Keep retained values in JetStream (nothing happens without JetStream but
            that ``publish(retain=True)`` raises StoreUnavailable).
        connect_timeout: Seconds the first connection may take.
        reconnect_wait: Seconds between attempts to reach a server.
        max_pending: Messages queued for NATS (while it is slow or unreachable) before
            ``publish`` waits; also what each NATS subscription buffers before it drops.
        tls: The TLS context for ``tls://`` servers.
        user: User name for NATS, with *password*.
        password: Password for NATS.
        token: Authentication token for NATS.

    Raises:
        ConnectionClosed: if NATS was not reachable within *connect_timeout*.
        StoreError: if the store could not be opened (no JetStream, say).
        ValueError: if both *stream* and *store* are given.
        RuntimeError: if the ``nats`` extra is not installed.
    """
    validate_topic(prefix)
    if prefix.startswith(("$", "_")):
        raise ValueError(f"prefix {prefix!r} must not start with '$' or '_'")
    if persist is not None:
        for pattern in persist:
            validate_pattern(pattern)
    if stream is not None and store is not None:
        raise ValueError("give a stream or a store, not both")
    async with open_nats(
        _servers(servers),
        name=name or DEFAULT_SOURCE,
        wait=True,
        connect_timeout=connect_timeout,
        reconnect_wait=reconnect_wait,
        max_pending=max_pending,
        tls=tls,
        user=user,
        password=password,
        token=token,
    ) as connection:
        if stream is not None:
            store = JetStreamStore(connection, stream, subject_prefix=prefix + "s")
        if store is not None:
            await store.open()
        try:
            values: RetainedStream | None = None
            if retained:
                values = RetainedStream(connection, prefix)
                await values.open()
            async with open_service_nursery() as nursery:
                channel = NatsChannel._create(
                    connection,
                    nursery,
                    prefix=prefix,
                    source=name or DEFAULT_SOURCE,
                    store=store,
                    persist=persist,
                    retained=values,
                    max_pending=max_pending,
                )
                nursery.start_soon(channel._watch)
                if store is not None:
                    await nursery.start(channel._commit_loop)
                cancelled = True
                try:
                    yield channel
                    cancelled = False
                finally:
                    if not cancelled and store is not None:
                        await channel._drain()
                    channel._close()
        finally:
            if store is not None:
                with trio.CancelScope(shield=True):
                    await store.aclose()
