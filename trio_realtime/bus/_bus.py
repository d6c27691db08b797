"""The in-process bus: the single router of trio_realtime.

Everything that receives events is a *sink* in the bus's :class:`PatternIndex`: a local
:class:`Subscription`, a broker session's remote subscription, an actor. ``publish`` validates,
stores (for persisted topics), retains, then offers the event to each matching sink under its
overflow policy. There is no second routing table anywhere.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._errors import DuplicateEventId, NoResponders, Refused, StoreUnavailable
from .._event import Event, make_event
from .._topics import PatternIndex, is_transient, validate_pattern, validate_topic
from .._util import NoPublicConstructor, open_service_nursery
from ._channel import (
    ACCEPTED,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_REQUEST_TIMEOUT,
    FULL,
    Handler,
    Overflow,
    OverflowLike,
    Sink,
    Subscription,
    check_int,
    check_since,
    pattern_and_type,
)
from ._remote import Remote
from ._replay import ReplaySink
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
from ._shared import commit_shared

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["Bus", "BusStatistics", "open_bus"]

logger = logging.getLogger("trio_realtime.bus")

#: A publisher that never has to wait yields to the scheduler once per this many publishes.
PUBLISH_BATCH: Final = 64
#: Most events the bus hands the store in one append (group commit).
MAX_COMMIT_BATCH: Final = 1024
#: Persisted publishes that may wait for the store before publishers have to wait too.
MAX_PENDING_COMMITS: Final = 16384
#: Stored batches that may wait to be routed while the next one is being stored (the commit
#: pipeline's depth).
MAX_STORED_UNROUTED: Final = 2
#: How many of the latest stored event ids the bus remembers (with their publisher and seq,
#: not their payload), to store a re-sent event once.
DEDUPE_WINDOW: Final = 100_000


def _taken(event_id: str) -> DuplicateEventId:
    return DuplicateEventId(
        f"event id {event_id!r} was already stored by another publisher; event ids must be "
        "unique (leave the id out and the broker assigns one)"
    )


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


@attrs.define
class _Route:
    singles: list[Sink]
    groups: list[list[Sink]]


class PendingCommit:
    """A persisted publish on its way through the store; ``await wait()`` for the result.

    ``duplicate`` is true when the publish repeated an event its publisher had already
    stored: it is not stored again, and the result carries the original's ``seq``.
    """

    __slots__ = ("done", "duplicate", "error", "event", "publisher", "result", "retain")

    def __init__(self, event: Event, retain: bool, publisher: str | None = None) -> None:
        self.event = event
        self.retain = retain
        self.publisher = publisher
        self.done = trio.Event()
        self.result: Event | None = None
        self.error: BaseException | None = None
        self.duplicate = False

    async def wait(self) -> Event:
        """The stored event (with its ``seq``), once stored and routed.

        Raises:
            StoreError: if the store failed.
            trio.ClosedResourceError: if the bus closed first.
        """
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class Bus(metaclass=NoPublicConstructor):
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
        self._nursery = nursery
        self._retained = RetainedValues(max_retained)
        self.source: Final = source
        self.store: Final = store
        self._persist: PatternIndex[str] | None = None
        if persist is not None:
            self._persist = PatternIndex()
            for pattern in persist:
                self._persist.add(pattern, pattern)
        self._persisted_cache: dict[str, bool] = {}
        self._index: PatternIndex[Sink] = PatternIndex()
        self._routes: dict[str, _Route] = {}
        self._rotation: dict[str, int] = {}
        self._pending: list[PendingCommit] = []
        # id -> (publisher, seq) of the latest stored events.
        self._recent_ids: dict[str, tuple[str | None, int | None]] = {}
        self._last_seq = 0
        self._in_flight: dict[str, PendingCommit] = {}
        self._replays: dict[Sink, ReplaySink] = {}
        self._pending_lot = trio.lowlevel.ParkingLot()
        self._pending_room = trio.lowlevel.ParkingLot()
        self._closed = False
        self._unyielded = 0
        self._published = 0
        self._delivered = 0
        self._stored = 0
        self._dropped_by_gone = 0
        self._inbox: InboxSink | None = None  # made on the first request
        self._answering = Answering()  # what the serve blocks handle, for cancels
        self._remote: Remote | None = None  # the cluster's backplane, when one is attached

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

    async def _submit(self, event: Event, retain: bool, publisher: str | None) -> PendingCommit:
        """Queue a persisted event for the committer, waiting only if the queue is full.

        An event whose id was stored recently by the same publisher (a client re-sending a
        publish it could not see acknowledged) is not stored or routed again: its pending
        commit is already done, as a duplicate with the original's seq.
        """
        recent = self._recent_ids.get(event.id)
        if recent is not None:
            pending = PendingCommit(event, retain, publisher)
            original_publisher, seq = recent
            if original_publisher == publisher:
                pending.result = attrs.evolve(event, seq=seq)
                pending.duplicate = True
            else:
                pending.error = _taken(event.id)
            pending.done.set()
            return pending
        in_flight = self._in_flight.get(event.id)
        if in_flight is not None:  # re-sent while the first copy is still being stored
            if in_flight.publisher == publisher:
                return in_flight
            pending = PendingCommit(event, retain, publisher)
            pending.error = _taken(event.id)
            pending.done.set()
            return pending
        while len(self._pending) >= MAX_PENDING_COMMITS:
            await self._pending_room.park()
            if self._closed:
                raise trio.ClosedResourceError("the bus is closed")
        pending = PendingCommit(event, retain, publisher)
        self._pending.append(pending)
        self._in_flight[event.id] = pending
        if self._pending_lot:
            self._pending_lot.unpark()
        return pending

    async def _route(self, event: Event, retain: bool = False) -> None:
        """Offer *event*, published on this node, to every matching sink, waiting where a
        ``block`` sink is full; and forward it to the attached backplane, if any."""
        route = self._routes.get(event.topic)
        if route is None:
            route = self._compute_route(event.topic)
        sinks = route.singles
        if route.groups:  # one member of each queue group
            sinks = [*sinks, *(self._pick(members, event) for members in route.groups)]
        remote = self._remote
        if remote is not None:
            remote.forward(
                event,
                served=[members[0].group for members in route.groups if members[0].group],
                routed=bool(sinks),
                retain=retain,
            )
        await self._deliver(event, sinks)

    async def route_local(self, event: Event) -> None:
        """Route *event* to this node's sinks (one member of each queue group) without
        forwarding it to the backplane, storing or retaining it.

        For events every node routes for itself: persisted events read from a shared
        store's tail (see :mod:`trio_realtime.bus._remote`).
        """
        route = self._routes.get(event.topic)
        if route is None:
            route = self._compute_route(event.topic)
        sinks = route.singles
        if route.groups:
            sinks = [*sinks, *(self._pick(members, event) for members in route.groups)]
        await self._deliver(event, sinks)

    async def route_remote(self, event: Event, *, group: str | None = None) -> int:
        """Deliver *event*, published on another node, to this node's sinks only: with
        *group* None to every matching sink that is in no queue group, else to one member
        of queue group *group* (if any matches). Never forwarded, stored or retained.

        This is how a backplane injects what it receives. Returns how many sinks took it.
        """
        if self._closed:
            return 0
        route = self._routes.get(event.topic)
        if route is None:
            route = self._compute_route(event.topic)
        if group is None:
            return await self._deliver(event, route.singles)
        for members in route.groups:
            if members[0].group == group:
                return await self._deliver(event, [self._pick(members, event)])
        return 0

    async def _deliver(self, event: Event, sinks: list[Sink]) -> int:
        """Offer *event* to *sinks*, waiting where a ``block`` sink is full; how many took it."""
        delivered = 0
        blocked: list[Sink] | None = None
        for sink in sinks:
            outcome = sink.offer(event)
            if outcome is ACCEPTED:
                delivered += 1
            elif outcome is FULL:
                if blocked is None:
                    blocked = []
                blocked.append(sink)
        self._delivered += delivered
        if blocked is None:
            self._unyielded += 1
            if self._unyielded >= PUBLISH_BATCH:
                self._unyielded = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
            return delivered
        self._unyielded = 0
        for sink in blocked:
            while True:
                await sink.wait_room()
                outcome = sink.offer(event)
                if outcome is not FULL:
                    self._delivered += outcome is ACCEPTED
                    delivered += outcome is ACCEPTED
                    break
        await trio.lowlevel.cancel_shielded_checkpoint()
        return delivered

    def _pick(self, members: list[Sink], event: Event) -> Sink:
        """The queue-group member that gets *event*: round robin, preferring room, and
        passing over a member that may not receive it (a remote one whose permissions deny
        the topic: see :meth:`Sink.accepts`)."""
        group = members[0].group
        assert group is not None
        start = self._rotation.get(group, 0)
        n = len(members)
        fallback: Sink | None = None
        for i in range(n):
            sink = members[(start + i) % n]
            if not sink.accepts(event.topic):
                continue
            if sink.has_room():
                self._rotation[group] = start + i + 1
                return sink
            if fallback is None:
                fallback = sink
        self._rotation[group] = start + 1
        return fallback if fallback is not None else members[start % n]

    def _forget_rotations(self) -> None:
        """Drop round-robin positions (bounded: group names come from remote clients too)."""
        if len(self._rotation) > 4096:
            self._rotation.clear()

    def _compute_route(self, topic: str) -> _Route:
        singles: list[Sink] = []
        groups: dict[str, list[Sink]] = {}
        for sink in self._index.match(topic):
            if sink.group is None:
                singles.append(sink)
            else:
                groups.setdefault(sink.group, []).append(sink)
        route = _Route(singles, list(groups.values()))
        if len(self._routes) >= 4096:
            self._routes.clear()
        self._routes[topic] = route
        return route

    def _has_route(self, topic: str) -> bool:
        route = self._routes.get(topic)
        if route is None:
            route = self._compute_route(topic)
        return bool(route.singles or route.groups)

    def _is_persisted(self, topic: str) -> bool:
        cached = self._persisted_cache.get(topic)
        if cached is None:
            if self._persist is None:
                cached = not is_transient(topic)
            else:
                cached = bool(self._persist.match(topic))
            if len(self._persisted_cache) >= 4096:
                self._persisted_cache.clear()
            self._persisted_cache[topic] = cached
        return cached

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last event this bus stored (or found stored when it opened)."""
        return self._last_seq

    def is_persisted(self, topic: str) -> bool:
        """Whether events published on *topic* are stored (False when there is no store)."""
        return self.store is not None and self._is_persisted(validate_topic(topic))

    async def _commit_loop(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Store pending persisted events in batches, then route them in ``seq`` order.

        A pipeline of two tasks: this one hands the next batch to the store while the other
        (:meth:`_route_stored`) routes the batch stored before it, so that the store's worker
        is not idle while events are routed. At most :data:`MAX_STORED_UNROUTED` stored
        batches wait to be routed: a slow subscriber with the ``block`` policy holds back
        the store, then the publishers (through :data:`MAX_PENDING_COMMITS`).

        With a :attr:`~trio_realtime.store.Store.shared` store, stored events are routed from
        the store's tail instead, every node's in seq order (see :mod:`._shared`).
        """
        store = self.store
        assert store is not None
        batch_size = min(MAX_COMMIT_BATCH, store.max_append or MAX_COMMIT_BATCH)
        if store.shared:  # every node's stored events are routed from the store's tail
            await commit_shared(
                self,
                store,
                max_batch=batch_size,
                max_unrouted=MAX_COMMIT_BATCH * MAX_STORED_UNROUTED,
                dedupe_window=DEDUPE_WINDOW,
                task_status=task_status,
            )
            return
        stored: deque[tuple[list[PendingCommit], list[Event | BaseException]]] = deque()
        storing: list[PendingCommit] = []
        stored_lot = trio.lowlevel.ParkingLot()
        routed_lot = trio.lowlevel.ParkingLot()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._route_stored, stored, stored_lot, routed_lot)
                task_status.started()
                while True:
                    if not self._pending:
                        await self._pending_lot.park()
                        continue
                    if len(stored) >= MAX_STORED_UNROUTED:
                        await routed_lot.park()
                        continue
                    storing = self._pending[:batch_size]
                    del self._pending[:batch_size]
                    self._pending_room.unpark_all()
                    outcomes = await self._append(store, storing)
                    stored.append((storing, outcomes))
                    storing = []
                    stored_lot.unpark()
        finally:
            # Cancelled (the bus is closing): nobody may wait forever.
            for batch in (storing, *(batch for batch, _ in stored)):
                for p in batch:
                    self._in_flight.pop(p.event.id, None)
                    if not p.done.is_set():
                        p.error = trio.ClosedResourceError(
                            "the bus closed before the event was stored and routed"
                        )
                        p.done.set()

    async def _route_stored(
        self,
        stored: deque[tuple[list[PendingCommit], list[Event | BaseException]]],
        stored_lot: trio.lowlevel.ParkingLot,
        routed_lot: trio.lowlevel.ParkingLot,
    ) -> None:
        """Route the stored batches in order and finish their commits (see _commit_loop)."""
        recent = self._recent_ids
        while True:
            if not stored:
                await stored_lot.park()
                continue
            batch, outcomes = stored[0]
            for p, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Event):
                    self._published += 1
                    recent[outcome.id] = (p.publisher, outcome.seq)
                    if len(recent) > DEDUPE_WINDOW:
                        del recent[next(iter(recent))]
                    if p.retain:
                        self._retained.set(outcome)
                    await self._route(outcome, p.retain)
                    if outcome.seq is not None and outcome.seq > self._last_seq:
                        self._last_seq = outcome.seq  # (routed: a new sink gets what follows)
                    p.result = outcome
                else:
                    p.error = outcome
                p.done.set()
            for p in batch:
                self._in_flight.pop(p.event.id, None)
            stored.popleft()
            routed_lot.unpark()

    async def _append(
        self, store: Store, batch: list[PendingCommit]
    ) -> list[Event | BaseException]:
        """Store *batch*; if the batch as a whole is refused, store its events one by one."""
        try:
            stored: list[Event | BaseException] = list(await store.append([p.event for p in batch]))
        except (ValueError, TypeError) as exc:
            if len(batch) == 1:
                logger.warning("event %s was not stored: %s", batch[0].event.id, exc)
                # The store refuses an event with ValueError only for its id (see Store.append),
                # or as too large (a Refused already).
                if isinstance(exc, ValueError) and not isinstance(exc, Refused):
                    return [DuplicateEventId(str(exc))]
                return [exc]
            # One bad event (such as an id stored long ago) must not fail its neighbours.
            return [(await self._append(store, [p]))[0] for p in batch]
        except Exception as exc:
            logger.exception("storing %d events failed", len(batch))
            return [exc] * len(batch)
        self._stored += len(stored)
        return stored

    # -- retained values ------------------------------------------------------------------

    @property
    def max_retained(self) -> int:
        """The most retained values this bus holds (see :func:`open_bus`)."""
        return self._retained.max_retained

    def clear_retained(self, topic: str) -> bool:
        """Forget the retained event of *topic*; return whether there was one.

        With a backplane attached, the other nodes forget it too.
        """
        topic = validate_topic(topic)
        if self._remote is not None:
            self._remote.clear_retained(topic)
        return self._retained.clear(topic)

    def set_remote_retained(self, event: Event | None, topic: str) -> None:
        """Make *event* (published on another node) the retained value of *topic*, or forget
        that topic's value when *event* is None. For a backplane: nothing is routed."""
        if event is None:
            self._retained.clear(topic)
        else:
            self._retained.set(event)

    def retained(self, pattern: str = ">") -> list[Event]:
        """The retained events whose topics match *pattern*, in the order they were retained.

        Found through an index: the cost grows with the events that match, not with the
        number of retained topics.
        """
        return self._retained.match(validate_pattern(pattern))

    # -- subscribing ----------------------------------------------------------------------

    def add_sink(self, sink: Sink, *, retained: bool = True) -> None:
        """Route matching events to *sink* from now on (with the retained ones first).

        This is the primitive under :meth:`subscribe`; a broker uses it for the remote
        subscriptions of its sessions. Remove the sink with :meth:`remove_sink`.
        """
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        self._index.add(sink.pattern, sink)
        self._routes.clear()
        if self._remote is not None:
            self._remote.interest_added(sink.pattern, sink.group)
        if retained and self._retained:
            for event in self.retained(sink.pattern):
                sink.offer(event, force=True)

    def remove_sink(self, sink: Sink) -> None:
        """Stop routing to *sink*; a no-op if it is not routed to."""
        sink = self._replays.pop(sink, sink)
        if self._index.remove(sink.pattern, sink):
            self._routes.clear()
            self._forget_rotations()
            self._dropped_by_gone += getattr(sink, "missed", 0)
            if self._remote is not None:
                self._remote.interest_removed(sink.pattern, sink.group)

    def attach_remote(self, remote: Remote) -> None:
        """Attach a backplane (see :mod:`trio_realtime.bus._remote`): it is told of every
        sink routed to now, and from now on of each sink added and removed and of each event
        published here.

        Raises:
            RuntimeError: if one is attached already.
        """
        if self._remote is not None:
            raise RuntimeError("a backplane is attached to this bus already")
        self._remote = remote
        for sink in self._index.match_all():
            remote.interest_added(sink.pattern, sink.group)

    def detach_remote(self, remote: Remote) -> None:
        """Detach *remote*, if it is the attached backplane: events stay on this node."""
        if self._remote is remote:
            self._remote = None

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

    async def add_sink_since(
        self,
        sink: Sink,
        since: int | datetime,
        *,
        on_done: Callable[[], object] | None = None,
        nursery: trio.Nursery | None = None,
    ) -> trio.CancelScope:
        """Replay stored events after *since* to *sink*, then route live events to it.

        Replay runs in a task in *nursery*, that of the sink's owner (by default the bus's),
        and is lossless whatever the sink's policy (it waits for room); the switch to live
        events has no gap and no duplicate. Cancel the returned scope to stop a replay early
        (then remove the sink with :meth:`remove_sink`).
        *on_done* is called once the replay task ends, for whatever reason (caught up,
        cancelled, failed), if this returned (if it raised, it is not called).

        Raises:
            StoreUnavailable: if the bus has no store.
        """
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        if self.store is None:
            raise StoreUnavailable(
                "subscribe(since=…) needs a bus with a store: open it with open_bus(store=…)"
            )
        owner = self._nursery if nursery is None else nursery
        scope: trio.CancelScope = await owner.start(self._replay, sink, since, on_done)
        return scope

    async def _replay(
        self,
        sub: Sink,
        since: int | datetime,
        on_done: Callable[[], object] | None,
        *,
        task_status: trio.TaskStatus[trio.CancelScope],
    ) -> None:
        """Feed *sub* the stored events after *since*, then switch it to live events.

        A :class:`ReplaySink` stands in the index for *sub* from the start (see
        :meth:`ReplaySink.replay`).
        """
        store = self.store
        assert store is not None
        stand_in = ReplaySink(sub)
        self._replays[sub] = stand_in
        self.add_sink(stand_in, retained=False)
        # From here on this task reports its end (before, add_sink_since raises instead).
        try:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                try:
                    await stand_in.replay(store, since, self.retained)
                except Exception as exc:
                    logger.exception("replaying %r from the store failed", sub.pattern)
                    sub.fail(exc)
            # Cancelled: the subscription's block exited; it is removed there.
        finally:
            if on_done is not None:
                on_done()

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
