"""The heartbeat policy both sides follow, sans I/O: when to ping, when the peer is gone."""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["Heartbeat", "HeartbeatAction"]


class HeartbeatAction(enum.Enum):
    """What :meth:`Heartbeat.poll` tells its owner to do now."""

    #: Nothing: poll again at the deadline it gave.
    WAIT = "wait"
    #: Send a ``ping`` (the peer has been silent for an interval).
    PING = "ping"
    #: The peer is gone: a ``ping`` got no answer for a whole interval (it was silent for two).
    DEAD = "dead"


WAIT: Final = HeartbeatAction.WAIT
PING: Final = HeartbeatAction.PING
DEAD: Final = HeartbeatAction.DEAD


class Heartbeat:
    """One side's heartbeat: ping a peer silent for *interval* seconds; give it up when that
    ping gets no answer (nothing at all received) within another *interval*.

    It reads no clock: the owner passes the time (any monotonic clock) to each call::

        heartbeat = Heartbeat(30.0, now)
        ...                                   # on every message received:
        heartbeat.received(now)
        ...                                   # in the heartbeat task:
        action, deadline = heartbeat.poll(now)
        if action is HeartbeatAction.PING: send ping
        elif action is HeartbeatAction.DEAD: close the connection
        else: sleep until deadline

    The broker closes a client it gave up with close code 4002 (``CLOSE_HEARTBEAT``); a
    client gives its broker up (after two silent intervals) and reconnects. An owner that is
    itself the cause of the silence (the broker busy acting on the peer's frames) calls
    :meth:`received` too: the silence is not the peer's.
    """

    __slots__ = ("_pinged_at", "interval", "last_received")

    def __init__(self, interval: float, now: float) -> None:
        if not interval > 0:
            raise ValueError(f"the heartbeat interval must be positive, not {interval!r}")
        self.interval: Final = interval
        #: When the peer was last heard from.
        self.last_received = now
        self._pinged_at: float | None = None

    def __repr__(self) -> str:
        return f"<Heartbeat interval={self.interval:g} last_received={self.last_received:g}>"

    def received(self, now: float) -> None:
        """A message arrived from the peer (any message: a sign of life)."""
        if now > self.last_received:
            self.last_received = now

    @property
    def ping_outstanding(self) -> bool:
        """A ping was sent and nothing was received since."""
        return self._pinged_at is not None and self.last_received < self._pinged_at

    def poll(self, now: float) -> tuple[HeartbeatAction, float]:
        """What to do at *now*, and when to poll next (a deadline on the same clock).

        ``PING`` records the ping as sent at *now*: send it.
        """
        interval = self.interval
        pinged_at = self._pinged_at
        if pinged_at is not None and self.last_received < pinged_at:
            deadline = pinged_at + interval  # every ping gets a whole interval
            if now >= deadline:
                return DEAD, now
            return WAIT, deadline
        deadline = self.last_received + interval
        if now >= deadline:
            self._pinged_at = now
            return PING, now + interval
        return WAIT, deadline
