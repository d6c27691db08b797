"""Messages too large for the client: finding, skipping and catching up on them.

A message larger than the client's max_message_size cannot be read: the transport refuses
it and closes the connection with 1009, and what it held is lost. A broker never sends one
larger than its own limit, so this happens only to a client whose limit is below the
broker's. Lost once is one thing; lost on every reconnect is another: a subscription that
resumes from the store is replayed the same stored events, batched the same way, and every
new connection would close on them. So after such a close the client first reads what each
resuming subscription would be replayed itself, with history reads on a side connection,
in pages small enough to receive (halved while too large). A single event too large to
receive is located (its seq found by bisection, see locate_oversized) and skipped, and
counted as missed. Then it resubscribes after what it read. An event that was not stored is
not replayed: it is lost, and counted only in the client's statistics.
"""

from __future__ import annotations

import logging
import ssl
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Final

import trio

from .._errors import (
    ConnectionClosed,
    RemoteProtocolError,
)
from .._transport_client import open_transport
from ..bus._channel import FULL
from ..protocol import (
    Connection,
    Error,
    FrameError,
    History,
    HistoryResult,
    Ping,
    Pong,
)
from ._link import handshake, refused_as_too_big
from ._state import (
    Pending,
    RemoteSub,
    error_from_frame,
)

if TYPE_CHECKING:
    from .._transport import WebSocketTransport
    from ..bus._channel import Subscription

#: A client's side of one connection: subscription ids stand for a RemoteSub, refs for a
#: Pending operation.
ClientConn = Connection[RemoteSub, Pending[Any]]

__all__ = [
    "MAX_CATCH_UP_PAGE",
    "MAX_CATCH_UP_READS",
    "MAX_PROBES",
    "ProbeFailed",
    "Prober",
    "catch_up_oversized",
    "locate_oversized",
    "skip_oversized",
]

logger = logging.getLogger("trio_realtime.client")


#: Most events one history read of a catch-up asks for. The first asks for one; each answer
#: received doubles it, short of a size found too large; an answer too large halves it.
MAX_CATCH_UP_PAGE: Final = 256
#: History reads one catch-up makes at most; resubscribing replays the rest.
MAX_CATCH_UP_READS: Final = 64
#: History reads one search for an event too large makes at most.
MAX_PROBES: Final = 128


class ProbeFailed(Exception):
    """A history read on a side connection got no answer (the catch-up is abandoned)."""


