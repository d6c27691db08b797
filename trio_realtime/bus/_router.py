"""The bus's routing core: its sinks, and how an event reaches them.

Everything that receives events is a *sink* in the router's :class:`PatternIndex`: a local
:class:`Subscription`, a broker session's remote subscription, an actor, the stand-in of a
``since`` replay. The route of a topic (the sinks in no queue group, and the members of each
group) is computed once and kept until a sink is added or removed; an event is offered to every
sink without a group and to one member of each group, under each sink's overflow policy. The
retained values are kept here (a new sink gets those that match first), and so are the hooks of
a cluster's backplane (see :mod:`trio_realtime.bus._remote`).

:class:`Router` is the base of :class:`~trio_realtime.Bus`: the bus stores persisted events
before they are routed (:mod:`trio_realtime.bus._commit`) and puts the
:class:`~trio_realtime.EventChannel` API on top (:mod:`trio_realtime.bus._bus`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .._errors import StoreUnavailable
from .._event import Event
from .._topics import PatternIndex, validate_pattern, validate_topic
from ._channel import ACCEPTED, FULL, Sink
from ._remote import Remote
from ._replay import ReplaySink
from ._retained import RetainedValues

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["Router"]

logger = logging.getLogger("trio_realtime.bus")

#: A publisher that never has to wait yields to the scheduler once per this many publishes.
PUBLISH_BATCH: Final = 64


@attrs.define
class _Route:
    singles: list[Sink]
    groups: list[list[Sink]]


class Router:
    """A bus's sinks and their routes, its retained values and the backplane's hooks (see
    the module's docstring). Made only as a :class:`~trio_realtime.Bus`."""

    def __init__(self, nursery: trio.Nursery, *, store: Store | None, max_retained: int) -> None:
        self._nursery = nursery
        self._retained = RetainedValues(max_retained)
        self.store: Final = store
        self._index: PatternIndex[Sink] = PatternIndex()
        self._routes: dict[str, _Route] = {}
        self._rotation: dict[str, int] = {}
        self._replays: dict[Sink, ReplaySink] = {}
        self._closed = False
        self._unyielded = 0
        self._delivered = 0
        self._dropped_by_gone = 0
        self._remote: Remote | None = None  # the cluster's backplane, when one is attached

    # -- routing --------------------------------------------------------------------------

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
