"""The in-process bus: the single router of trio_realtime.

Everything that receives events is a *sink* in the bus's :class:`PatternIndex`: a local
:class:`Subscription`, a broker session's remote subscription, an actor. ``publish`` validates,
stores (for persisted topics), retains, then offers the event to each matching sink under its
overflow policy. There is no second routing table anywhere.

:class:`Bus` stands on two layers, a module each: the routing core
(:class:`~trio_realtime.bus._router.Router`: the sinks, their routes, the retained values, the
backplane's hooks) and the commit pipeline (:class:`~trio_realtime.bus._commit.Committer`:
persisted events stored in batches and routed in seq order). This module puts the
:class:`~trio_realtime.EventChannel` API on them: publishing, subscribing, request and reply,
history, closing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._errors import NoResponders, StoreUnavailable
from .._event import Event, make_event
from .._topics import validate_pattern
from .._util import NoPublicConstructor, open_service_nursery
from ._channel import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_REQUEST_TIMEOUT,
    Handler,
    Overflow,
    OverflowLike,
    Sink,
    Subscription,
    check_int,
    check_since,
    pattern_and_type,
)
from ._commit import Committer, PendingCommit
from ._requests import (
    DEFAULT_MAX_CONCURRENCY,
    Answering,
    BusRequest,
    InboxSink,
    ReplyInbox,
    cancel_event,
    check_reply,
    deliver_cancel,
    serving,
    with_timeout,
)
from ._retained import DEFAULT_MAX_RETAINED, RetainedValues

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["Bus", "BusStatistics", "open_bus"]


@attrs.frozen(kw_only=True)
class BusStatistics:
    """Counters of a bus since it opened.

    Attributes:
        subscriptions: Subscriptions active now (local and, on a broker, remote).
        published: Events published.
        delivered: Events handed to a subscription (one publish to three subscribers counts 3).
        dropped: Events subscriptions lost to overflow.
        retained: Retained events held now.
        stored: Events appended to the store.
        retained_evicted: Retained events evicted to stay within ``max_retained``.
        requests_cancelled: Requests that this bus's ``serve`` blocks stopped handling (the
            handler cancelled) or did not start, because their requester cancelled them.
        requests_expired: The same, because their deadline passed.
        late_replies: Replies to this bus's requests that came when no request waited for
            them (it had been cancelled or had timed out, or had its reply already):
            dropped.
    """

    subscriptions: int
    published: int
    delivered: int
    dropped: int
    retained: int
    stored: int
    retained_evicted: int = 0
    requests_cancelled: int = 0
    requests_expired: int = 0
    late_replies: int = 0


class Bus(Committer, metaclass=NoPublicConstructor):
    """The in-process event router. Get one from :func:`open_bus`.

    A bus implements :class:`~trio_realtime.EventChannel`. It is not thread-safe: use it from
    the Trio thread it was opened in.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        source: str,
        store: Store | None,
        persist: Sequence[str] | None,
        max_retained: int = DEFAULT_MAX_RETAINED,
    ) -> None:
        super().__init__(nursery, store=store, persist=persist, max_retained=max_retained)
        self.source: Final = source
        self._inbox: InboxSink | None = None  # made on the first request
        self._answering = Answering()  # what the serve blocks handle, for cancels

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
        """Publish *data* on *topic*, and return the event.

        ``publish(obj)`` publishes an instance of a class registered with
        :func:`~trio_realtime.event_type` on its registered topic.

        Returns once the event is stored (for a persisted topic, with its ``seq``) and handed
        to every matching subscription; with the ``block`` policy that may mean waiting for
        a slow subscriber. That is what *ack* asks of a remote client, so on the bus
        ``ack=True`` and ``ack=False`` behave the same: the returned event carries its
        ``seq`` either way.

        Args:
            topic: Where to publish (no wildcards), or a typed payload instance.
            data: A JSON-compatible value, or a typed payload instance.
            headers: String metadata.
            source: Who publishes (default: the bus's ``source``).
            type: The event type (default: the topic, or the payload's registered name).
            retain: Keep this event as the topic's retained value, delivered to every new
                subscription that matches.
            ack: Wait until the event is stored and routed (the bus always does).

        Raises:
            InvalidTopic: if *topic* is not a valid topic.
            TypeError: if *data* is not JSON-compatible (the message names the value).
            trio.ClosedResourceError: if the bus is closed.
            StoreError: if the store failed to store a persisted event.
        """
        del ack
        event = make_event(topic, data, headers=headers, source=source or self.source, type=type)
        return await self.publish_event(event, retain=retain)

    async def publish_event(self, event: Event, *, retain: bool = False) -> Event:
        """Publish a ready-made :class:`Event` as it is (its topic is trusted to be valid).

        This is how a broker routes the events its clients publish. A stored event is
        returned with its ``seq`` set.

        Raises:
            NoResponders: if ``event.reply_to`` is set and nothing subscribes to its topic.
            trio.ClosedResourceError: if the bus is closed.
            StoreError: if the store failed to store a persisted event.
        """
        result = await self.publish_pipelined(event, retain=retain)
        if isinstance(result, Event):
            return result
        return await result.wait()

    async def publish_pipelined(
        self, event: Event, *, retain: bool = False, publisher: str | None = None
    ) -> Event | PendingCommit:
        """Publish *event* without waiting for the store.

        An event that is not persisted is routed at once and returned. A persisted one is
        queued for the committer (which stores events in batches and routes them in ``seq``
        order), and a :class:`PendingCommit` is returned: ``await pending.wait()`` for the
        stored event. Publishes from one task keep their order. This is how a broker session
        keeps reading while earlier publishes are being stored.

        *publisher* scopes deduplication: an event whose id was stored recently is a
        duplicate (not stored again; the commit is done with ``duplicate`` set) only if the
        same *publisher* stored it; from another publisher it is refused with
        :exc:`~trio_realtime.DuplicateEventId`, so that nobody can suppress another's events
        by reusing their ids.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        if event.reply_to is not None and not self._has_route(event.topic):
            # Nothing here takes the request: a backplane may find responders on other nodes.
            remote = self._remote
            if remote is None or not remote.reachable:
                raise NoResponders(event.topic)
        if self.store is not None and self._is_persisted(event.topic):
            return await self._submit(event, retain, publisher)
        self._published += 1
        if retain:
            self._retained.set(event)
        await self._route(event, retain)
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
        """Subscribe to *pattern* for the duration of an ``async with`` block.

        Yields a :class:`Subscription`: iterate it, or call ``receive()``. Retained events
        that match are delivered first, then live ones. Leaving the block removes the
        subscription at once, whatever the reason.

        Args:
            pattern: A topic pattern (``*`` one token, ``>`` one or more at the end), or a
                class registered with :func:`~trio_realtime.event_type`: then the events'
                ``data`` arrives as instances of it, and a payload that does not fit is not
                delivered (it is counted in the statistics' ``rejected`` and logged).
            group: A queue group: each matching event goes to exactly one member of each
                group, and to every subscription without a group.
            max_buffer_size: Events buffered before *overflow* applies.
            overflow: ``"block"`` (default), ``"drop_oldest"``, ``"drop_newest"`` or
                ``"disconnect"`` (or an :class:`Overflow`); see :doc:`/backpressure`.
            since: Replay stored events after this ``seq`` (or from this time) first, then
                continue live with no gap and no duplicate. Needs a store. Stored retained
                events come with the replay; retained events of unstored topics follow it.

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
            TypeError: if *since* is neither a seq, a datetime nor None.
            ValueError: if *since* is a negative seq.
            trio.ClosedResourceError: if the bus is closed.
        """
        await trio.lowlevel.checkpoint()
        pattern, payload_type = pattern_and_type(pattern)
        since = check_since(since)
        sub = Subscription(
            pattern,
            group=group,
            max_buffer_size=max_buffer_size,
            overflow=overflow,
            payload_type=payload_type,
            on_disconnect=self.remove_sink,
        )
        replay: trio.CancelScope | None = None
        try:
            if since is None:
                self.add_sink(sub)
            else:
                replay = await self.add_sink_since(sub, since)
            yield sub
        finally:
            if replay is not None:
                replay.cancel()
            self.remove_sink(sub)
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

        ``handler(event)`` (a function or a coroutine function) is called for each request;
        its return value becomes the reply's data. If it raises, the requester's
        :meth:`request` raises :exc:`~trio_realtime.RequestFailed` with its message, and
        serving goes on. Up to *max_concurrency* requests are handled at once. Events without
        ``reply_to`` are handled too; their result is discarded.

        Each handler runs in a cancel scope of its own, cancelled when the requester gives up
        (its request is cancelled, or times out) and at the request's deadline: the handler
        sees :exc:`trio.Cancelled`, and its reply, if it returns one all the same, is not
        sent. A request whose deadline passed before a slot was free is not started. (See
        :ref:`tutorial-cancellation`.)
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

        The request carries its *timeout* (the header ``rttimeout``, in milliseconds). If
        the request is cancelled, or times out, before its reply came, its responder is told
        (its handler is cancelled), and a reply that comes later is dropped (counted in
        :meth:`statistics`: ``late_replies``).

        Raises:
            NoResponders: at once, if nothing subscribes to *topic*.
            RequestFailed: if the responder's handler raised (with its message).
            trio.TooSlowError: if no reply came within *timeout* seconds.
        """
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        if self._inbox is None:
            self._inbox = InboxSink(ReplyInbox())
            self.add_sink(self._inbox, retained=False)
        waiter = BusRequest()
        reply_to = self._inbox.inbox.reply_to()
        with self._inbox.inbox.expect(reply_to, waiter):
            event = make_event(
                topic,
                data,
                headers=with_timeout(headers, timeout),
                source=self.source,
                type=None,
                reply_to=reply_to,
            )
            try:
                with trio.fail_after(timeout):  # the whole request, publishing it included
                    await self.publish_event(event)
                    await waiter.done.wait()
            finally:
                if not waiter.done.is_set():  # given up on: tell its responder
                    self.route_cancel(
                        cancel_event(event.topic, event.id, reply_to, source=self.source)
                    )
        return check_reply(topic, waiter.result())

    def route_cancel(self, cancel: Event) -> int:
        """Hand the cancel of a request (a :func:`~trio_realtime.bus._requests.cancel_event`)
        to whoever may be handling the request: this bus's ``serve`` blocks, and the sinks
        matching its topic that take cancels (a broker's sessions pass it on to their
        client). Returns how many were handling it.

        This is how a broker passes on a client's ``cancel`` (once it checked that the
        request is the client's). With a backplane attached that has a
        ``forward_cancel(cancel)`` method, the cancel is handed to it too, for the other nodes
        (which deliver it with :meth:`route_remote_cancel`).
        """
        return deliver_cancel(
            cancel, self._index.match(cancel.topic), self._answering, self._remote
        )

    def route_remote_cancel(self, cancel: Event) -> int:
        """:meth:`route_cancel` for a cancel that another node's backplane sent on: handed
        to this node's ``serve`` blocks and sessions only, never forwarded again."""
        if self._closed:
            return 0
        return deliver_cancel(cancel, self._index.match(cancel.topic), self._answering, None)

    async def history(
        self,
        pattern: str,
        *,
        since: int | datetime | None = None,
        limit: int = 100,
        max_bytes: int | None = None,
    ) -> list[Event]:
        """Stored events matching *pattern* after *since* (a ``seq`` or a time), oldest first.

        With *max_bytes*, at most about that many bytes of events (as the store estimates
        their size; at least one event): fewer than *limit* events then do not mean that no
        more match.

        Raises:
            StoreUnavailable: if the bus has no store.
            TypeError: if *since* is neither a seq, a datetime nor None.
            ValueError: if *since* is a negative seq, or *limit* not an int of 0 or more.
        """
        validate_pattern(pattern)
        since = check_since(since)
        check_int(limit, "limit", minimum=0)
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        if self.store is None:
            raise StoreUnavailable(
                "history() needs a bus with a store: open it with open_bus(store=…)"
            )
        if isinstance(since, datetime):
            return await self.store.read(pattern, since=since, limit=limit, max_bytes=max_bytes)
        return await self.store.read(pattern, after=since, limit=limit, max_bytes=max_bytes)

    # -- the rest -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the bus now, as leaving its ``open_bus`` block does; a no-op once closed.

        Live subscriptions end cleanly (their buffered events are still received), waiting
        requests and publishes raise :exc:`trio.ClosedResourceError`, and so does every
        later call. The store stays open until the ``open_bus`` block exits.
        """
        self._close()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> BusStatistics:
        """A snapshot of the bus's counters."""
        subs = self._all_sinks()
        return BusStatistics(
            subscriptions=len(subs),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped_by_gone + sum(getattr(s, "missed", 0) for s in subs),
            retained=len(self._retained),
            stored=self._stored,
            retained_evicted=self._retained.evicted,
            requests_cancelled=self._answering.cancelled,
            requests_expired=self._answering.expired,
            late_replies=self._inbox.inbox.late if self._inbox is not None else 0,
        )

    def _all_sinks(self) -> list[Sink]:
        """Every sink but the reply inbox (an internal one)."""
        return [sink for sink in self._index.match_all() if sink is not self._inbox]

    def _close(self) -> None:
        """End every subscription and refuse further publishes."""
        self._closed = True
        if self._inbox is not None:
            for waiter in self._inbox.inbox.waiters():
                waiter.fail(trio.ClosedResourceError("the bus closed before the reply came"))
        for sink in self._index.match_all():
            sink.end()
        for pending in self._pending:
            pending.error = trio.ClosedResourceError("the bus closed before storing the event")
            pending.done.set()
        self._pending.clear()
        self._in_flight.clear()
        self._pending_room.unpark_all()


@asynccontextmanager
async def open_bus(
    *,
    source: str = "trio-realtime",
    store: Store | None = None,
    persist: Sequence[str] | None = None,
    max_retained: int | None = None,
) -> AsyncIterator[Bus]:
    """Open an in-process event bus for the duration of an ``async with`` block.

    Leaving the block ends every subscription's iteration and every ``serve`` block's
    handlers; no task outlives the bus.

    Args:
        source: The default ``source`` of the events it publishes.
        store: Where persisted events are kept. The bus opens it on entry (if it is not open
            yet) and closes it on exit.
        persist: Patterns of the topics to store. By default, with a store, every topic
            except ``$…`` and ``_inbox.…``.
        max_retained: The most retained values (one per topic) the bus holds; retaining one
            more evicts the value updated longest ago (default
            :data:`DEFAULT_MAX_RETAINED`).
    """
    if max_retained is None:
        max_retained = DEFAULT_MAX_RETAINED
    RetainedValues(max_retained)  # checks it before anything opens
    if persist is not None:
        for pattern in persist:
            validate_pattern(pattern)
    try:
        if store is not None:
            await store.open()
        async with open_service_nursery() as nursery:
            bus = Bus._create(
                nursery, source=source, store=store, persist=persist, max_retained=max_retained
            )
            if store is not None:
                bus._last_seq = await store.last_seq()
                await nursery.start(bus._commit_loop)
            try:
                yield bus
            finally:
                bus._close()
    finally:
        if store is not None:
            with trio.CancelScope(shield=True):
                await store.aclose()