class Prober:
    """Side connections to a broker for history reads whose answer may be too large to
    receive: such an answer closes the connection (1009), and the next read opens another
    one. It connects as the client does (same URL, token, name and limits).

    Use it from one task, and :meth:`aclose` it in a ``finally``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        name: str | None,
        max_message_size: int,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.url: Final = url
        self._token = token
        self._name = name
        self.max_message_size: Final = max_message_size
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._stack: AsyncExitStack | None = None
        self._transport: WebSocketTransport | None = None
        self._conn: ClientConn | None = None
        #: History reads made, and connections opened, so far.
        self.reads = 0
        self.connections = 0

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        self._transport = self._conn = None
        if stack is not None:
            await stack.aclose()

    async def _connect(self) -> tuple[WebSocketTransport, ClientConn]:
        stack = AsyncExitStack()
        try:
            transport = await stack.enter_async_context(
                open_transport(
                    self.url,
                    max_message_size=self.max_message_size,
                    connect_timeout=self._timeout,
                    ssl_context=self._ssl_context,
                )
            )
            conn, _ = await handshake(
                transport, url=self.url, token=self._token, name=self._name, timeout=self._timeout
            )
        except BaseException:
            await stack.aclose()
            raise
        self.connections += 1
        self._stack, self._transport, self._conn = stack, transport, conn
        return transport, conn

    async def read(self, pattern: str, since: int, limit: int) -> HistoryResult | None:
        """The broker's answer to ``history(pattern, since=since, limit=limit)``, or None if
        it was too large to receive.

        Raises:
            ProbeFailed: if the broker could not be asked, or refused the read.
        """
        self.reads += 1
        try:
            # Connect outside the timeout's scope: the connection outlives it.
            if self._transport is None or self._conn is None:
                transport, conn = await self._connect()
            else:
                transport, conn = self._transport, self._conn
            with trio.fail_after(self._timeout):
                ref = conn.next_id()
                frame = History(ref=ref, pattern=pattern, since=since, limit=limit)
                await transport.send(conn.send(frame))
                while True:
                    for item in conn.frames():
                        if type(item) is HistoryResult and item.ref == ref:
                            return item
                        if type(item) is Error and item.ref == ref:
                            raise ProbeFailed(str(error_from_frame(item, pattern)))
                        if type(item) is Ping:
                            await transport.send(conn.send(Pong()))
                        if type(item) is FrameError and item.fatal:
                            raise item.as_exception()
                    conn.receive_text(await transport.receive())
        except ConnectionClosed as exc:
            await self.aclose()
            if refused_as_too_big(exc, self.max_message_size):
                return None
            raise ProbeFailed(str(exc)) from exc
        except (RemoteProtocolError, trio.TooSlowError) as exc:
            await self.aclose()
            raise ProbeFailed(str(exc) or f"no answer within {self._timeout:g} s") from exc

    async def fits(self, pattern: str, since: int) -> bool:
        """Whether the first stored event matching *pattern* after *since* (or the empty
        answer, if there is none) can be received."""
        return await self.read(pattern, since, 1) is not None


async def locate_oversized(prober: Prober, pattern: str, after: int) -> int:
    """The seq of the stored event too large to receive that is the first to match *pattern*
    after *after* (the caller found that it is).

    ``fits(x)`` is false for every *x* from *after* up to that seq, less one, and true at
    that seq unless the next matching event is too large as well. The search doubles its step
    from *after* until an answer fits, then halves the interval to an *x* that fits where
    ``x - 1`` does not: *x* is the seq of an event too large. When the events too large that
    follow *after* come one after the other in the pattern's order (one, typically), *x* is
    the last of them, and skipping up to *x* skips exactly those. (If another one follows a
    few seqs later, with events that can be received between them, the search may settle on
    it; the caller's warning names the seqs skipped.) Each answer too large costs a
    connection.

    Raises:
        ProbeFailed: if a read got no answer, or the search took more than
            :data:`MAX_PROBES` reads.
    """
    budget = prober.reads + MAX_PROBES
    low = after
    step = 1
    while not await prober.fits(pattern, after + step):
        low = after + step
        step *= 2
        if prober.reads >= budget:
            raise ProbeFailed(f"no end found to the events too large after seq {after}")
    high = after + step
    while high - low > 1:
        if prober.reads >= budget:
            raise ProbeFailed(f"no end found to the events too large after seq {after}")
        middle = (low + high) // 2
        if await prober.fits(pattern, middle):
            high = middle
        else:
            low = middle
    return high


async def catch_up_oversized(prober: Prober, rs: RemoteSub, sub: Subscription) -> tuple[int, int]:
    """Read from the store what resubscribing *rs* would replay, in pages small enough to
    receive, and hand it to *sub*, skipping (and counting as missed) the events too large on
    their own; *rs* then resumes after the last. ``(delivered, skipped)``.

    Raises:
        ProbeFailed: if a read got no answer (what was read so far was handed over).
    """
    after = rs.replay_point()
    if after is None:
        return 0, 0
    delivered = skipped = 0
    limit = 1
    too_large = MAX_CATCH_UP_PAGE + 1  # the fewest events asked for that were too large
    for _ in range(MAX_CATCH_UP_READS):
        result = await prober.read(rs.pattern, after, limit)
        if result is None:
            if limit > 1:
                too_large = limit
                limit //= 2
                continue
            seq = await locate_oversized(prober, rs.pattern, after)
            logger.warning(
                "skipping the stored events matching %r after seq %d up to seq %d, which is "
                "larger than this client's max_message_size (%d bytes); counted as missed",
                rs.pattern,
                after,
                seq,
                prober.max_message_size,
            )
            sub.add_missed(1)
            skipped += 1
            rs.advance_to(seq)
            after = seq
            too_large = MAX_CATCH_UP_PAGE + 1  # that one was why
            continue
        for event in result.events:
            while sub.offer(event) is FULL:
                await sub.wait_room()
            if event.seq is not None:
                rs.advance_to(event.seq)
                after = event.seq
            delivered += 1
        if result.more and result.resume is not None:
            rs.advance_to(result.resume)  # (events left out: the connection may not read them)
            after = result.resume
        if not result.more and (not result.events or len(result.events) < limit):
            break  # caught up
        if not result.events and result.resume is None:  # pragma: no cover - a broker's bug
            break
        if limit * 2 < too_large:
            limit *= 2
    return delivered, skipped


async def skip_oversized(subs: list[RemoteSub], prober: Prober) -> tuple[int, int]:
    """Report a message too large to receive; then catch up each subscription of *subs* that
    resubscribing replays from a seq (see :func:`catch_up_oversized`), so that the next
    connection is not sent what the last one could not receive. ``(delivered, skipped)``.

    The client's inbox is left out: replies are not stored. If a read gets no answer, the
    catch-up stops there (the next connection resumes after what it read).
    """
    logger.warning(
        "a message from the broker at %s was larger than this client's max_message_size "
        "(%d bytes): it was refused (closing the connection with 1009) and the events in it "
        "are lost; pass open_client(max_message_size=...) at least as large as the broker's "
        "max_message_size to receive them",
        prober.url,
        prober.max_message_size,
    )
    delivered = skipped = 0
    for rs in subs:
        if rs.sub is None:
            continue
        try:
            got, lost = await catch_up_oversized(prober, rs, rs.sub)
        except ProbeFailed as exc:
            logger.info("could not read the stored events of %r: %s", rs.pattern, exc)
            break
        delivered += got
        skipped += lost
    return delivered, skipped
