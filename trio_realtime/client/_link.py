"""The remote client's connections: the tasks that run one.

A :class:`~trio_realtime.client._client.Client` outlives its connections. What must survive a
reconnect lives in the client (see ``_state``): its subscriptions, the outbox, the
operations waiting for an answer. Each connection is a :class:`Link`: a WebSocket transport,
a sans-IO :class:`~trio_realtime.protocol.Connection` (all encoding, decoding and protocol
bookkeeping, and the one record of this connection's subscription ids and refs, with the
:class:`RemoteSub` or :class:`Pending` each stands for), and its tasks in one nursery
(reader, writer, heartbeat, and a watcher per ``block`` subscription that fell behind). The
writer is the only task that sends on the socket: everything else queues in the outbox. When
a link ends, the client requeues what it had in flight and, when allowed, opens the next one.

A link knows its client only through a :class:`LinkContext`.

A full ``block`` subscription never stalls the reader (see :meth:`Link.deliver`): it takes
events past its buffer, up to as many again; beyond that it is *behind*: stored events come
back from the store once the consumer made room (a catch-up), others are counted as missed.

A link that ended on a message too large for the client is followed by history reads on side
connections (a :class:`Prober`), so that the next link is not sent the same stored events
again: see the last section.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import trio

from .._errors import (
    ConnectionClosed,
    HandshakeError,
    RemoteProtocolError,
    TooLarge,
)
from .._event import Event
from .._transport import open_transport
from ..bus._channel import FULL
from ..bus._requests import ReplyInbox
from ..protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_TOO_BIG,
    Ack,
    ClientFrame,
    Connection,
    Error,
    EventFrame,
    FrameError,
    Gap,
    Heartbeat,
    HeartbeatAction,
    Hello,
    History,
    HistoryResult,
    Ping,
    Pong,
    Publish,
    Role,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    close_code_for,
    encode,
)
from ._state import (
    Outbox,
    OutboxItem,
    Pending,
    RemoteSub,
    RequestPending,
    error_from_frame,
)

if TYPE_CHECKING:
    from .._transport import WebSocketTransport
    from ..bus._channel import Subscription

#: A client's side of one connection: subscription ids stand for a RemoteSub, refs for a
#: Pending operation.
ClientConn = Connection[RemoteSub, Pending[Any]]

__all__ = [
    "LOCAL_TOO_BIG_REASON",
    "MAX_CATCH_UP_PAGE",
    "MAX_CATCH_UP_READS",
    "MAX_PROBES",
    "WRITE_BATCH",
    "ClientConn",
    "ClientCounters",
    "Link",
    "LinkContext",
    "ProbeFailed",
    "Prober",
    "catch_up_oversized",
    "handshake",
    "locate_oversized",
    "refused_as_too_big",
    "skip_oversized",
    "utf8_size",
]

logger = logging.getLogger("trio_realtime.client")

#: Most frames the writer puts in one message.
WRITE_BATCH: Final = 512

T = TypeVar("T")


def utf8_size(text: str) -> int:
    """The size of *text* on the wire, in bytes (its UTF-8 encoding)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------------
# What a link knows of its client


@attrs.define
class ClientCounters:
    """The client's counters that its links add to (its statistics read them)."""

    #: Events received from the broker.
    received: int = 0
    #: Errors the broker reported that no operation waited for, and bad input from it.
    errors: int = 0
    #: Catch-ups from the store (after a ``gap``, or for a ``block`` subscription behind).
    catch_ups: int = 0


@attrs.frozen(kw_only=True)
class LinkContext:
    """What a :class:`Link` gets from its client.

    Attributes:
        url: The broker's URL (for messages).
        max_message_size: The largest message the client sends or receives, in bytes.
        outbox: What waits to be sent; the link's writer drains it, and every other path
            (pongs, pings, unsubscribes) queues there.
        replies: The client's reply inbox, which hands each reply to its request.
        counters: Where the link counts.
        refused: Called when the broker refused (or ended) a subscription, with the error.
    """

    url: str
    max_message_size: int
    outbox: Outbox
    replies: ReplyInbox[RequestPending]
    counters: ClientCounters
    refused: Callable[[RemoteSub, Exception], None]


# ---------------------------------------------------------------------------------------------
# One connection


