"""What the broker's sessions share with it: the limits they apply, the counters they add to,
how their queued answers count against the limits, and the one task that runs their
heartbeats."""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from typing import Any, Final, Literal, NoReturn, Protocol

import attrs
import trio

from ..protocol import Cancel, Error, HistoryResult, ServerFrame, encoded_size
from ..protocol._batch import FRAME_OVERHEAD

__all__ = [
    "CANCEL_BURST",
    "CANCEL_RATE",
    "MAX_ANSWER_BACKLOG",
    "MAX_OPEN_REQUESTS",
    "RATE_REFUSALS_BEFORE_CLOSE",
    "REFRESH_BURST",
    "REFRESH_RATE",
    "REFRESH_REFUSALS_BEFORE_CLOSE",
    "BrokerCounters",
    "HeartbeatTimers",
    "SessionLimits",
    "TokenBucket",
    "cost_of_answer",
    "size_of_answer",
]

#: Answers (weighted: a history result by its events) queued for a client before the broker
#: stops reading from it until it reads them (and, whatever their count, ``max_pending_bytes``
#: of them).
MAX_ANSWER_BACKLOG: Final = 10_000
#: Publishes refused in a row for their rate after which the connection is closed (1008):
#: a client that keeps going regardless is not listening.
RATE_REFUSALS_BEFORE_CLOSE: Final = 1000
#: A connection whose ``refresh`` tokens are refused this many times in a row is closed
#: (``auth_failed``, 1008): each costs the authenticator's work and a log line.
REFRESH_REFUSALS_BEFORE_CLOSE: Final = 10
#: ``refresh`` frames one connection may send: a burst of this many, ...
REFRESH_BURST: Final = 5
#: ... then this many a second (one every ten seconds); one more is refused ``rate_limited``
#: without the authenticator being asked.
REFRESH_RATE: Final = 0.1
#: ``cancel`` frames one connection may send: a burst of this many, ...
CANCEL_BURST: Final = 1000
#: ... then this many a second; one more is refused ``rate_limited`` (and not passed on: the
#: request's deadline still ends its handler).
CANCEL_RATE: Final = 100.0
#: Requests delivered to one connection that a ``cancel`` can still reach (until it replies
#: to them); past that, the oldest is forgotten (counted: ``open_requests``).
MAX_OPEN_REQUESTS: Final = 4096


@attrs.frozen(kw_only=True)
class SessionLimits:
    """The broker's settings a session applies (see :class:`~trio_realtime.Broker`)."""

    name: str
    heartbeat: float
    handshake_timeout: float
    shutdown_timeout: float
    max_message_size: int
    max_event_size: int
    max_pending_bytes: int
    max_subscriptions: int
    max_replays: int
    session_buffer: int
    slow_consumer: Literal["drop_oldest", "disconnect"]
    #: Publishes per second one connection may make (a token bucket), or None: no limit.
    publish_rate: float | None = None
    #: Publishes per second all the connections of one user may make together, or None.
    user_publish_rate: float | None = None
    #: The bucket's size: publishes in a burst, above the rate, before it applies.
    publish_burst: int = 100
    #: The URLs of the cluster's other nodes that ``welcome`` advertises (``nodes``).
    nodes: tuple[str, ...] = ()


class TokenBucket:
    """A token bucket on the Trio clock: *rate* tokens a second, at most *burst* of them.

    Callers pass the time (``trio.current_time()``), so that tests run it on a mock clock.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not rate > 0:
            raise ValueError(f"a publish rate must be positive, not {rate!r}")
        if burst < 1:
            raise ValueError(f"a publish burst must be at least 1, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def has_token(self, now: float) -> bool:
        """Whether a token is available at *now* (refilled for the time elapsed)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = min(float(self.burst), tokens)
        self.stamp = now
        return self.tokens >= 1.0

    def take(self) -> None:
        """Spend one token (after :meth:`has_token` said there is one)."""
        self.tokens -= 1.0


