"""Reading stored events for a ``history`` request, in answers of one message each.

A connection whose permissions deny some of the topics a pattern matches reads the store
filtered (:func:`read_history_filtered`): a bounded number of pages per answer, and a
``resume`` seq past the events left out, so that the next answer does not read them again.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Final

from ..protocol import encoded_size

if TYPE_CHECKING:
    from .._event import Event
    from ..bus._bus import Bus
    from ..security import SubscribeDecision

__all__ = [
    "MAX_HISTORY",
    "MAX_HISTORY_PAGES",
    "MIN_HISTORY_PAGE",
    "read_history",
    "read_history_filtered",
]

#: Most events one ``history`` request returns.
MAX_HISTORY: Final = 10_000
#: Most pages of stored events one ``history`` answer reads when the connection may not read
#: some of the topics its pattern matches (they are left out); past it, the answer says where
#: to resume (``history_result.resume``).
MAX_HISTORY_PAGES: Final = 8
#: The fewest stored events such a page asks for (fewer would mean many small reads).
MIN_HISTORY_PAGE: Final = 100


async def read_history(
    bus: Bus, pattern: str, since: int | datetime | None, limit: int, budget: int
) -> tuple[list[Event], bool]:
    """The stored events of *pattern* that fit in *budget* bytes, and whether more match."""
    events = await bus.history(pattern, since=since, limit=limit, max_bytes=budget)
    # The store's sizes are estimates: keep what really fits.
    size = 0
    fit = 0
    for event in events:
        size += encoded_size(event) + 1
        if fit and size > budget:
            break
        fit += 1
    more = fit < len(events)
    events = events[:fit]
    if not more and 0 < fit < limit:  # did the store stop for want of room?
        last = events[-1].seq
        more = bool(await bus.history(pattern, since=last, limit=1))
    return events, more


async def read_history_filtered(
    bus: Bus,
    pattern: str,
    since: int | datetime | None,
    limit: int,
    budget: int,
    decision: SubscribeDecision,
) -> tuple[list[Event], bool, int | None]:
    """As :func:`read_history`, leaving out the events *decision* does not deliver:
    ``(events, more, resume)``, *resume* being the seq to ask again after when it is not
    the last event's (stored events were read and left out after it).

    Reads at most :data:`MAX_HISTORY_PAGES` pages of the store, each of at least
    :data:`MIN_HISTORY_PAGE` events (and at most *budget* bytes).
    """
    kept: list[Event] = []
    if limit <= 0:
        return kept, False, None
    size = 0
    cursor = since
    scanned: int | None = None  # the seq of the last stored event read
    for _ in range(MAX_HISTORY_PAGES):
        wanted = max(limit - len(kept), MIN_HISTORY_PAGE)
        page = await bus.history(pattern, since=cursor, limit=wanted, max_bytes=budget)
        if not page:
            return kept, False, None
        for event in page:
            if decision.delivers(event.topic):
                event_size = encoded_size(event) + 1
                if kept and size + event_size > budget:
                    return kept, True, None  # (resume after the last one kept)
                kept.append(event)
                size += event_size
                if len(kept) >= limit:
                    return kept, False, None
            scanned = event.seq
        cursor = scanned
    if scanned is None:  # pragma: no cover - stored events have a seq
        return kept, False, None
    resume = None if kept and kept[-1].seq == scanned else scanned
    return kept, True, resume