async def handshake(
    transport: WebSocketTransport,
    *,
    url: str,
    token: str | None,
    name: str | None,
    timeout: float,
    instance: str | None = None,
) -> tuple[ClientConn, Welcome]:
    """Say ``hello`` and wait for ``welcome``: the protocol connection and the welcome.

    *instance* is the client's id across its reconnects (``hello.instance``), by which the
    broker recognises a publish sent again after a reconnect.

    Raises:
        HandshakeError: if the broker refused (``code`` is the close code its error implies:
            1008 for ``auth_failed``), broke the protocol, closed the connection, or did not
            answer within *timeout* seconds. The message names *url* and the reason.
    """
    conn: ClientConn = Connection(Role.CLIENT)
    answer: Welcome | Error | None = None
    with trio.move_on_after(timeout):
        try:
            await transport.send(conn.send(Hello(token=token, client=name, instance=instance)))
            while answer is None:
                conn.receive_text(await transport.receive())
                for item in conn.frames():
                    if type(item) is FrameError and item.fatal:
                        raise HandshakeError(
                            f"{url} broke the protocol during the handshake: {item}",
                            code=close_code_for(item.code),
                        )
                    if type(item) is Welcome or type(item) is Error:
                        answer = item
                        break
        except RemoteProtocolError as exc:  # a binary message that is not UTF-8
            raise HandshakeError(
                f"{url} broke the protocol during the handshake: {exc}",
                code=close_code_for(exc.code),
            ) from exc
        except ConnectionClosed as exc:
            raise HandshakeError(
                f"{url} closed the connection during the handshake: {exc}",
                code=exc.code,
                reason=exc.reason,
            ) from exc
    if type(answer) is Welcome:
        return conn, answer
    if type(answer) is Error:
        raise HandshakeError(
            f"{url} refused the handshake ({answer.code}): {answer.message}",
            code=close_code_for(answer.code),
            reason=answer.message,
        )
    raise HandshakeError(f"{url} did not answer 'hello' within {timeout:g} s")


