"""What the broker's sessions share with it: the limits they apply, the counters they add to,
and how their queued answers count against the limits."""

from __future__ import annotations

from collections import Counter
from typing import Final, Literal

import attrs

from ..protocol import Error, HistoryResult, ServerFrame, encoded_size
from ..protocol._batch import FRAME_OVERHEAD

__all__ = [
    "MAX_ANSWER_BACKLOG",
    "RATE_REFUSALS_BEFORE_CLOSE",
    "REFRESH_BURST",
    "REFRESH_RATE",
    "REFRESH_REFUSALS_BEFORE_CLOSE",
    "BrokerCounters",
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

    def count_error(self, code: str) -> None:
        self.errors[code] += 1

    def count_limit(self, name: str, n: int = 1) -> None:
        self.limits[name] += n


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
    return FRAME_OVERHEAD
