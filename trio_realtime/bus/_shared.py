"""Persisted events with a shared store: stored by any node, routed by each from the tail.

When several processes append to one store (a cluster's brokers on one JetStream stream,
:attr:`Store.shared <trio_realtime.store.Store.shared>`), a bus must deliver to its
subscribers every stored event, its own and the other nodes', in seq order: otherwise a
subscriber resuming by seq could skip an event another node stored in between. So the bus
routes stored events from one place, the store's :meth:`~trio_realtime.store.Store.tail`,
and only from there: its own appends are routed when the tail brings them back. Persisted
events never travel over the backplane (they are routed with :meth:`Bus.route_local
<trio_realtime.Bus.route_local>`, which does not forward).

Two tasks: the committer hands the pending persisted publishes to the store in batches (with
each event's *origin*: who published it, and whether it was retained) and notes the seq each
got; the router follows the tail, routes each event, and then finishes the publish it came
from, if it was this node's (so a publisher's acknowledgement still means stored and routed
here). At most ``max_unrouted`` stored events wait for the tail: a slow ``block`` subscriber
holds back the committer, then the publishers.

Deduplication per publisher holds across nodes: the tail gives each event's publisher, so
every node knows the recently stored ids, whoever stored them. An id the store refuses as
stored is looked up once the tail has caught up: the same publisher's event is a duplicate
(acknowledged with the original's seq), another's is refused.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from .._errors import DuplicateEventId, Refused, StoreError
from .._event import Event

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["DUPLICATE_WAIT", "commit_shared", "decode_origin", "encode_origin"]

logger = logging.getLogger("trio_realtime.bus")

#: Seconds the committer waits for the tail to bring an id the store refused as already
#: stored, to tell whose it is.
DUPLICATE_WAIT: Final = 5.0


class PendingCommit(Protocol):
    """A persisted publish on its way (the bus's ``PendingCommit``)."""

    event: Event
    publisher: str | None
    retain: bool
    done: trio.Event
    result: Event | None
    error: BaseException | None
    duplicate: bool


def encode_origin(publisher: str | None, retain: bool) -> str:
    """The origin a bus stores with an event: ``r`` or ``-`` (retained or not), then ``+``
    and the publisher if there is one."""
    flag = "r" if retain else "-"
    return flag if publisher is None else f"{flag}+{publisher}"


def decode_origin(origin: str | None) -> tuple[str | None, bool, bool]:
    """The publisher, whether retained, and whether *origin* is a bus's at all."""
    if not origin or origin[0] not in "r-" or (len(origin) > 1 and origin[1] != "+"):
        return None, False, False
    return (origin[2:] if len(origin) > 1 else None), origin[0] == "r", True


async def commit_shared(
    bus: Any,  # the Bus (its commit pipeline's state: a module of the bus's own)
    store: Store,
    *,
    max_batch: int,
    max_unrouted: int,
    dedupe_window: int,
    task_status: trio.TaskStatus[None],
) -> None:
    """Store the bus's pending persisted events and route every stored event from the tail
    (see the module docstring), until cancelled."""
    shared = _Shared(bus, store, max_batch, max_unrouted, dedupe_window)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shared.route_tail)
            task_status.started()
            await shared.commit()
    finally:
        shared.fail_all()


