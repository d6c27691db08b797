"""A NATS channel's subscriptions: what it subscribes on NATS, and how events reach them.

Each :class:`~trio_realtime.Subscription` of the channel belongs to a *route*: one NATS
subscription, to ``<prefix>.<pattern>`` (in the NATS queue group of its queue group, if it has
one), shared by the channel's subscriptions with the same pattern and group, and one task that
decodes what arrives once and offers it to each of them under its overflow policy (to one of
them, round robin, in a queue group: NATS gives the channel one copy per group). A
subscription with ``since`` has a route of its own, whose task first replays the stored events
from the store, then goes live, skipping what it replayed.

Over NATS a slow subscriber cannot make publishers wait. A full ``block`` subscription makes
its route's task wait, and what arrives meanwhile waits in the route's NATS buffer
(``max_pending`` messages); beyond that NATS messages are dropped, and counted in each
subscription's ``missed``. With a store, a route without a queue group reads back from the
store the stored events it lost (dropped, or sent while NATS was unreachable), by seq, and
skips those it has: it resumes without loss. Events that are not stored are lost then, and
only those dropped here are counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Final

import trio

from .._errors import InvalidTopic, StoreError
from .._event import Event
from .._nats import CLOSE_TIMEOUT, NatsConnection, NatsMessage, NatsSubscription
from .._nats_wire import decode, reply_topic
from .._topics import validate_topic
from ..bus._channel import ACCEPTED, DROPPED, FULL, Subscription
from ..cluster._options import queue_name  # (a cluster's brokers name queue groups so too)

if TYPE_CHECKING:
    from ..store import Store
    from ._retained import RetainedStream

__all__ = ["RECENT_SEQS", "REPLAY_PAGE", "Routes"]

logger = logging.getLogger("trio_realtime.natschannel")

#: Events read from the store per page, when replaying or catching up.
REPLAY_PAGE: Final = 500
#: The stored seqs a route remembers having delivered, to skip a copy that arrives again (and
#: to read back from, after a loss): events of several publishers may arrive a little out of
#: seq order; one that arrives after this many later ones of its route is taken for a copy.
RECENT_SEQS: Final = 4096
#: A route's task yields to the scheduler once per this many events (so that its subscribers
#: consume while it delivers a large batch).
DELIVER_BATCH: Final = 64


class _Route:
    """One NATS subscription of the channel and the subscriptions it feeds."""

    def __init__(self, pattern: str, group: str | None, *, private: bool) -> None:
        self.pattern = pattern
        self.group = group
        self.private = private
        self.members: list[Subscription] = []
        #: Members still taking their retained values: events for them wait here meanwhile.
        self.holding: dict[Subscription, list[Event]] = {}
        #: Per member, the ids of its retained values, whose live copies it skips.
        self.skip: dict[Subscription, set[str]] = {}
        self.nats: NatsSubscription | None = None
        self.ready = trio.Event()
        self.error: BaseException | None = None
        self.scope = trio.CancelScope()  # its task's
        self.resyncs: set[trio.CancelScope] = set()  # its catch-ups' after outages
        self.lock = trio.Lock()  # the route's task, or a catch-up, delivers
        self.rotation = 0
        self.dropped_seen = 0
        # Stored events (with a store, and no queue group): every seq up to floor is done
        # with; recent are those above it delivered.
        self.tracking = False
        self.floor = 0
        self.recent: deque[int] = deque()
        self.recent_set: set[int] = set()

    def cancel(self) -> None:
        """Stop the route's task and catch-ups."""
        self.scope.cancel()
        for scope in self.resyncs:
            scope.cancel()

    def note(self, seq: int) -> bool:
        """Record that *seq* is delivered; False if it was already (a copy: skip it)."""
        if seq <= self.floor or seq in self.recent_set:
            return False
        self.recent.append(seq)
        self.recent_set.add(seq)
        if len(self.recent) > RECENT_SEQS:
            oldest = self.recent.popleft()
            self.recent_set.discard(oldest)
            self.floor = max(self.floor, oldest)
        return True

    def resume_point(self) -> int:
        """The seq after which to read back what may have been lost."""
        return min(self.recent) - 1 if self.recent else self.floor


