"""The retained values of a bus: the last retained event of each topic, capped in number."""

from __future__ import annotations

import itertools
from operator import itemgetter
from typing import Final

from .._event import Event
from .._topics import TopicTree

__all__ = ["DEFAULT_MAX_RETAINED", "RetainedValues"]

#: Retained values a bus holds by default; retaining one more evicts the oldest-updated.
DEFAULT_MAX_RETAINED: Final = 100_000

_order_key: Final = itemgetter(0)


class RetainedValues:
    """One retained event per topic, at most *max_retained*, found by pattern through an index.

    Retaining one more than *max_retained* evicts the value updated longest ago (counted in
    :attr:`evicted`). :meth:`match` costs what it finds, not the number of values held.
    """

    __slots__ = ("_by_age", "_order", "_tree", "evicted", "max_retained")

    def __init__(self, max_retained: int) -> None:
        if max_retained < 1:
            raise ValueError(f"max_retained must be at least 1, not {max_retained!r}")
        self.max_retained: Final = max_retained
        self.evicted = 0
        self._by_age: dict[str, None] = {}  # topics, updated longest ago first
        self._tree: TopicTree[tuple[int, Event]] = TopicTree()
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._by_age)

    def set(self, event: Event) -> None:
        """Make *event* its topic's retained value."""
        topic = event.topic
        by_age = self._by_age
        by_age.pop(topic, None)
        by_age[topic] = None
        self._tree.set(topic, (next(self._order), event))
        if len(by_age) > self.max_retained:
            oldest = next(iter(by_age))
            del by_age[oldest]
            self._tree.pop(oldest)
            self.evicted += 1

    def clear(self, topic: str) -> bool:
        """Forget the retained value of *topic*; whether there was one."""
        self._by_age.pop(topic, None)
        return self._tree.pop(topic) is not None

    def match(self, pattern: str) -> list[Event]:
        """The retained events whose topics match *pattern*, in the order they were retained."""
        found = self._tree.match(pattern)
        found.sort(key=_order_key)
        return [event for _, event in found]
