"""The bus's commit pipeline: persisted publishes stored in batches, then routed in seq order.

A publish on a persisted topic is queued (:meth:`Committer._submit`) as a
:class:`PendingCommit`; the committer hands the queue to the store in batches (group commit),
and each stored batch is routed in ``seq`` order while the next one is being stored. An event
re-sent by its publisher while, or soon after, it was stored is not stored twice: the bus
remembers the latest stored ids (with their publisher and seq). With a
:attr:`~trio_realtime.store.Store.shared` store the pipeline is :mod:`._shared`'s instead.

:class:`Committer` is the base of :class:`~trio_realtime.Bus`, on the routing core
(:class:`~trio_realtime.bus._router.Router`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .._errors import DuplicateEventId, Refused
from .._event import Event
from .._topics import PatternIndex, is_transient, validate_topic
from ._router import Router
from ._shared import commit_shared

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["Committer", "PendingCommit"]

logger = logging.getLogger("trio_realtime.bus")

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


class Committer(Router):
    """A bus's routing core with its commit pipeline (see the module's docstring). Made only
    as a :class:`~trio_realtime.Bus`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        store: Store | None,
        persist: Sequence[str] | None,
        max_retained: int,
    ) -> None:
        super().__init__(nursery, store=store, max_retained=max_retained)
        self._persist: PatternIndex[str] | None = None
        if persist is not None:
            self._persist = PatternIndex()
            for pattern in persist:
                self._persist.add(pattern, pattern)
        self._persisted_cache: dict[str, bool] = {}
        self._pending: list[PendingCommit] = []
        # id -> (publisher, seq) of the latest stored events.
        self._recent_ids: dict[str, tuple[str | None, int | None]] = {}
        self._last_seq = 0
        self._in_flight: dict[str, PendingCommit] = {}
        self._pending_lot = trio.lowlevel.ParkingLot()
        self._pending_room = trio.lowlevel.ParkingLot()
        self._published = 0
        self._stored = 0

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