class Routes:
    """The routes of one channel (see the module's docstring)."""

    def __init__(
        self,
        connection: NatsConnection,
        nursery: trio.Nursery,
        prefix: str,
        *,
        store: Store | None,
        retained: RetainedStream | None,
        max_pending: int,
    ) -> None:
        self._connection = connection
        self._nursery = nursery
        self._prefix = prefix + "."
        self._store = store
        self._retained = retained
        self._max_pending = max_pending
        self._routes: dict[object, _Route] = {}
        self.closed = False
        #: Messages received on the routes' NATS subscriptions.
        self.received = 0
        #: Events offered to subscriptions and taken.
        self.delivered = 0
        #: NATS messages on the channel's subjects that were not valid events.
        self.bad_messages = 0
        #: Messages NATS delivered that the channel dropped, its routes being full.
        self.dropped = 0
        #: Stored events read back from the store after a loss.
        self.recovered = 0

    # -- what the channel sees ----------------------------------------------------------------

    @property
    def subscriptions(self) -> int:
        """Live subscriptions (the channel's ``serve`` blocks' included)."""
        return sum(len(route.members) for route in self._routes.values())

    @property
    def nats_subscriptions(self) -> int:
        """NATS subscriptions held."""
        return len(self._routes)

    def close(self) -> None:
        """End every subscription (each drains what it buffered) and every route's task."""
        self.closed = True
        for route in self._routes.values():
            route.cancel()
            for member in route.members:
                member.end()

    def disconnected(self, sub: Subscription) -> None:
        """*sub* was ended by its ``disconnect`` policy: it takes no more events."""
        for route in self._routes.values():
            if sub in route.members:
                # a new list: a delivery may be going through the old one
                route.members = [member for member in route.members if member is not sub]

    # -- joining and leaving ------------------------------------------------------------------

    @asynccontextmanager
    async def member(
        self, sub: Subscription, *, since: int | datetime | None, retained: bool
    ) -> AsyncIterator[None]:
        """Route to *sub* for the block (from the events after *since*, when given; with the
        retained values first, if *retained*)."""
        private = since is not None
        key: object = (sub.pattern, sub.group, id(sub)) if private else (sub.pattern, sub.group)
        route = self._routes.get(key)
        created = route is None
        if route is None:
            route = _Route(sub.pattern, sub.group, private=private)
            self._routes[key] = route
        try:
            if created:
                await self._open(route, since)
            else:
                await route.ready.wait()
                if route.error is not None:
                    raise route.error
            if retained and self._retained is not None and self._retained.available:
                route.holding[sub] = []
                route.members.append(sub)
                await self._give_retained(route, sub)
            else:
                route.members.append(sub)
            yield
        finally:
            route.holding.pop(sub, None)
            route.skip.pop(sub, None)
            if sub in route.members:
                route.members = [member for member in route.members if member is not sub]
            if not route.members and self._routes.get(key) is route:
                del self._routes[key]
                route.cancel()
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    await self._unsubscribe(route)

    async def _open(self, route: _Route, since: int | datetime | None) -> None:
        """Subscribe *route* on NATS (in place at the server when this returns) and start its
        task."""
        try:
            queue = queue_name(route.group) if route.group is not None else ""
            route.nats = await self._connection.subscribe(
                self._prefix + route.pattern, queue=queue, max_pending=self._max_pending
            )
            if self._connection.connected:
                await self._connection.flush()  # (else nats-py subscribes once reconnected)
            store = self._store
            if store is not None and route.group is None:
                route.tracking = True
                if isinstance(since, int):
                    route.floor = since
                elif since is None:
                    try:
                        route.floor = await store.last_seq()
                    except StoreError as exc:  # (NATS away): live only, nothing read back
                        route.tracking = False
                        logger.warning(
                            "subscription to %r will not read back what it loses: %s",
                            route.pattern,
                            exc,
                        )
        except BaseException as exc:
            route.error = exc
            route.ready.set()
            raise
        route.ready.set()
        self._nursery.start_soon(self._run, route, since)

    async def _unsubscribe(self, route: _Route) -> None:
        """End *route*'s NATS subscription, and wait until the server has (so that a request
        sent next finds no responder in it)."""
        if route.nats is None:
            return
        if self.closed:
            return  # the channel is closing, its connection with it
        try:
            await route.nats.unsubscribe()
            if self._connection.connected:
                await self._connection.flush()
        except (trio.ClosedResourceError, OSError, asyncio.CancelledError):
            pass  # the connection is closing: the subscription goes with it
        except Exception as exc:  # noqa: BLE001 - NATS did not confirm: nothing to do
            logger.debug("unsubscribing %r: %r", route.pattern, exc)

    async def _give_retained(self, route: _Route, sub: Subscription) -> None:
        """Offer *sub* the retained values of its pattern, then what came for it meanwhile
        (but their copies), and route to it from then on."""
        assert self._retained is not None
        values: list[Event] = []
        try:
            if self._connection.connected:  # (else JetStream cannot answer)
                values = await self._retained.values(route.pattern)
        except StoreError as exc:
            logger.warning("no retained values for %r: %s", route.pattern, exc)
        finally:
            held = route.holding.pop(sub, [])
        ids = {event.id for event in values}
        for event in values:
            sub.offer(event, force=True)
        for event in held:
            if event.id in ids:
                ids.discard(event.id)
            else:
                sub.offer(event, force=True)
        if ids:
            route.skip[sub] = ids

    # -- delivering ---------------------------------------------------------------------------

    async def _run(self, route: _Route, since: int | datetime | None) -> None:
        """Deliver what *route*'s NATS subscription receives, after the replay (with
        *since*), until the route is removed."""
        nats = route.nats
        assert nats is not None
        with route.scope:
            if since is not None:
                async with route.lock:
                    try:
                        await self._replay(route, since)
                    except Exception as exc:
                        logger.exception("replaying %r from the store failed", route.pattern)
                        for member in route.members:
                            member.fail(exc)
                        return
            while True:
                try:
                    batch = await nats.receive_batch()
                except trio.ClosedResourceError:
                    return
                async with route.lock:
                    await self._deliver_batch(route, batch)
                    if nats.dropped != route.dropped_seen:
                        await self._lost(route, nats.dropped - route.dropped_seen)

    async def _deliver_batch(self, route: _Route, batch: list[NatsMessage]) -> None:
        self.received += len(batch)
        skip = len(self._prefix)
        count = 0
        for message in batch:
            subject = message.subject
            try:
                topic = validate_topic(subject[skip:])
                event = decode(topic, message.headers, message.data, self._reply(message.reply))
            except (InvalidTopic, ValueError) as exc:
                self.bad_messages += 1
                logger.debug("a message on %r is not an event: %s", subject, exc)
                continue
            seq = event.seq
            if seq is not None and route.tracking and not route.note(seq):
                continue  # a copy of one delivered already
            await self._deliver(route, event)
            count += 1
            if count % DELIVER_BATCH == 0:
                await trio.lowlevel.checkpoint()

    def _reply(self, reply: str) -> str | None:
        return reply_topic(self._prefix, reply) if reply else None

    async def _deliver(self, route: _Route, event: Event) -> None:
        """Offer *event* to the route's members (one of them, in a queue group), waiting
        where a ``block`` one is full."""
        members = route.members
        if not members:
            return
        if route.group is not None:
            members = [self._pick(route)]
        blocked: list[Subscription] | None = None
        for member in members:
            if route.holding and member in route.holding:
                route.holding[member].append(event)
                continue
            if route.skip:
                ids = route.skip.get(member)
                if ids is not None and event.id in ids:
                    ids.discard(event.id)
                    if not ids:
                        del route.skip[member]
                    continue
            outcome = member.offer(event)
            if outcome is ACCEPTED:
                self.delivered += 1
            elif outcome is FULL:
                if blocked is None:
                    blocked = []
                blocked.append(member)
        if blocked is not None:
            for member in blocked:
                while True:
                    await member.wait_room()
                    outcome = member.offer(event)
                    if outcome is not FULL:
                        self.delivered += outcome is ACCEPTED
                        break

    def _pick(self, route: _Route) -> Subscription:
        """The member of a queue group's route that gets the next event: round robin,
        preferring one with room."""
        members = route.members
        n = len(members)
        start = route.rotation
        for i in range(n):
            member = members[(start + i) % n]
            if member.has_room():
                route.rotation = start + i + 1
                return member
        route.rotation = start + 1
        return members[start % n]

    # -- the store: replay, and reading back what was lost -----------------------------------

    async def _replay(self, route: _Route, since: int | datetime) -> None:
        """Give the route's one member the stored events after *since*, losslessly."""
        store = self._store
        assert store is not None
        after: int | None = since if isinstance(since, int) else None
        when = since if isinstance(since, datetime) else None
        while True:
            if after is None:
                page = await store.read(route.pattern, since=when, limit=REPLAY_PAGE)
            else:
                page = await store.read(route.pattern, after=after, limit=REPLAY_PAGE)
            for event in page:
                assert event.seq is not None
                route.note(event.seq)
                await self._give(route, event)
            if len(page) < REPLAY_PAGE:
                return
            after = page[-1].seq

    async def _give(self, route: _Route, event: Event) -> None:
        """Offer *event* to each member, waiting for room whatever its policy."""
        for member in list(route.members):
            while not member.has_room() and not member.ended:
                await member.wait_room()
            if member.offer(event) is not DROPPED:
                self.delivered += 1

    async def catch_up(self, route: _Route) -> int:
        """Read back from the store the stored events of *route* it may have lost; give
        those it had not delivered. How many it gave."""
        store = self._store
        if store is None or not route.tracking or not route.members:
            return 0
        given = 0
        after = route.resume_point()
        while True:
            page = await store.read(route.pattern, after=after, limit=REPLAY_PAGE)
            for event in page:
                assert event.seq is not None
                if route.note(event.seq):
                    await self._deliver(route, event)
                    given += 1
            if len(page) < REPLAY_PAGE:
                break
            after = page[-1].seq or after
        self.recovered += given
        return given

    async def _lost(self, route: _Route, n: int) -> None:
        """NATS messages for *route* were dropped (its buffer was full): read back the stored
        ones, count the others as missed."""
        assert route.nats is not None
        route.dropped_seen = route.nats.dropped
        self.dropped += n
        recovered = 0
        if route.tracking:
            try:
                recovered = await self.catch_up(route)
            except Exception as exc:  # noqa: BLE001 - the store failed: count them all
                logger.warning("reading back lost events of %r failed: %r", route.pattern, exc)
        missed = max(0, n - recovered)
        if missed:
            members = route.members if route.group is None else route.members[:1]
            for member in members:
                member.add_missed(missed)

    async def resync(self) -> None:
        """NATS is back after an outage: read back what each route may have lost."""
        for route in list(self._routes.values()):
            if route.tracking and route.ready.is_set() and route.error is None:
                self._nursery.start_soon(self._resync_route, route)

    async def _resync_route(self, route: _Route) -> None:
        if route.scope.cancel_called:
            return
        with trio.CancelScope() as scope:
            route.resyncs.add(scope)
            async with route.lock:
                try:
                    await self.catch_up(route)
                except Exception as exc:  # noqa: BLE001 - the store failed: log, go on
                    logger.warning("reading back events of %r failed: %r", route.pattern, exc)
        route.resyncs.discard(scope)
