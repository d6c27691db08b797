"""One connected client on the broker's side: its nursery, its queue, its limits.

A session runs three tasks in its own nursery: the reader (the session's main task: it reads
messages, feeds the sans-IO :class:`~trio_realtime.protocol.ServerConnection` and acts on each
frame), the writer (drains the outgoing queue, batching frames into one message when a backlog
exists) and the heartbeat. Each remote subscription is a sink in the broker's bus; a slow
client never stalls anyone else: its queue drops the oldest events (reported with ``gap``
frames) or, if so configured, the client is disconnected with close code 4001.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, cast

import trio

from ._bus import PendingCommit
from ._channel import ACCEPTED, DROPPED, Offered
from ._errors import (
    ConnectionClosed,
    InvalidTopic,
    LocalProtocolError,
    NoResponders,
    Refused,
    RemoteProtocolError,
    StoreError,
    StoreUnavailable,
)
from ._event import Event, parse_time
from ._topics import is_reserved, validate_pattern, validate_topic
from ._util import open_service_nursery
from .protocol import (
    BAD_FRAME,
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT,
    CLOSE_PROTOCOL,
    CLOSE_SLOW_CONSUMER,
    FORBIDDEN,
    INTERNAL,
    INVALID_TOPIC,
    LIMIT,
    NO_RESPONDERS,
    NO_STORE,
    PROTOCOL,
    SLOW_CONSUMER,
    TOO_LARGE,
    Ack,
    ConnectionState,
    Error,
    EventFrame,
    Gap,
    Hello,
    History,
    HistoryResult,
    Ping,
    Pong,
    Publish,
    ServerConnection,
    ServerFrame,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    close_code_for,
    encoded_size,
)
from .protocol._codec import encode_event_frame_text, encode_event_sized

if TYPE_CHECKING:
    from ._broker import Broker
    from ._transport import WebSocketTransport

__all__ = ["Session"]

logger = logging.getLogger("trio_realtime.broker")

#: Frames the writer puts in one message at most.
MAX_BATCH: Final = 512
#: Answers (weighted: a history result by its events) queued for a client before the broker
#: stops reading from it until it reads them (and, whatever their count, ``max_pending_bytes``
#: of them).
MAX_ANSWER_BACKLOG: Final = 10_000
#: Bytes a frame adds around its event (type, punctuation), counted generously; ``subs``
#: adds :data:`SUB_ID_SIZE` per subscription id.
FRAME_OVERHEAD: Final = 64
#: Bytes one subscription id takes in ``subs`` at most (a 64-bit integer and a comma).
SUB_ID_SIZE: Final = 21
#: Bytes of a message the writer leaves unused (the batch's brackets, rounding).
MESSAGE_MARGIN: Final = 64
#: Most events one ``history`` request returns.
MAX_HISTORY: Final = 10_000
#: The longest ``hello.instance`` used to scope deduplication; longer ones are cut.
MAX_INSTANCE_LENGTH: Final = 256


def cost_of_answer(frame: ServerFrame) -> int:
    """How much a queued answer counts against :data:`MAX_ANSWER_BACKLOG`."""
    return 1 + len(frame.events) if isinstance(frame, HistoryResult) else 1


def size_of_answer(frame: ServerFrame) -> int:
    """Bytes a queued answer counts against ``max_pending_bytes`` (at least its size)."""
    if isinstance(frame, HistoryResult):
        return FRAME_OVERHEAD + sum(encoded_size(e) + 1 for e in frame.events)
    if isinstance(frame, Error):
        return FRAME_OVERHEAD + len(frame.message) * 4
    return FRAME_OVERHEAD


class _EventItem:
    """An event queued for the client, with the ids of the subscriptions it matched."""

    __slots__ = ("event", "size", "subs")

    def __init__(self, event: Event, sub: int, size: int) -> None:
        self.event = event
        self.subs = [sub]
        self.size = size  # counted against max_pending_bytes (the subs too)


class RemoteSubscription:
    """A client's subscription: a sink in the bus that feeds the session's queue."""

    def __init__(self, session: Session, sub_id: int, pattern: str, group: str | None) -> None:
        self.session = session
        self.id = sub_id
        self.pattern = pattern
        self.group = group
        self.missed = 0
        self.replay: trio.CancelScope | None = None
        self.ended = False

    def offer(self, event: Event, *, force: bool = False) -> Offered:
        if self.ended:
            return DROPPED
        self.session._enqueue_event(self.id, event)
        return ACCEPTED

    def has_room(self) -> bool:
        return self.session._has_room()

    async def wait_room(self) -> None:
        await self.session._wait_room()

    def end(self) -> None:
        self.ended = True

    def add_missed(self, n: int) -> None:
        self.missed += n
        self.session._gaps[self.id] = self.session._gaps.get(self.id, 0) + n

    def fail(self, exc: BaseException) -> None:
        self.ended = True
        self.session._enqueue(
            Error(ref=self.id, code=INTERNAL, message=f"subscription {self.id} ended: {exc}")
        )


class Session:
    """The broker's side of one client connection. Created and run by the broker."""

    def __init__(self, broker: Broker, transport: WebSocketTransport, session_id: str) -> None:
        self.broker = broker
        self.bus = broker.bus
        self.transport = transport
        self.id = session_id
        self.address = transport.remote
        self.client: str | None = None
        self.conn = ServerConnection()
        self.subscriptions: dict[int, RemoteSubscription] = {}
        self.events_in = 0
        self.events_out = 0
        self.dropped = 0
        self._queue: deque[ServerFrame | _EventItem] = deque()
        self._queued_events = 0
        self._queued_bytes = 0  # of the queued events
        self._answer_bytes = 0  # of the queued answers
        self._publisher: str = f"session:{session_id}"  # who deduplication knows it as
        self._replay_slots = trio.Semaphore(broker.max_replays)
        self._gaps: dict[int, int] = {}
        self._gaps_stored: dict[int, int] = {}  # of the gaps, how many were stored events
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._room_lot = trio.lowlevel.ParkingLot()
        self._slow = False
        self._closing = False
        self._queued_control = 0  # answers queued (weighted: a history result by its events)
        self._processing = False  # the reader is acting on the client's frames
        self._last_received = trio.current_time()
        self._nursery: trio.Nursery | None = None
        self._acks_send, self._acks_receive = trio.open_memory_channel[tuple[int, PendingCommit]](
            math.inf
        )

    def __repr__(self) -> str:
        return f"<Session {self.id} client={self.client!r} address={self.address}>"

    # -- the outgoing queue ---------------------------------------------------------------

    def _enqueue(self, frame: ServerFrame) -> None:
        self._queue.append(frame)
        self._queued_control += cost_of_answer(frame)
        self._answer_bytes += size_of_answer(frame)
        if self._writer_lot:
            self._writer_lot.unpark()

    def _enqueue_event(self, sub_id: int, event: Event) -> None:
        queue = self._queue
        if queue:
            last = queue[-1]
            if type(last) is _EventItem and last.event is event:
                last.subs.append(sub_id)  # one frame for every subscription it matched
                self._queued_bytes += SUB_ID_SIZE
                return
        broker = self.broker
        size = encoded_size(event) + FRAME_OVERHEAD
        while self._queued_events and (
            self._queued_events >= broker.session_buffer
            or self._queued_bytes + size > broker.max_pending_bytes
        ):
            broker._count_limit(
                "session_buffer"
                if self._queued_events >= broker.session_buffer
                else "max_pending_bytes"
            )
            self._overflow()
            if self._slow:
                return
        queue.append(_EventItem(event, sub_id, size))
        self._queued_events += 1
        self._queued_bytes += size
        if self._writer_lot:
            self._writer_lot.unpark()

    def _overflow(self) -> None:
        """The queue is full: drop its oldest event (counted, reported) or end the session."""
        if self.broker.slow_consumer == "disconnect":
            if not self._slow:
                self._slow = True
                self.broker._count_error(SLOW_CONSUMER)
                for remote in self.subscriptions.values():
                    remote.end()  # a replay waiting for room stops too
                self._writer_lot.unpark_all()
                self._room_lot.unpark_all()
            return
        for i, item in enumerate(self._queue):
            if type(item) is _EventItem:
                del self._queue[i]
                self._queued_events -= 1
                self._queued_bytes -= item.size
                self.dropped += 1
                stored = item.event.seq is not None
                for sub_id in item.subs:
                    self._gaps[sub_id] = self._gaps.get(sub_id, 0) + 1
                    if stored:
                        self._gaps_stored[sub_id] = self._gaps_stored.get(sub_id, 0) + 1
                    sub = self.subscriptions.get(sub_id)
                    if sub is not None:
                        sub.missed += 1
                return

    def _has_room(self) -> bool:
        return (
            self._queued_events < self.broker.session_buffer
            and self._queued_bytes < self.broker.max_pending_bytes
        )

    async def _wait_room(self) -> None:
        await trio.lowlevel.checkpoint()
        while not self._has_room() and not self._slow:
            await self._room_lot.park()

    async def _writer(self) -> None:
        queue = self._queue
        while True:
            if self._closing or self.conn.state is ConnectionState.CLOSED:
                return  # the close frame (or a fatal error's) goes next: no new batches
            if self._slow:
                await self._close_slow()
                return
            if not queue and not self._gaps:
                await self._writer_lot.park()
                continue
            # While the connection is open, event frames need no protocol checks or
            # bookkeeping (ServerConnection records nothing for them): their text is joined
            # here around each event's cached encoding, without building EventFrame objects;
            # other frames go through the connection one by one (in the open state none of
            # them changes it). Otherwise the whole batch goes through the connection.
            conn = self.conn
            fast = conn.state is ConnectionState.OPEN
            frames: list[ServerFrame] = []  # when not fast
            parts: list[str] = []  # each frame's text, when fast
            count = 0
            if self._gaps:
                stored = self._gaps_stored
                gaps = [
                    Gap(sub=sub_id, missed=missed, stored=stored.get(sub_id, 0))
                    for sub_id, missed in self._gaps.items()
                    if sub_id in self.subscriptions
                ]
                self._gaps.clear()
                stored.clear()
                if fast:
                    parts.extend([conn.send(gap) for gap in gaps])
                else:
                    frames.extend(gaps)
                count = len(gaps)
            events = 0
            # A batch stays under the client's message size limit (the broker's own): an
            # event always fits alone (it was refused at publish otherwise), and an event
            # that matched more subscriptions than fit in one frame goes in several.
            budget = self.broker.max_message_size - MESSAGE_MARGIN
            size = 0
            freed = 0
            while queue and count < MAX_BATCH:
                item = queue[0]
                if type(item) is _EventItem:
                    event_text, event_size = encode_event_sized(item.event)  # cached
                    subs = item.subs
                    cost = event_size + FRAME_OVERHEAD + SUB_ID_SIZE * len(subs)
                    fit = len(subs)
                    if size + cost > budget:
                        if count:
                            break
                        # Alone and still too big: send the subscriptions that fit now and
                        # leave the rest at the head of the queue for the next message.
                        fit = max(1, (budget - event_size - FRAME_OVERHEAD) // SUB_ID_SIZE)
                    if fit < len(subs):
                        subs, item.subs = subs[:fit], subs[fit:]
                        cost = event_size + FRAME_OVERHEAD + SUB_ID_SIZE * fit
                    else:
                        queue.popleft()
                        events += 1
                        freed += item.size
                    if fast:
                        parts.append(encode_event_frame_text(subs, event_text))
                    else:
                        frames.append(EventFrame(subs=tuple(subs), event=item.event))
                else:
                    answer = cast("ServerFrame", item)
                    cost = size_of_answer(answer)
                    if count and size + cost > budget:
                        break
                    queue.popleft()
                    self._queued_control -= cost_of_answer(answer)
                    self._answer_bytes -= cost
                    if fast:
                        parts.append(conn.send(answer))
                    else:
                        frames.append(answer)
                count += 1
                size += cost + 1
            self._queued_bytes -= freed
            self._queued_events -= events
            if self._room_lot:
                self._room_lot.unpark_all()
            if not count:
                continue
            if fast:
                text = parts[0] if count == 1 else "[" + ",".join(parts) + "]"
            else:
                text = conn.send(frames if len(frames) > 1 else frames[0])
            try:
                await self.transport.send(text)
            except ConnectionClosed:
                self._nursery_cancel()  # the client is gone: end the session quietly
                return
            self.events_out += events
            self.broker._events_out += events

    async def _close_slow(self) -> None:
        text = self.conn.send(
            Error(
                code=SLOW_CONSUMER,
                message=f"more than {self.broker.session_buffer} events, or "
                f"{self.broker.max_pending_bytes} bytes, were waiting to be sent to this "
                "client: it reads too slowly",
            )
        )
        try:
            with trio.move_on_after(self.broker.shutdown_timeout):
                await self.transport.send(text)
        except ConnectionClosed:
            return  # it left by itself
        await self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    # -- the session's life ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; tidy up the client's subscriptions."""
        try:
            hello = await self._handshake()
            if hello is None:
                return
            if not await self.broker._session_started(self):
                await self.close(CLOSE_GOING_AWAY, "broker shutting down")
                return
            try:
                async with open_service_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._heartbeat)
                    nursery.start_soon(self._acker)
                    await self._reader()
            finally:
                self._drop_subscriptions()
                await self.broker._session_ended(self)
        except ConnectionClosed:
            pass
        except RemoteProtocolError as exc:
            await self._refuse(exc)

    async def _handshake(self) -> Hello | None:
        """Read until the client's ``hello``; answer ``welcome``. None if the client left."""
        with trio.move_on_after(self.broker.handshake_timeout):
            while True:
                text = await self.transport.receive()
                self._last_received = trio.current_time()
                self.conn.receive_text(text)
                for item in self.conn.frames():
                    if isinstance(item, Hello):
                        self.client = item.client
                        if item.instance:
                            self._publisher = f"instance:{item.instance[:MAX_INSTANCE_LENGTH]}"
                        welcome = Welcome(
                            session=self.id,
                            broker=self.broker.name,
                            heartbeat=self.broker.heartbeat,
                            epoch=self.bus.store.epoch if self.bus.store is not None else None,
                        )
                        await self.transport.send(self.conn.send(welcome))
                        return item
        self.broker._count_error("handshake_timeout")
        message = f"no 'hello' within the handshake timeout ({self.broker.handshake_timeout:g} s)"
        try:
            with trio.move_on_after(self.broker.shutdown_timeout):
                await self.transport.send(self.conn.send(Error(code=PROTOCOL, message=message)))
        except ConnectionClosed:
            return None
        await self.close(CLOSE_PROTOCOL, "no 'hello' within the handshake timeout")
        return None

    async def _refuse(self, exc: RemoteProtocolError) -> None:
        """A fatal protocol violation: explain it in an error frame, then close."""
        self.broker._count_error(exc.code)
        try:
            with trio.move_on_after(self.broker.shutdown_timeout):
                await self.transport.send(self.conn.send(Error.from_exception(exc)))
        except ConnectionClosed:
            pass
        await self.close(close_code_for(exc.code), str(exc)[:120])

    async def close(self, code: int, reason: str) -> None:
        """Close the WebSocket with *code* (waiting a bounded time for the client to agree).

        The writer finishes the message it is sending and stops, so the close frame follows.
        """
        self._closing = True
        self._writer_lot.unpark_all()
        self._room_lot.unpark_all()
        await self.transport.aclose(code, reason, timeout=self.broker.shutdown_timeout)

    def _drop_subscriptions(self) -> None:
        for sub in self.subscriptions.values():
            if sub.replay is not None:
                sub.replay.cancel()
            sub.end()
            self.bus.remove_sink(sub)
        self.subscriptions.clear()

    async def _heartbeat(self) -> None:
        """Ping a client silent for an interval; close it if the ping gets no answer in time."""
        interval = self.broker.heartbeat
        while True:
            quiet_since = self._last_received
            if trio.current_time() < quiet_since + interval:
                await trio.sleep_until(quiet_since + interval)
                continue
            if self._processing:
                # Busy with the client's frames (waiting on the bus): not the client's
                # silence. A ping still tells the client that the broker is alive.
                self._last_received = trio.current_time()
                self._enqueue(Ping())
                continue
            pinged = trio.current_time()
            self._enqueue(Ping())
            await trio.sleep(interval)  # every ping gets a whole interval to be answered
            if self._last_received < pinged and not self._processing:
                self.broker._count_error("heartbeat_timeout")
                await self.close(CLOSE_HEARTBEAT, "heartbeat timeout")
                self._nursery_cancel()
                return

    def _nursery_cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _acker(self) -> None:
        """Answer persisted publishes in order, once stored: a whole commit's acks at once."""
        receive = self._acks_receive
        while True:
            # Everything already queued, and already stored, is acked without a checkpoint (a
            # channel's receive() is one), so that the acks of one group commit leave in one
            # message rather than one or two each. (Each round still ends with a checkpoint:
            # receive() when the queue is empty, or waiting for a commit.)
            try:
                ref, pending = receive.receive_nowait()
            except trio.WouldBlock:
                ref, pending = await receive.receive()
            try:
                event = pending.result if pending.done.is_set() else None
                if event is None:
                    event = await pending.wait()
            except StoreError as exc:
                self._error(ref, INTERNAL, f"the event was not stored: {exc}")
            except trio.ClosedResourceError:
                self._error(ref, INTERNAL, "the broker is shutting down; the event was not stored")
            except Refused as exc:  # such as an id another publisher's event has
                self._error(ref, exc.code, f"the event was not stored: {exc}")
            except (ValueError, TypeError) as exc:  # refused by the store
                self._error(ref, BAD_FRAME, f"the event was not stored: {exc}")
            else:
                self._enqueue(Ack(ref=ref, id=event.id, seq=event.seq, duplicate=pending.duplicate))

    # -- reading and acting ---------------------------------------------------------------

    async def _reader(self) -> None:
        conn = self.conn
        while True:
            # While acting on the client's frames (which may wait on the bus), silence from
            # the client is ours: the heartbeat does not count it.
            self._processing = True
            for item in conn.frames():
                if type(item) is Publish:  # the bulk of the traffic: no dispatch
                    await self._publish(item)
                elif isinstance(item, RemoteProtocolError):
                    self.broker._count_error(item.code)
                    self._enqueue(Error.from_exception(item))
                else:
                    await self._handle(item)
                    # One message may hold thousands of frames: let other connections in
                    # between them. (Publishes yield in the bus, every few.)
                    await trio.lowlevel.checkpoint()
                # A client that sends requests but does not read the answers is not read
                # either until it does (TCP then pushes back on it): checked between frames,
                # since one message may ask for many answers.
                if (
                    self._answer_bytes > self.broker.max_pending_bytes
                    or self._queued_control > MAX_ANSWER_BACKLOG
                ):
                    await self._wait_answers_read()
            self._processing = False
            self._last_received = trio.current_time()
            try:
                text = await self.transport.receive()
            except ConnectionClosed:
                return
            except RemoteProtocolError as exc:  # a binary message, or one too big
                if exc.code == TOO_LARGE:
                    raise  # fatal: answered, then closed with 1009 (see run)
                self._last_received = trio.current_time()
                self.broker._count_error(exc.code)
                self._enqueue(Error.from_exception(exc))
                continue
            self._last_received = trio.current_time()
            conn.receive_text(text)

    async def _wait_answers_read(self) -> None:
        limit = self.broker.max_pending_bytes
        # Waiting on the client now: its silence counts again, so a client that reads
        # nothing for a heartbeat interval is closed (it cannot answer the ping unread).
        self._processing = False
        while (self._queued_control > MAX_ANSWER_BACKLOG or self._answer_bytes > limit) and not (
            self._closing or self._slow
        ):
            await self._room_lot.park()
        self._processing = True

    def _error(self, ref: int | None, code: str, message: str) -> None:
        self.broker._count_error(code)
        self._enqueue(Error(ref=ref, code=code, message=message))

    async def _handle(self, frame: Any) -> None:
        kind = type(frame)
        if kind is Publish:
            await self._publish(frame)
        elif kind is Subscribe:
            await self._subscribe(frame)
        elif kind is Unsubscribe:
            sub = self.subscriptions.pop(frame.id, None)
            if sub is not None:
                if sub.replay is not None:
                    sub.replay.cancel()
                sub.end()
                self.bus.remove_sink(sub)
            self._enqueue(Unsubscribed(id=frame.id))
        elif kind is Ping:
            self._enqueue(Pong())
        elif kind is History:
            await self._history(frame)  # one at a time: a client cannot pile up store reads
        # Pong: its arrival already counts as a sign of life.

    async def _publish(self, frame: Publish) -> None:
        event = frame.event
        ref = frame.ref
        self.events_in += 1
        self.broker._events_in += 1
        reply_to = event.reply_to
        try:
            validate_topic(event.topic)
            if reply_to is not None:
                validate_topic(reply_to)
        except InvalidTopic as exc:
            self._error(ref, INVALID_TOPIC, str(exc))
            return
        if is_reserved(event.topic):
            self._error(
                ref, FORBIDDEN, f"topic {event.topic!r}: '$' topics are reserved for the broker"
            )
            return
        if reply_to is not None and is_reserved(reply_to):
            self._error(
                ref,
                FORBIDDEN,
                f"reply_to {reply_to!r}: '$' topics are reserved for the broker; replies go "
                "to a topic the requester subscribes to, such as an '_inbox.' topic",
            )
            return
        try:
            # Encoding now (it is cached for the writers) refuses here, to the publisher, what
            # could be decoded but not encoded again (such as data nested too deeply).
            size = encoded_size(event)
        except (TypeError, LocalProtocolError) as exc:
            self._error(ref, BAD_FRAME, f"the event cannot be relayed: {exc}")
            return
        if size > self.broker.max_event_size:
            self.broker._count_limit("max_event_size")
            self._error(
                ref,
                TOO_LARGE,
                f"the event takes {size} bytes encoded; the most is {self.broker.max_event_size} "
                "(max_event_size: the message size limit less room for the frame)",
            )
            return
        try:
            result = await self.bus.publish_pipelined(
                event, retain=frame.retain, publisher=self._publisher
            )
        except NoResponders as exc:
            self._error(ref, NO_RESPONDERS, str(exc))
            return
        except trio.ClosedResourceError:
            self._error(ref, INTERNAL, "the broker is shutting down")
            return
        if ref is None:
            return
        if isinstance(result, PendingCommit):
            self._acks_send.send_nowait((ref, result))
        else:
            self._enqueue(Ack(ref=ref, id=result.id, seq=result.seq))

    async def _subscribe(self, frame: Subscribe) -> None:
        try:
            validate_pattern(frame.pattern)
        except InvalidTopic as exc:
            self._error(frame.id, INVALID_TOPIC, str(exc))
            return
        if frame.since is not None and frame.since < 0:
            self._error(
                frame.id, BAD_FRAME, f"'since' must be a seq (0 or more), not {frame.since}"
            )
            return
        since: int | datetime | None = frame.since
        if frame.since_time is not None:
            since = parse_time(frame.since_time)
        if since is not None and self.bus.store is None:
            self._error(frame.id, NO_STORE, "this broker has no store: 'since' cannot be served")
            return
        limit = self.broker.max_subscriptions
        if len(self.subscriptions) >= limit:
            self.broker._count_limit("max_subscriptions")
            self._error(
                frame.id,
                LIMIT,
                f"this connection holds {limit} subscriptions, the most it may "
                "(max_subscriptions): unsubscribe one first",
            )
            return
        sub = RemoteSubscription(self, frame.id, frame.pattern, frame.group)
        self.subscriptions[frame.id] = sub
        # Where to resume if the connection drops before a stored event arrives.
        # (Not for a queue group member: it would replay what the other members handled.)
        resume = (
            self.bus.last_seq
            if self.bus.store is not None and since is None and frame.group is None
            else None
        )
        self._enqueue(Subscribed(id=frame.id, seq=resume))
        if since is None:
            self.bus.add_sink(sub)
            return
        # Replays run in the bus; a connection has at most max_replays under way (each
        # holding a page of stored events), and waits for one to finish before the next.
        await self._replay_slots.acquire()
        try:
            sub.replay = await self.bus.add_sink_since(
                sub, since, on_done=self._replay_slots.release
            )
        except BaseException:
            self._replay_slots.release()
            raise

    async def _history(self, frame: History) -> None:
        """Answer with the stored events that fit in one message (``more`` if others match)."""
        since: int | datetime | None = frame.since
        if frame.since is not None and frame.since < 0:
            self._error(
                frame.ref, BAD_FRAME, f"'since' must be a seq (0 or more), not {frame.since}"
            )
            return
        limit = max(0, min(frame.limit, MAX_HISTORY))
        budget = self.broker.max_message_size - MESSAGE_MARGIN - FRAME_OVERHEAD
        try:
            validate_pattern(frame.pattern)
            if frame.since_time is not None:
                since = parse_time(frame.since_time)
            events = await self.bus.history(
                frame.pattern, since=since, limit=limit, max_bytes=budget
            )
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
                more = bool(await self.bus.history(frame.pattern, since=last, limit=1))
        except InvalidTopic as exc:
            self._error(frame.ref, INVALID_TOPIC, str(exc))
        except StoreUnavailable:
            self._error(frame.ref, NO_STORE, "this broker has no store: no history to read")
        except ValueError as exc:
            self._error(frame.ref, INTERNAL, str(exc))
        except StoreError as exc:
            self._error(frame.ref, INTERNAL, f"reading the store failed: {exc}")
        else:
            self._enqueue(HistoryResult(ref=frame.ref, events=tuple(events), more=more))