@attrs.define
class BrokerCounters:
    """The broker's counters that its sessions add to (its statistics read them)."""

    errors: Counter[str] = attrs.Factory(Counter)
    limits: Counter[str] = attrs.Factory(Counter)
    events_in: int = 0
    events_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def count_error(self, code: str) -> None:
        self.errors[code] += 1

    def count_limit(self, name: str, n: int = 1) -> None:
        self.limits[name] += n


class HeartbeatOwner(Protocol):
    """What :class:`HeartbeatTimers` runs: a session's heartbeat."""

    def heartbeat_due(self, now: float) -> float | None:
        """Act on the heartbeat at *now* (ping, or close); the next deadline, or None: done."""
        ...


class HeartbeatTimers:
    """The heartbeats of all the broker's sessions, run by one task (:meth:`serve`) rather
    than a task each: an idle connection costs a heap entry, not a task's coroutines and
    cancel scope (about 3 KB).

    A session registers with :meth:`add`, which polls it at once; at each deadline it
    returns, the task polls it again (``heartbeat_due(now)``: the session pings, or starts
    its close, and returns its next deadline), at the same times a task of its own would
    have. :meth:`remove` forgets it.
    """

    __slots__ = ("_dead", "_heap", "_order", "_wakeup")

    #: Removed entries tolerated in the heap (each until its deadline) before it is rebuilt
    #: without them, and never more than the live ones.
    _DEAD_SLACK: Final = 64

    def __init__(self) -> None:
        # Entries: [deadline, order (FIFO among equal deadlines), owner; None once removed]
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._dead = 0
        self._wakeup: trio.CancelScope | None = None

    def __len__(self) -> int:
        """Heartbeats registered."""
        return len(self._heap) - self._dead

    def add(self, owner: HeartbeatOwner, now: float) -> list[Any]:
        """Register *owner*'s heartbeat, polled at *now* first; the handle :meth:`remove`
        takes."""
        entry: list[Any] = [owner.heartbeat_due(now), next(self._order), owner]
        if entry[0] is None:
            entry[2] = None
            return entry
        heapq.heappush(self._heap, entry)
        wakeup = self._wakeup
        if wakeup is not None and entry[0] < wakeup.deadline:
            wakeup.deadline = entry[0]
        return entry

    def remove(self, entry: list[Any]) -> None:
        """Forget the heartbeat :meth:`add` registered (idempotent)."""
        if entry[2] is None:
            return
        entry[2] = None
        self._dead += 1
        heap = self._heap
        if self._dead > self._DEAD_SLACK and self._dead > len(heap) // 2:
            heap[:] = [entry for entry in heap if entry[2] is not None]
            heapq.heapify(heap)
            self._dead = 0

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Poll each heartbeat at its deadline, forever; a startable task."""
        heap = self._heap
        task_status.started()
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as wakeup:
                self._wakeup = wakeup
                await trio.sleep_forever()
            self._wakeup = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                entry = heap[0]
                owner = entry[2]
                if owner is None:
                    heapq.heappop(heap)
                    self._dead -= 1
                    continue
                deadline = owner.heartbeat_due(now)
                if deadline is None:  # closing: it is done with heartbeats
                    heapq.heappop(heap)
                    entry[2] = None
                    continue
                entry[0] = deadline
                entry[1] = next(self._order)
                heapq.heapreplace(heap, entry)


def cost_of_answer(frame: ServerFrame | str) -> int:
    """How much a queued answer counts against :data:`MAX_ANSWER_BACKLOG`."""
    return 1 + len(frame.events) if isinstance(frame, HistoryResult) else 1


def size_of_answer(frame: ServerFrame | str) -> int:
    """Bytes a queued answer counts against ``max_pending_bytes`` (at least its size)."""
    if isinstance(frame, str):
        return FRAME_OVERHEAD + len(frame) * 4
    if isinstance(frame, HistoryResult):
        return FRAME_OVERHEAD + sum(encoded_size(e) + 1 for e in frame.events)
    if isinstance(frame, Error):
        return FRAME_OVERHEAD + len(frame.message) * 4
    if isinstance(frame, Cancel):  # (a character takes 6 bytes at most, escaped)
        return FRAME_OVERHEAD + 6 * (len(frame.id) + len(frame.topic) + len(frame.reply_to))
    return FRAME_OVERHEAD
