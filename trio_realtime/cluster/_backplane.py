"""The backplane: a bus's events shared with the buses of other nodes through core NATS.

:func:`open_backplane` attaches a :class:`Backplane` to a bus (as
:mod:`trio_realtime.bus._remote` describes) over one NATS connection opened with
``no_echo``, so that a node never receives its own events back:

* **Out.** Each event published on the node (not ``$…``, which is the node's own) is
  published to ``<prefix>.<topic>``, with the header :data:`~._options.SERVED_HEADER` naming
  the queue groups a local member took it for. A request that nothing on the node takes goes
  with the NATS reply subject ``<prefix>.<reply_to>``: if nothing in the cluster takes it
  either, the NATS server answers there with a no-responders status, which the node turns
  into a reply with the headers ``error`` and ``error_code: no_responders``, so that the
  requester raises :exc:`~trio_realtime.NoResponders` as on one node.
* **Interest.** The node subscribes on NATS to what its sinks listen to: one subscription per
  pattern (refcounted), and one per pattern and queue group with that group as the NATS
  queue, so that one member in the cluster gets each event.
* **In.** An event that matches several of the node's patterns arrives once per NATS
  subscription: it is delivered through the subscription of the *first* (oldest) of the
  node's patterns that matches its topic only, to every local sink without a group; through a
  queue subscription, to one local member of that group, unless the publishing node's
  members served it. Events from elsewhere are never forwarded again, stored or retained.
* **Cancels.** The cancel of a request (:func:`~trio_realtime.bus._requests.cancel_event`)
  goes to ``<prefix>c.<topic>``, to which every node subscribes (``<prefix>c.>``, no queue
  group: the member of a queue group that took the request may be on any node); each node
  hands it to its own ``serve`` blocks and sessions, which act on it only if they hold that
  request. Cancels are few and small, so every node getting each one costs little.
* **Retained values** go through a stream (:mod:`._retained`).
* **Outages.** Local delivery never waits for NATS. While it is unreachable, events queue
  (up to ``max_pending``; beyond, they are counted as ``not_shared``) and go out once it is
  back; the node publishes ``$sys.cluster.down`` and ``$sys.cluster.up``; nats-py reconnects
  and subscribes again by itself.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson
import trio

from .._errors import InvalidTopic, NoResponders
from .._event import REPLY_ERROR_HEADER, Event
from .._nats import NatsConnection, NatsMessage, NatsSubscription, open_nats
from .._topics import PatternIndex, is_reserved, validate_topic
from .._util import NoPublicConstructor, open_service_nursery
from ..bus._requests import REPLY_CODE_HEADER, read_cancel
from ..protocol._codec import encode_event, structure_event
from ._options import SERVED_HEADER, ClusterOptions, queue_name
from ._retained import RetainedShare

if TYPE_CHECKING:
    from ..bus._bus import Bus

__all__ = ["MAX_INBOUND", "Backplane", "ClusterStatistics", "open_backplane"]

logger = logging.getLogger("trio_realtime.cluster")

#: The header of a status message from the NATS server, and the status of "no responders".
_STATUS_HEADER: Final = "Status"
_NO_RESPONDERS_STATUS: Final = "503"
#: The header in which the server's no-responders status names the request's subject.
_SUBJECT_HEADER: Final = "Nats-Subject"
#: Topics whose first matching interest the backplane remembers, before it forgets them all.
_MAX_CACHED: Final = 4096
#: Messages one NATS subscription may have received and not delivered yet; more are dropped
#: (counted: ``dropped``).
MAX_INBOUND: Final = 65_536


@attrs.frozen(kw_only=True)
class ClusterStatistics:
    """A snapshot of a node's backplane (the ``cluster`` of the broker's statistics).

    Attributes:
        node: The node's name.
        connected: Whether NATS is reachable now (the broker is not ready while it is not).
        server: The NATS server connected to, or None.
        disconnects: Times the connection to NATS was lost.
        reconnects: Times it was made again after a loss.
        events_out: Events published here and queued for NATS (shared).
        not_shared: Events published here that could not be queued for NATS (the queue was
            full, during an outage, or the node was closing): the other nodes never get them.
        pending: Messages queued for NATS and not yet handed to it.
        pending_seconds: How long the oldest of them has waited (the lag out).
        batches: Crossings to NATS that carried publishes (about one per burst, not per
            event).
        events_in: Events from other nodes delivered here.
        skipped: Copies of events not delivered again: one that several of the node's
            subscriptions received, or one that a queue group took on its publishing node.
        bad_messages: Messages on the cluster's subjects that were not valid events (dropped).
        dropped: Messages from NATS dropped because the node took them in too slowly.
        inbound_pending: Messages received from NATS and not delivered yet (the lag in).
        interest: NATS subscriptions held for the node's patterns (and queue groups).
        no_responders: Requests sent on that no node had a responder for.
        cancels_out: Cancels of requests sent to the other nodes.
        cancels_not_sent: Cancels that could not be queued for NATS (the queue was full).
        cancels_in: Cancels of requests received from the other nodes.
        retained_shared: Whether retained values are shared (False without JetStream, or
            with sharing turned off; None while not known yet).
        retained_loaded: Whether the values the stream held when it was last loaded are
            applied.
        retained_updates: Retained values applied from other nodes.
        retained_pending: Retained values of this node's waiting for JetStream to
            acknowledge them.
    """

    node: str
    connected: bool
    server: str | None
    disconnects: int
    reconnects: int
    events_out: int
    not_shared: int
    pending: int
    pending_seconds: float
    batches: int
    events_in: int
    skipped: int
    bad_messages: int
    dropped: int
    inbound_pending: int
    interest: int
    no_responders: int
    cancels_out: int
    cancels_not_sent: int
    cancels_in: int
    retained_shared: bool | None
    retained_loaded: bool
    retained_updates: int
    retained_pending: int


class _Interest:
    """One NATS subscription for a pattern (and queue group) that sinks of the node have."""

    __slots__ = ("count", "group", "order", "pattern", "queue", "scope", "subscription")

    def __init__(
        self, pattern: str, group: str | None, order: int, subscription: NatsSubscription
    ) -> None:
        self.pattern = pattern
        self.group = group
        self.queue = queue_name(group) if group is not None else ""
        self.order = order
        self.count = 1
        self.subscription = subscription
        self.scope = trio.CancelScope()


class Backplane(metaclass=NoPublicConstructor):
    """A bus's link to the other nodes of its cluster. Get one from :func:`open_backplane`
    (a broker with ``cluster=`` opens its own: :attr:`Broker.backplane
    <trio_realtime.Broker.backplane>`)."""

    def __init__(
        self, bus: Bus, connection: NatsConnection, options: ClusterOptions, nursery: trio.Nursery
    ) -> None:
        self._bus = bus
        self._connection = connection
        self._nursery = nursery
        self.options: Final = options
        #: The node's name.
        self.node: Final = options.node
        self._prefix = options.prefix + "."
        self._prefix_length = len(self._prefix)
        self._cancel_prefix = options.prefix + "c."
        self._interests: dict[tuple[str, str | None], _Interest] = {}
        self._index: PatternIndex[_Interest] = PatternIndex()
        self._first: dict[tuple[str, str | None], _Interest | None] = {}
        self._order = itertools.count()
        self._changed_event = trio.Event()
        self._closed = False
        self._events_out = 0
        self._not_shared = 0
        self._events_in = 0
        self._skipped = 0
        self._bad = 0
        self._no_responders = 0
        self._cancels_out = 0
        self._cancels_not_sent = 0
        self._cancels_in = 0
        self._retained = (
            RetainedShare(bus, connection, options, self._decode, _encode, self._changed)
            if options.retained
            else None
        )

    # -- what the bus tells it (the Remote protocol) --------------------------------------

    @property
    def reachable(self) -> bool:
        """Whether an event forwarded now is sent on: NATS is reachable, and the queue has
        room."""
        connection = self._connection
        return connection.connected and connection.pending < self.options.max_pending

    def interest_added(self, pattern: str, group: str | None) -> None:
        """Subscribe on NATS to *pattern* (in *group*), unless the node does already."""
        if pattern.startswith("$") or self._closed:
            return  # (``$`` topics are each node's own)
        key = (pattern, group)
        interest = self._interests.get(key)
        if interest is not None:
            interest.count += 1
            return
        try:
            subscription = self._connection.subscribe_nowait(
                self._prefix + pattern,
                queue=queue_name(group) if group is not None else "",
                max_pending=MAX_INBOUND,
            )
        except trio.ClosedResourceError:
            return  # closing
        interest = _Interest(pattern, group, next(self._order), subscription)
        self._interests[key] = interest
        self._index.add(pattern, interest)
        self._first.clear()
        self._nursery.start_soon(self._receive, interest)

    def interest_removed(self, pattern: str, group: str | None) -> None:
        """Unsubscribe on NATS from *pattern* (in *group*) once no sink of the node has it."""
        interest = self._interests.get((pattern, group))
        if interest is None:
            return
        interest.count -= 1
        if interest.count:
            return
        del self._interests[pattern, group]
        self._index.remove(pattern, interest)
        self._first.clear()
        interest.scope.cancel()
        interest.subscription.unsubscribe_nowait()

    def forward(self, event: Event, *, served: Sequence[str], routed: bool, retain: bool) -> None:
        """Publish *event* to the other nodes (see the module's docstring)."""
        topic = event.topic
        if topic[0] == "$":
            return
        if self._closed or self._connection.pending >= self.options.max_pending:
            self._not_shared += 1  # (not encoded only to be refused)
            return
        data = _encode(event)
        headers = {SERVED_HEADER: ",".join(map(queue_name, served))} if served else None
        reply = self._prefix + event.reply_to if event.reply_to is not None and not routed else ""
        try:
            self._connection.publish_nowait(
                self._prefix + topic, data, headers=headers, reply=reply
            )
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._not_shared += 1
        else:
            self._events_out += 1
        if retain and self._retained is not None:
            self._retained.publish(event)

    def forward_cancel(self, cancel: Event) -> None:
        """Send the cancel of a request to the other nodes (see the module's docstring)."""
        if self._closed:
            return
        try:
            self._connection.publish_nowait(self._cancel_prefix + cancel.topic, _encode(cancel))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._cancels_not_sent += 1  # (the request's deadline still ends the work)
        else:
            self._cancels_out += 1

    def share_retained(self, event: Event) -> None:
        """Keep *event* (persisted, and routed on every node from the store) as its topic's
        retained value for the nodes that start later."""
        if self._retained is not None:
            self._retained.publish(event)

    def clear_retained(self, topic: str) -> None:
        """Tell the other nodes that the retained value of *topic* is cleared."""
        if self._retained is not None:
            self._retained.clear(topic)

    # -- receiving -------------------------------------------------------------------------

    async def _receive(self, interest: _Interest) -> None:
        """Deliver what one NATS subscription receives, until it is removed."""
        subscription = interest.subscription
        with interest.scope:
            while True:
                try:
                    batch = await subscription.receive_batch()
                except trio.ClosedResourceError:
                    if subscription.error is not None:
                        logger.warning(
                            "NATS refused the subscription to %r: %s",
                            subscription.subject,
                            subscription.error,
                        )
                    return
                for message in batch:
                    await self._inbound(interest, message)
                self._changed()

    async def _receive_cancels(self, subscription: NatsSubscription) -> None:
        """Hand the cancels other nodes send on to this node's handlers of the requests."""
        length = len(self._cancel_prefix)
        while True:
            try:
                batch = await subscription.receive_batch()
            except trio.ClosedResourceError:
                return
            for message in batch:
                cancel = self._decode(message.subject[length:], message.data)
                if cancel is None or read_cancel(cancel) is None:
                    self._bad += 1
                    continue
                self._cancels_in += 1
                self._bus.route_remote_cancel(cancel)
            self._changed()

    def _first_interest(self, topic: str, group: str | None) -> _Interest | None:
        """The oldest of the node's interests (in *group*) whose pattern matches *topic*."""
        key = (topic, group)
        try:
            return self._first[key]
        except KeyError:
            pass
        first = None
        for interest in self._index.match(topic):
            if interest.group == group and (first is None or interest.order < first.order):
                first = interest
        if len(self._first) >= _MAX_CACHED:
            self._first.clear()
        self._first[key] = first
        return first

    async def _inbound(self, interest: _Interest, message: NatsMessage) -> None:
        topic = message.subject[self._prefix_length :]
        if self._first_interest(topic, interest.group) is not interest:
            self._skipped += 1  # another of the node's subscriptions delivers it
            return
        headers = message.headers
        if headers:
            if headers.get(_STATUS_HEADER) is not None:
                if interest.group is None and headers[_STATUS_HEADER] == _NO_RESPONDERS_STATUS:
                    await self._answer_no_responders(topic, headers)
                return
            if interest.group is not None:
                served = headers.get(SERVED_HEADER)
                if served and interest.queue in served.split(","):
                    self._skipped += 1  # the publishing node's member took it
                    return
        event = self._decode(topic, message.data)
        if event is None:
            self._bad += 1
            return
        await self._bus.route_remote(event, group=interest.group)
        self._events_in += 1

    def _decode(self, topic: str, data: bytes) -> Event | None:
        """The event another node published on *topic*, or None if *data* is not one."""
        try:
            event = structure_event(orjson.loads(data))
            validate_topic(topic)
            if event.reply_to is not None:
                validate_topic(event.reply_to)
        except (orjson.JSONDecodeError, ValueError, TypeError, InvalidTopic):
            return None
        if event.topic != topic or is_reserved(topic):
            return None
        if event.reply_to is not None and is_reserved(event.reply_to):
            return None
        return event

    async def _answer_no_responders(self, reply_to: str, headers: Any) -> None:
        """The NATS server says nothing took a request this node sent on: answer it."""
        try:
            validate_topic(reply_to)
        except InvalidTopic:
            self._bad += 1
            return
        subject = headers.get(_SUBJECT_HEADER, "")
        topic = subject[self._prefix_length :] if subject.startswith(self._prefix) else subject
        self._no_responders += 1
        reply = Event(
            topic=reply_to,
            source=self.node,
            headers={
                REPLY_ERROR_HEADER: str(NoResponders(topic or reply_to)),
                REPLY_CODE_HEADER: NoResponders.CODE,
            },
        )
        await self._bus.route_remote(reply)

    # -- the connection --------------------------------------------------------------------

    def _changed(self) -> None:
        self._changed_event.set()
        self._changed_event = trio.Event()

    async def _watch(self) -> None:
        """Tell the node (log, ``$sys.cluster.up`` and ``.down``) when NATS comes and goes."""
        connection = self._connection
        up = False
        while True:
            now = await connection.wait_changed()
            self._changed()
            if now == up:
                continue
            up = now
            stats = self.statistics()
            data = {
                "node": self.node,
                "server": stats.server,
                "servers": self.options.shown_servers(),
                "not_shared": stats.not_shared,
                "pending": stats.pending,
            }
            if up:
                logger.info(
                    "cluster backplane up: node %r connected to %s", self.node, stats.server
                )
            else:
                logger.warning(
                    "cluster backplane down: node %r lost NATS (%s); delivering locally, "
                    "queueing up to %d events to share",
                    self.node,
                    self.options.shown_servers(),
                    self.options.max_pending,
                )
            try:
                await self._bus.publish("$sys.cluster.up" if up else "$sys.cluster.down", data)
            except trio.ClosedResourceError:
                return

    # -- what users see --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether NATS is reachable now."""
        return self._connection.connected

    async def wait_changed(self) -> None:
        """Wait until something changes: NATS comes or goes, events or retained values
        arrive (then look at :meth:`statistics`)."""
        await self._changed_event.wait()

    async def wait_synced(self) -> None:
        """Wait until the node's subscriptions made so far are in place at NATS, and what it
        queued so far was handed over (waits for NATS to be reachable).

        Raises:
            ConnectionClosed: if NATS did not confirm.
        """
        await self._connection.flush()

    def statistics(self) -> ClusterStatistics:
        """A snapshot of the backplane's :class:`ClusterStatistics`."""
        nats = self._connection.statistics()
        retained = self._retained
        return ClusterStatistics(
            node=self.node,
            connected=nats.connected,
            server=nats.server,
            disconnects=nats.disconnects,
            reconnects=nats.reconnects,
            events_out=self._events_out,
            not_shared=self._not_shared + (retained.not_shared if retained else 0),
            pending=nats.pending,
            pending_seconds=nats.pending_seconds,
            batches=nats.publish_batches,
            events_in=self._events_in,
            skipped=self._skipped,
            bad_messages=self._bad + (retained.bad if retained else 0),
            dropped=nats.dropped,
            inbound_pending=sum(i.subscription.buffered for i in self._interests.values()),
            interest=len(self._interests),
            no_responders=self._no_responders,
            cancels_out=self._cancels_out,
            cancels_not_sent=self._cancels_not_sent,
            cancels_in=self._cancels_in,
            retained_shared=retained.available if retained is not None else False,
            retained_loaded=retained.loaded if retained is not None else False,
            retained_updates=retained.updates if retained is not None else 0,
            retained_pending=retained.pending if retained is not None else 0,
        )

    def _close(self) -> None:
        self._closed = True
        for interest in self._interests.values():
            interest.scope.cancel()


def _encode(event: Event) -> bytes:
    """*event* as another node decodes it (without the seq of this node's own store)."""
    if event.seq is not None:
        event = attrs.evolve(event, seq=None)
    return encode_event(event).encode()


@asynccontextmanager
async def open_backplane(bus: Bus, options: ClusterOptions) -> AsyncIterator[Backplane]:
    """Share *bus*'s events with the other nodes of a cluster for the ``async with`` block.

    Returns at once: NATS is reached in the background (and again after each outage), and
    until then events published here are delivered here and queued for the others (see
    :class:`ClusterOptions` ``max_pending``). :attr:`Backplane.connected` says whether it is
    reachable now.

    Raises:
        RuntimeError: if the ``nats`` extra is not installed, or *bus* has a backplane.
    """
    async with (
        open_nats(
            list(options.servers),
            name=f"trio-realtime {options.node}",
            no_echo=True,
            connect_timeout=options.connect_timeout,
            reconnect_wait=options.reconnect_wait,
            max_pending=options.max_pending,
            tls=options.tls,
            user=options.user,
            password=options.password,
            token=options.token,
        ) as connection,
        open_service_nursery() as nursery,
    ):
        backplane = Backplane._create(bus, connection, options, nursery)
        nursery.start_soon(backplane._watch)
        cancels = connection.subscribe_nowait(
            backplane._cancel_prefix + ">", max_pending=MAX_INBOUND
        )
        nursery.start_soon(backplane._receive_cancels, cancels)
        if backplane._retained is not None:
            await nursery.start(backplane._retained.run)
        bus.attach_remote(backplane)
        try:
            yield backplane
        finally:
            bus.detach_remote(backplane)
            backplane._close()
