"""The stand-in sink of a subscription that replays stored events before going live."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Final

import outcome
import trio

from .._event import Event
from .._util import open_service_nursery
from ..protocol import encoded_size
from ._channel import ACCEPTED, DROPPED, Offered, Sink

if TYPE_CHECKING:
    from ..store import Store

__all__ = [
    "MAX_HELD_BYTES_DURING_REPLAY",
    "MAX_HELD_DURING_REPLAY",
    "REPLAY_PAGE",
    "REPLAY_PAGE_BYTES",
    "ReplaySink",
]

#: Events read from the store per page while replaying a subscription's history.
REPLAY_PAGE: Final = 1000
#: Bytes of events (as the store estimates them) read per page while replaying.
REPLAY_PAGE_BYTES: Final = 1024 * 1024
#: Live events a replaying subscription holds back before it re-reads the store instead.
MAX_HELD_DURING_REPLAY: Final = 10000
#: Bytes of live events (encoded) a replaying subscription holds back, at most.
MAX_HELD_BYTES_DURING_REPLAY: Final = 8 * 1024 * 1024


class ReplaySink:
    """Stands in the index for a subscription replaying from the store (see ``_replay``)."""

    def __init__(self, sub: Sink) -> None:
        self.sub = sub
        self.pattern = sub.pattern
        self.group = sub.group
        self.held: list[Event] = []
        self.held_bytes = 0
        self.overflowed = False
        self.live = False
        self.after: int | None = None

    @property
    def missed(self) -> int:
        return int(getattr(self.sub, "missed", 0))

    async def replay(
        self, store: Store, since: int | datetime, retained: Callable[[str], list[Event]]
    ) -> None:
        """Offer the subscription the stored events after *since*, then go live.

        While the store is read, live events are held back; once caught up, live events are
        forwarded, dropping the stored ones the replay already delivered (an event is stored
        before it is routed, so the replay can read events the committer has not routed
        yet). *retained* gives the retained events of a pattern: those the store does not
        have are offered when going live.

        The next page is read while this one is offered (so a replay holds two pages at
        most): the store's worker reads while the subscriber's connection sends.
        """
        async with open_service_nursery() as nursery:  # (a read under way is cancelled)
            await self._replay(nursery, store, since, retained)

    async def _replay(
        self,
        nursery: trio.Nursery,
        store: Store,
        since: int | datetime,
        retained: Callable[[str], list[Event]],
    ) -> None:
        sub = self.sub
        after = since if isinstance(since, int) else None
        when = since if isinstance(since, datetime) else None
        page_read = self._read(nursery, store, after, when)
        while True:
            page = (await page_read()).unwrap()
            if page:  # (a page may be short for its bytes: only an empty one is the end)
                after = page[-1].seq
                when = None
                page_read = self._read(nursery, store, after, None)
                for event in page:
                    # Replay is lossless whatever the policy: wait for room.
                    while not sub.has_room():
                        await sub.wait_room()
                        if sub.ended:
                            return
                    sub.offer(event)
                continue
            # Caught up with the store as the read began: go live with no await between this
            # check and the switch (unless events were let go since the read began, which
            # reset() marks: read again).
            if self.overflowed:
                page_read = self._read(nursery, store, after, when)
                continue
            for event in retained(sub.pattern):
                if event.seq is None:
                    sub.offer(event, force=True)
            self.go_live(after)
            return

    def _read(
        self, nursery: trio.Nursery, store: Store, after: int | None, when: datetime | None
    ) -> Callable[[], Awaitable[outcome.Outcome[list[Event]]]]:
        """Start reading the page after *after* (or from *when*); the returned function
        waits for it."""
        if self.overflowed:
            # The stored events let go are in the store: this read gets them. From now on
            # live events are held again (only those let go meanwhile are lost).
            self.reset()
        done = trio.Event()
        result: list[outcome.Outcome[list[Event]]] = []

        async def read() -> None:
            result.append(
                await outcome.acapture(
                    store.read,
                    self.pattern,
                    after=after,
                    since=when,
                    limit=REPLAY_PAGE,
                    max_bytes=REPLAY_PAGE_BYTES,
                )
            )
            done.set()

        async def wait() -> outcome.Outcome[list[Event]]:
            await done.wait()
            return result[0]

        nursery.start_soon(read)
        return wait

    def reset(self) -> None:
        self.held.clear()
        self.held_bytes = 0
        self.overflowed = False

    def go_live(self, after: int | None) -> None:
        """Deliver what was held back (past *after*) and forward live events from now on."""
        self.after = after
        self.live = True
        for event in self.held:
            if event.seq is None or after is None or event.seq > after:
                self.sub.offer(event, force=True)
        self.held.clear()
        self.held_bytes = 0

    def offer(self, event: Event, *, force: bool = False) -> Offered:
        if self.sub.ended:
            return DROPPED
        if self.live:
            seq = event.seq
            if seq is not None and self.after is not None and seq <= self.after:
                return DROPPED  # the replay delivered it already
            return self.sub.offer(event, force=force)
        if not self.overflowed and len(self.held) < MAX_HELD_DURING_REPLAY:
            size = encoded_size(event)
            if self.held_bytes + size <= MAX_HELD_BYTES_DURING_REPLAY:
                self.held.append(event)
                self.held_bytes += size
                return ACCEPTED
        if not self.overflowed:
            # Too much held back: let it go and re-read the store, which has the stored
            # events; those of unstored topics are lost, and counted.
            self.overflowed = True
            self._lose([held for held in self.held if held.seq is None])
            self.held.clear()
            self.held_bytes = 0
        if event.seq is None:
            self._lose([event])
            return DROPPED
        return ACCEPTED  # the store has it: the next read delivers it

    def _lose(self, events: list[Event]) -> None:
        if events:
            self.sub.add_missed(len(events))

    async def wait_room(self) -> None:
        if self.live:
            await self.sub.wait_room()
        else:
            await trio.lowlevel.checkpoint()

    def has_room(self) -> bool:
        return self.sub.has_room() if self.live else True

    def accepts(self, topic: str) -> bool:
        return self.sub.accepts(topic)

    def end(self) -> None:
        self.sub.end()

    def fail(self, exc: BaseException) -> None:
        self.sub.fail(exc)

    def add_missed(self, n: int) -> None:
        self.sub.add_missed(n)

    @property
    def ended(self) -> bool:
        return self.sub.ended