class Link:
    """One connection of the client, from ``welcome`` to its end.

    ``await link.run()`` runs the reader, the writer and the heartbeat until the connection
    fails, and returns why (a :exc:`ConnectionClosed`). Cancelling it ends the connection too.
    """

    def __init__(
        self,
        context: LinkContext,
        transport: WebSocketTransport,
        conn: ClientConn,
        welcome: Welcome,
    ) -> None:
        self.context = context
        self.transport = transport
        #: The protocol connection: the one record of this connection's subscription ids (each
        #: standing for a :class:`RemoteSub`) and of the refs awaiting an answer (each for a
        #: :class:`Pending` operation).
        self.conn = conn
        self.heartbeat = welcome.heartbeat
        #: ``unsubscribe`` frames waiting for ``unsubscribed``, by subscription id.
        self.unsubscribing: dict[int, trio.Event] = {}
        #: The writer is sending (so the outbox being empty does not mean all was sent).
        self.writing = False
        self.heartbeat_policy = (
            Heartbeat(self.heartbeat, trio.current_time()) if self.heartbeat > 0 else None
        )
        self.last_error: Error | None = None
        self.reason: ConnectionClosed | None = None
        #: The close code to close the WebSocket with (None: it is closed already).
        self.close_code: int | None = None
        #: The transport refused a message from the broker as too large (which may not be
        #: the reason the link ended: a send racing the close can fail first).
        self.oversized = False
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<Link {self.transport.remote} subscriptions={self.conn.attached_count}>"

    @property
    def in_flight(self) -> int:
        """Sent operations waiting for their answer."""
        return len(self.conn.pending_items())

    # -- bookkeeping the client asks for ------------------------------------------------------

    def subscribe(self, rs: RemoteSub) -> Subscribe:
        """Give *rs* an id on this connection; the ``subscribe`` frame to send."""
        sub_id = self.conn.next_id()
        rs.id = sub_id
        rs.behind = False
        self.conn.attach(sub_id, rs)
        return rs.frame(sub_id)

    def unsubscribe(self, rs: RemoteSub) -> trio.Event | None:
        """Queue ``unsubscribe`` for *rs*; an event set on ``unsubscribed`` (None: not here)."""
        sub_id = rs.id
        rs.id = None
        if sub_id is None or self.conn.detach(sub_id) is None:
            return None
        done = trio.Event()
        self.unsubscribing[sub_id] = done
        self.context.outbox.append(Unsubscribe(id=sub_id))
        return done

    def catch_up(self, rs: RemoteSub) -> None:
        """Events of *rs*, a persisted subscription, were not delivered (the broker dropped
        them, or the subscription fell behind): fetch them from the store.

        The subscription is re-created under a new id, resuming after the last seq it was
        handed; whatever still arrives under the old id is ignored, so nothing is seen twice.
        """
        old = rs.id
        if old is None or self.conn.detach(old) is None:
            return
        rs.id = None
        self.unsubscribing[old] = trio.Event()
        outbox = self.context.outbox
        outbox.append(Unsubscribe(id=old))
        outbox.append(self.subscribe(rs))
        self.context.counters.catch_ups += 1

    def end(self, reason: ConnectionClosed, close_code: int | None = None) -> None:
        """The connection is over: stop the tasks; the first reason given wins."""
        if self.reason is None:
            self.reason = reason
            self.close_code = close_code
        if self._scope is not None:
            self._scope.cancel()

    # -- the tasks ------------------------------------------------------------------------

    async def run(self) -> ConnectionClosed:
        """Run the connection until it fails; why it did."""
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            self._nursery = nursery
            if self.reason is not None:  # ended before it started
                nursery.cancel_scope.cancel()
            nursery.start_soon(self._reader)
            nursery.start_soon(self._writer)
            if self.heartbeat_policy is not None:
                nursery.start_soon(self._heartbeat)
        self.conn.close()  # (a connection that broke the protocol stays in ERROR)
        assert self.reason is not None
        return self.reason

    def _lost(self, exc: ConnectionClosed) -> ConnectionClosed:
        message = f"lost the connection to {self.context.url}: {exc}"
        error = self.last_error
        if error is not None:
            message += f" (the broker's last error: {error.code}: {error.message})"
        return ConnectionClosed(message, code=exc.code, reason=exc.reason)

    async def _reader(self) -> None:
        try:
            await self._read()
        except ConnectionClosed as exc:
            self.oversized = refused_as_too_big(exc, self.context.max_message_size)
            self.end(self._lost(exc))

    def _broke(self, error: FrameError) -> None:
        """A fatal violation by the broker: end the link, closing with the code it implies."""
        code = close_code_for(error.code)
        self.end(
            ConnectionClosed(
                f"the broker at {self.context.url} broke the protocol: {error}", code=code
            ),
            close_code=code,
        )

    async def _read(self) -> None:
        conn = self.conn
        transport = self.transport
        counters = self.context.counters
        replies = self.context.replies
        subscription = conn.subscription
        policy = self.heartbeat_policy
        deliver = self.deliver
        while True:
            for item in conn.frames():
                if type(item) is EventFrame:
                    event = item.event
                    for sub_id in item.subs:
                        rs = subscription(sub_id)
                        if rs is None:
                            continue  # unsubscribed meanwhile
                        sub = rs.sub
                        if sub is None:  # the inbox
                            replies.deliver(event)
                            continue
                        if not rs.behind:  # the common case, inlined: in order and taken
                            seq = event.seq
                            last = rs.last_seq
                            if (seq is None or last is None or seq > last) and sub.offer(
                                event
                            ) is not FULL:
                                if seq is not None:
                                    rs.last_seq = seq  # a resume starts after it
                                continue
                        if not deliver(rs, sub, event):
                            # A block subscription holds twice its buffer: let a consumer
                            # that keeps up drain it first (never waiting for room). Two
                            # checkpoints: every task runnable now (the consumer woken by
                            # these events) runs before this one resumes.
                            await trio.lowlevel.checkpoint()
                            await trio.lowlevel.checkpoint()
                            if subscription(sub_id) is rs:
                                deliver(rs, sub, event, last_chance=True)
                    counters.received += 1
                elif type(item) is FrameError and item.fatal:
                    self._broke(item)
                    return
                else:
                    self._handle(item)
            try:
                text = await transport.receive()
            except RemoteProtocolError as exc:  # a binary message that is not UTF-8
                self._report(exc)
                continue
            if policy is not None:
                policy.received(trio.current_time())
            conn.receive_text(text)

    def deliver(
        self, rs: RemoteSub, sub: Subscription, event: Event, *, last_chance: bool = False
    ) -> bool:
        """Hand *event* to *rs*'s subscription *sub*, never waiting. False (nothing done):
        it is a ``block`` subscription that holds twice its buffer; yield to its consumer,
        then call again with *last_chance*.

        A full ``block`` subscription takes the event past its buffer, up to as many events
        again as the buffer holds. Beyond that (on the last chance) it is *behind*: a stored
        event (with a ``seq``) of a subscription that can resume is left to a catch-up from
        the store once the consumer has made room (:meth:`_watch_behind`); any other event is
        dropped and counted in ``missed``, as the broker drops for a slow connection. While
        behind, later events are skipped too (the stored ones come back through the
        catch-up, in order).
        """
        seq = event.seq
        if seq is not None:
            last = rs.last_seq
            if last is not None and seq <= last:
                return True  # delivered already (a resume overlaps what it had)
        if rs.behind:
            if seq is None:
                sub.add_missed(1)
            return True
        if sub.offer(event) is FULL:
            if sub.buffered < 2 * sub.max_buffer_size:
                sub.offer(event, force=True)
            elif not last_chance:
                return False
            elif seq is not None and rs.resume_point() is not None:
                rs.behind = True
                assert self._nursery is not None
                self._nursery.start_soon(self._watch_behind, rs, sub)
                return True
            else:
                sub.add_missed(1)
                return True
        if seq is not None:
            # Only once the subscription has it: a resume starts after it.
            rs.last_seq = seq
        return True

    async def _watch_behind(self, rs: RemoteSub, sub: Subscription) -> None:
        """Once the consumer of *rs*, which is behind, has made room: catch up from the store."""
        await sub.wait_room()
        if rs.behind and not sub.ended:
            rs.behind = False
            self.catch_up(rs)

    def _handle(self, item: Any) -> None:
        cls = type(item)
        conn = self.conn
        if cls is Ack or cls is HistoryResult:
            pending = conn.pending(item.ref)  # (forgotten once this is handled)
            if pending is not None:
                pending.ref = None
                pending.answer(item)
        elif cls is Subscribed:
            rs = conn.subscription(item.id)
            if rs is not None:
                if rs.resume_seq is None and item.seq is not None:
                    rs.resume_seq = item.seq  # resume from here if nothing stored arrives first
                rs.settle()
        elif cls is Unsubscribed:
            done = self.unsubscribing.pop(item.id, None)
            if done is not None:
                done.set()
        elif cls is Gap:
            rs = conn.subscription(item.sub)
            if rs is not None and rs.sub is not None:
                # A broker that does not say how many were stored: assume all may be.
                stored = item.missed if item.stored is None else min(item.stored, item.missed)
                if item.missed > stored:
                    rs.sub.add_missed(item.missed - stored)  # not stored: lost for good
                if stored:
                    if rs.resume_point() is None:
                        rs.sub.add_missed(stored)
                    else:
                        self.catch_up(rs)  # the store has them
        elif cls is Error:
            self._refused(item)
        elif cls is Ping:
            self.context.outbox.append(Pong())
        elif cls is Pong:
            pass  # a sign of life, already noted
        elif cls is FrameError:
            self._report(item)
        else:  # pragma: no cover - the connection lets no other frame through
            logger.warning("unexpected frame from %s: %r", self.context.url, item)

    def _refused(self, error: Error) -> None:
        ref = error.ref
        conn = self.conn
        if ref is not None:
            pending = conn.pending(ref)  # (forgotten once this is handled)
            if pending is not None:
                pending.ref = None
                pending.fail(error_from_frame(error, pending.topic))
                return
            rs = conn.detach(ref)
            if rs is not None:
                rs.id = None
                self.context.refused(rs, error_from_frame(error, rs.pattern))
                return
        self.last_error = error
        self.context.counters.errors += 1
        logger.warning(
            "the broker at %s reported an error (%s): %s",
            self.context.url,
            error.code,
            error.message,
        )

    def _report(self, error: RemoteProtocolError | FrameError) -> None:
        self.context.counters.errors += 1
        logger.warning("bad input from the broker at %s: %s", self.context.url, error)

    async def _writer(self) -> None:
        outbox = self.context.outbox
        try:
            while True:
                if not outbox.items:
                    outbox.notify_drained()
                    await outbox.wait_ready()
                    continue
                items = outbox.take(WRITE_BATCH)
                self.writing = True
                try:
                    await self._send(items)
                finally:
                    self.writing = False
        except ConnectionClosed as exc:
            self.conn.send_failed()
            self.end(self._lost(exc))

    async def _send(self, items: list[OutboxItem]) -> None:
        """Send *items* as one message (or a few, if one would be too large)."""
        frames: list[ClientFrame] = []
        kept: list[OutboxItem] = []
        refs: dict[int, Pending[Any]] = {}
        conn = self.conn
        for item in items:
            if type(item) is Publish:
                frames.append(item)
            elif isinstance(item, Pending):
                if item.abandoned or item.done.is_set():
                    continue
                ref = conn.next_id()
                item.ref = ref
                refs[ref] = item
                frames.append(item.frame(ref))
            else:
                frames.append(item)
            kept.append(item)
        if not frames:
            return
        sent = 0  # how many of *kept* went out
        try:
            text = conn.send(frames if len(frames) > 1 else frames[0], refs=refs)
            if utf8_size(text) <= self.context.max_message_size:
                await self.transport.send(text)
                sent = len(kept)
            else:
                for end, piece in self._split(frames, kept):
                    if piece is not None:
                        await self.transport.send(piece)
                    sent = end
        finally:
            if sent < len(kept):
                self._restore(kept[sent:])

    def _split(
        self, frames: list[ClientFrame], kept: list[OutboxItem]
    ) -> Iterable[tuple[int, str | None]]:
        """Split a batch too large for one message: ``(end, text)`` per message, where *end*
        is the index after its last frame; a frame too large on its own fails (text None)."""
        limit = self.context.max_message_size
        texts = [encode(frame) for frame in frames]
        sizes = [utf8_size(text) for text in texts]
        start = 0
        while start < len(frames):
            if sizes[start] + 2 > limit:
                self._too_large(kept[start], sizes[start])
                yield start + 1, None
                start += 1
                continue
            end = start
            size = 2
            while end < len(frames) and size + sizes[end] + 1 <= limit:
                size += sizes[end] + 1
                end += 1
            yield end, "[" + ",".join(texts[start:end]) + "]"
            start = end

    def _too_large(self, item: OutboxItem, size: int) -> None:
        limit = self.context.max_message_size
        message = (
            f"a {type(item).__name__} frame of {size} bytes is larger than the largest "
            f"message ({limit} bytes, the client's max_message_size); it was not sent"
        )
        if isinstance(item, Pending):
            if item.ref is not None:
                self.conn.discard_pending(item.ref)
                item.ref = None
            item.fail(TooLarge(message))
        else:
            self.context.counters.errors += 1
            logger.error("%s", message)

    def _restore(self, items: list[OutboxItem]) -> None:
        """Put back what was not sent (the connection is gone); its control frames go."""
        keep: list[OutboxItem] = []
        for item in items:
            if isinstance(item, Pending):
                if item.ref is not None:
                    self.conn.discard_pending(item.ref)
                    item.ref = None
                keep.append(item)
            elif type(item) is Publish:
                keep.append(item)
        self.context.outbox.push_front(keep)

    async def _heartbeat(self) -> None:
        """Ping a broker silent for an interval; give it up when it stays silent for another
        (the protocol's :class:`~trio_realtime.protocol.Heartbeat` policy)."""
        policy = self.heartbeat_policy
        assert policy is not None
        outbox = self.context.outbox
        while True:
            action, deadline = policy.poll(trio.current_time())
            if action is HeartbeatAction.WAIT:
                await trio.sleep_until(deadline)
            elif action is HeartbeatAction.PING:
                outbox.append(Ping())
            else:
                silence = 2 * policy.interval
                self.end(
                    ConnectionClosed(
                        f"lost the connection to {self.context.url}: the broker sent nothing "
                        f"for {silence:g} s (twice its heartbeat interval)"
                    ),
                    close_code=CLOSE_GOING_AWAY,
                )
                return


