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
connections, so that the next link is not sent the same stored events again: see
:mod:`._oversized`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import trio

from .._errors import (
    ConnectionClosed,
    HandshakeError,
    RemoteProtocolError,
    TooLarge,
    refusal,
)
from .._event import Event
from .._util import utf8_size
from ..bus._channel import FULL
from ..bus._requests import Answering, ReplyInbox
from ..protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_TOO_BIG,
    FORBIDDEN,
    Ack,
    Cancel,
    ClientFrame,
    Connection,
    Error,
    EventFrame,
    FrameError,
    Gap,
    Heartbeat,
    HeartbeatAction,
    Hello,
    HistoryResult,
    Ping,
    Pong,
    Publish,
    Refreshed,
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
    "WRITE_BATCH",
    "ClientConn",
    "ClientCounters",
    "Link",
    "LinkContext",
    "handshake",
    "refused_as_too_big",
    "utf8_size",
]

logger = logging.getLogger("trio_realtime.client")

#: Most frames the writer puts in one message.
WRITE_BATCH: Final = 512

T = TypeVar("T")


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
        answering: The requests the client's ``serve`` blocks handle, which a ``cancel``
            from the broker cancels.
        counters: Where the link counts.
        refused: Called when the broker refused (or ended) a subscription, with the error.
    """

    url: str
    max_message_size: int
    outbox: Outbox
    replies: ReplyInbox[RequestPending]
    answering: Answering
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
        if cls is Ack or cls is HistoryResult or cls is Refreshed:
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
            elif item.reason is not None:  # the broker ended it (forgotten once handled)
                rs = conn.subscription(item.id)
                if rs is not None:
                    rs.id = None
                    self.context.refused(
                        rs,
                        refusal(FORBIDDEN, f"the broker ended it: {item.reason}", topic=rs.pattern),
                    )
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
        elif cls is Cancel:  # the requester of a request we handle gave up on it
            self.context.answering.cancel(item.id, item.reply_to, early=True)
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