class _Shared:
    def __init__(
        self, bus: Any, store: Store, max_batch: int, max_unrouted: int, dedupe_window: int
    ) -> None:
        self.bus = bus
        self.store = store
        self.max_batch = max_batch
        self.max_unrouted = max_unrouted
        self.dedupe_window = dedupe_window
        # seq -> the publish stored under it (and the stored copy), until the tail routes it.
        self.awaiting: dict[int, tuple[PendingCommit, Event]] = {}
        self.storing: list[PendingCommit] = []
        self.routed = trio.lowlevel.ParkingLot()  # the tail moved on
        self.failure: BaseException | None = None  # why the tail ended, if it did

    # -- the committer --------------------------------------------------------------------

    async def commit(self) -> None:
        bus = self.bus
        while True:
            if not bus._pending:
                await bus._pending_lot.park()
                continue
            if len(self.awaiting) >= self.max_unrouted:
                await self.routed.park()
                continue
            batch = self.storing = bus._pending[: self.max_batch]
            del bus._pending[: self.max_batch]
            bus._pending_room.unpark_all()
            if self.failure is not None:
                outcomes: list[Event | BaseException] = [
                    StoreError(f"stored events can no longer be routed: {self.failure}")
                ] * len(batch)
            else:
                outcomes = await self.append(batch)
            for p, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Event):
                    self.stored(p, outcome)
                elif isinstance(outcome, DuplicateEventId):
                    await self.duplicate(p, outcome)
                else:
                    self.finish(p, error=outcome)
            self.storing = []

    async def append(self, batch: list[PendingCommit]) -> list[Event | BaseException]:
        """Store *batch*; if the batch as a whole is refused, its events one by one."""
        origins = [encode_origin(p.publisher, p.retain) for p in batch]
        try:
            stored = await self.store.append_from([p.event for p in batch], origins)
        except (ValueError, TypeError) as exc:
            if len(batch) > 1:  # one bad event must not fail its neighbours
                return [(await self.append([p]))[0] for p in batch]
            logger.warning("event %s was not stored: %s", batch[0].event.id, exc)
            if isinstance(exc, Refused | TypeError):
                return [exc]
            return [DuplicateEventId(str(exc))]  # (a store refuses a ValueError for an id)
        except StoreError as exc:  # (NATS away, say: the publishers are told, no traceback)
            logger.warning("storing %d events failed: %s", len(batch), exc)
            return [exc] * len(batch)
        except Exception as exc:
            logger.exception("storing %d events failed", len(batch))
            return [exc] * len(batch)
        self.bus._stored += len(stored)
        return list(stored)

    def stored(self, p: PendingCommit, event: Event) -> None:
        bus = self.bus
        bus._published += 1
        seq = event.seq
        assert seq is not None
        self.remember(event.id, p.publisher, seq)
        if p.retain and bus._remote is not None:
            # Every node running routes it from the tail; one that starts later learns the
            # value from the backplane's retained values (the tail starts at the end).
            bus._remote.share_retained(event)
        if seq <= bus._last_seq:  # the tail was first: routed already
            self.finish(p, result=event)
        else:
            self.awaiting[seq] = (p, event)

    async def duplicate(self, p: PendingCommit, refused: DuplicateEventId) -> None:
        """*p*'s id is stored already: a duplicate if its publisher stored it, else refused."""
        bus = self.bus
        with trio.move_on_after(DUPLICATE_WAIT):
            try:
                target = await self.store.last_seq()
            except Exception:  # noqa: BLE001 - then the refusal stands
                target = bus._last_seq
            while bus._last_seq < target and self.failure is None:
                await self.routed.park()
        recent = bus._recent_ids.get(p.event.id)
        if recent is not None and recent[0] == p.publisher and recent[1] is not None:
            p.duplicate = True
            self.finish(p, result=attrs.evolve(p.event, seq=recent[1]))
        else:
            self.finish(p, error=refused)

    def remember(self, event_id: str, publisher: str | None, seq: int) -> None:
        recent = self.bus._recent_ids
        if event_id not in recent:
            recent[event_id] = (publisher, seq)
            if len(recent) > self.dedupe_window:
                del recent[next(iter(recent))]

    def finish(
        self, p: PendingCommit, *, result: Event | None = None, error: BaseException | None = None
    ) -> None:
        self.bus._in_flight.pop(p.event.id, None)
        if not p.done.is_set():
            p.result = result
            p.error = error
            p.done.set()

    def fail_all(self) -> None:
        """The bus is closing: no publish may wait for ever."""
        waiting = [*self.storing, *(p for p, _ in self.awaiting.values())]
        self.storing = []
        self.awaiting.clear()
        for p in waiting:
            self.finish(
                p, error=trio.ClosedResourceError("the bus closed before the event was routed")
            )

    # -- the router -----------------------------------------------------------------------

    async def route_tail(self) -> None:
        bus = self.bus
        try:
            async with aclosing(self.store.tail(bus._last_seq)) as tail:
                async for items in tail:
                    for event, origin in items:
                        seq = event.seq
                        if seq is None or seq <= bus._last_seq:
                            continue
                        publisher, retain, ours = decode_origin(origin)
                        entry = self.awaiting.pop(seq, None)
                        if entry is not None:
                            event = entry[1]  # (the stored copy: its wire text is made)
                        elif ours:
                            self.remember(event.id, publisher, seq)
                        if retain:
                            bus._retained.set(event)
                        await bus.route_local(event)
                        bus._last_seq = seq
                        if entry is not None:
                            self.finish(entry[0], result=event)
                    self.routed.unpark_all()
        except trio.ClosedResourceError:
            return  # the store is closing (the bus first)
        except StoreError as exc:  # (the stream was deleted, say)
            logger.error("stored events are no longer routed: %s", exc)  # noqa: TRY400
            self.tail_failed(exc)
        except Exception as exc:
            logger.exception("the store's tail failed: stored events are no longer routed")
            self.tail_failed(exc)

    def tail_failed(self, exc: BaseException) -> None:
        self.failure = exc
        # What was stored is acknowledged (stored it is), though not routed here.
        for p, event in list(self.awaiting.values()):
            self.finish(p, result=event)
        self.awaiting.clear()
        self.routed.unpark_all()