# ---------------------------------------------------------------------------------------------
# Messages too large for the client
#
# A message larger than the client's max_message_size cannot be read: the transport refuses
# it and closes the connection with 1009, and what it held is lost. A broker never sends one
# larger than its own limit, so this happens only to a client whose limit is below the
# broker's. Lost once is one thing; lost on every reconnect is another: a subscription that
# resumes from the store is replayed the same stored events, batched the same way, and every
# new connection would close on them. So after such a close the client first reads what each
# resuming subscription would be replayed itself, with history reads on a side connection,
# in pages small enough to receive (halved while too large). A single event too large to
# receive is located (its seq found by bisection, see locate_oversized) and skipped, and
# counted as missed. Then it resubscribes after what it read. An event that was not stored is
# not replayed: it is lost, and counted only in the client's statistics.


#: The close reason of the transport's own check of a received message's size in bytes.
LOCAL_TOO_BIG_REASON: Final = "message too big"


def refused_as_too_big(exc: ConnectionClosed, limit: int) -> bool:
    """Whether *exc* says that this side refused a message larger than *limit* bytes.

    The transport closes with 1009 itself when a message it receives is over its limit
    (trio-websocket counts characters and says so in the close reason; the transport counts
    bytes and raises with the reason :data:`LOCAL_TOO_BIG_REASON`). A broker that refused one
    of our messages closes with 1009 too, but with its own reason, naming its own limit.
    """
    if exc.code != CLOSE_TOO_BIG:
        return False
    return exc.reason in (LOCAL_TOO_BIG_REASON, f"Exceeded maximum message size: {limit} bytes")


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
        if not result.events or (len(result.events) < limit and not result.more):
            break  # caught up
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
