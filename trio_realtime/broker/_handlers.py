"""What a session does with its client's frames: publish, subscribe (live, or replaying the
store ``since`` a point), history and cancel, each checked against the client's access and the
broker's limits and answered through the session's outbox.

:class:`SessionHandlers` stands between
:class:`~trio_realtime.broker._outbox.SessionOutbox` (what goes out) and
:class:`~trio_realtime.broker._session.Session` (the session's life: the handshake, the reader
that dispatches each frame here, authentication and the heartbeat). Its tasks run in the
session's nursery: the acker (from the first persisted publish) and the ``since`` replays.
"""

from __future__ import annotations

import math
from datetime import datetime
from functools import partial

import trio

from .._errors import (
    InvalidTopic,
    LocalProtocolError,
    NoResponders,
    Refused,
    RemoteProtocolError,
    StoreError,
    StoreUnavailable,
)
from .._event import parse_time
from .._topics import is_reserved, validate_pattern, validate_topic
from ..bus._commit import PendingCommit
from ..bus._requests import cancel_event
from ..protocol import (
    BAD_FRAME,
    FORBIDDEN,
    INTERNAL,
    INVALID_TOPIC,
    LIMIT,
    NO_RESPONDERS,
    NO_STORE,
    RATE_LIMITED,
    STORE_FAILED,
    TOO_LARGE,
    USER_HEADER,
    Ack,
    Cancel,
    History,
    HistoryResult,
    Publish,
    Subscribe,
    Subscribed,
    encoded_size,
)
from ..protocol._batch import FRAME_OVERHEAD, MESSAGE_MARGIN
from ._history import MAX_HISTORY, read_history, read_history_filtered
from ._limits import CANCEL_BURST, CANCEL_RATE, RATE_REFUSALS_BEFORE_CLOSE, TokenBucket
from ._outbox import RemoteSubscription, SessionOutbox

__all__ = ["SessionHandlers"]


class SessionHandlers(SessionOutbox):
    """The handlers of a session's frames (see the module's docstring). Made only as a
    :class:`~trio_realtime.broker._session.Session`."""

    # (Read from the class until set: see SessionOutbox.)
    _rate_refusals: int = 0  # publishes refused in a row for their rate
    _cancel_bucket: TokenBucket | None = None  # (made at the first cancel)
    events_in: int = 0
    _replays: trio.Semaphore | None = None  # (made at the first replay)
    #: The acks of persisted publishes (made at the first: see _acks_send).
    _acks: trio.MemorySendChannel[tuple[int, PendingCommit]] | None = None

    # -- publish --------------------------------------------------------------------------

    async def _publish(self, frame: Publish) -> None:
        event = frame.event
        ref = frame.ref
        self.events_in += 1
        self.counters.events_in += 1
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
        access = self.access
        replying = False  # an answer that uses up one of the connection's leaves to reply
        if access.permissions is not None:
            refusal, replying = access.check_publish(event.topic, reply_to)
            if refusal is not None:
                self._error(ref, FORBIDDEN, refusal)
                return
        if self.rate_buckets and not self._within_rate():
            if self._rate_refusals >= RATE_REFUSALS_BEFORE_CLOSE:
                await self._refuse(
                    RemoteProtocolError(
                        f"{self._rate_refusals} publishes in a row over the rate limit",
                        code=RATE_LIMITED,
                    )
                )
                self._nursery_cancel()
                return
            self._error(ref, RATE_LIMITED, "publishing faster than allowed: not routed")
            return
        if replying:
            access.replied(event.topic)
        user = access.user
        headers = event.headers
        if user is not None or USER_HEADER in headers:
            # Who published it, as the broker knows it, never as the client claims. (In
            # place: the event was decoded from this frame, nothing else holds it yet.)
            if type(headers) is not dict:
                headers = dict(headers)
                object.__setattr__(event, "headers", headers)
            if user is None:
                del headers[USER_HEADER]
            else:
                headers[USER_HEADER] = user
        try:
            # Encoding now (it is cached for the writers) refuses here, to the publisher, what
            # could be decoded but not encoded again (such as data nested too deeply).
            size = encoded_size(event)
        except (TypeError, LocalProtocolError) as exc:
            self._error(ref, BAD_FRAME, f"the event cannot be relayed: {exc}")
            return
        if size > self.limits.max_event_size:
            self.counters.count_limit("max_event_size")
            self._error(
                ref,
                TOO_LARGE,
                f"the event takes {size} bytes encoded; the most is {self.limits.max_event_size} "
                "(max_event_size: the message size limit less room for the frame)",
            )
            return
        delivered = self._delivered
        if delivered is not None:
            delivered.answered(event.topic)  # (a reply: its request can no longer be cancelled)
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

    def _within_rate(self) -> bool:
        """Take a token from each of the rate buckets, if each has one (else none)."""
        now = trio.current_time()
        buckets = self.rate_buckets
        has_tokens = [bucket.has_token(now) for bucket in buckets]  # (every one refilled)
        if all(has_tokens):
            for bucket in buckets:
                bucket.take()
            self._rate_refusals = 0
            return True
        self._rate_refusals += 1
        return False

    @property
    def _acks_send(self) -> trio.MemorySendChannel[tuple[int, PendingCommit]]:
        """Where persisted publishes wait for their ack, in order. The channel and the acker
        task are made at the first one: most connections never need them."""
        send = self._acks
        if send is None:
            send, receive = trio.open_memory_channel[tuple[int, PendingCommit]](math.inf)
            self._acks = send
            assert self._nursery is not None  # (publishes are read inside the nursery)
            self._nursery.start_soon(self._acker, receive)
        return send

    async def _acker(self, receive: trio.MemoryReceiveChannel[tuple[int, PendingCommit]]) -> None:
        """Answer persisted publishes in order, once stored: a whole commit's acks at once."""
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
                self._error(ref, STORE_FAILED, f"the event was not stored: {exc}")
            except trio.ClosedResourceError:
                self._error(ref, INTERNAL, "the broker is shutting down; the event was not stored")
            except Refused as exc:  # such as an id another publisher's event has
                self._error(ref, exc.code, f"the event was not stored: {exc}")
            except (ValueError, TypeError) as exc:  # refused by the store
                self._error(ref, BAD_FRAME, f"the event was not stored: {exc}")
            else:
                self._enqueue(Ack(ref=ref, id=event.id, seq=event.seq, duplicate=pending.duplicate))

    # -- subscriptions and history --------------------------------------------------------

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
        limit = self.limits.max_subscriptions
        if self.conn.attached_count >= limit:
            self.counters.count_limit("max_subscriptions")
            self._error(
                frame.id,
                LIMIT,
                f"this connection holds {limit} subscriptions, the most it may "
                "(max_subscriptions): unsubscribe one first",
            )
            return
        decision = self.access.check_subscribe(frame.pattern, frame.group)
        if decision is not None and not decision.allowed:
            self._error(
                frame.id,
                FORBIDDEN,
                f"user {self.user!r} may not subscribe to {frame.pattern!r}: {decision.reason}",
            )
            return
        sub = RemoteSubscription(self, frame.id, frame.pattern, frame.group)
        if decision is not None and decision.filter:
            sub.denied = decision
        self.conn.attach(frame.id, sub)
        # Where to resume if the connection drops before a stored event arrives.
        # (Not for a queue group member: it would replay what the other members handled.)
        resume = (
            self.bus.last_seq
            if self.bus.store is not None and since is None and frame.group is None
            else None
        )
        self._enqueue(Subscribed(id=frame.id, seq=resume))
        if since is None:
            sub.live = False  # (the retained values come first)
            self.bus.add_sink(sub)
            sub.live = True
            return
        # Replays run in the session's nursery; a connection has at most max_replays under
        # way (each holding a page of stored events), and waits for one to finish first.
        assert self._nursery is not None
        # A slot frees as the client reads what the replays send: waiting on the client now,
        # so its silence counts again (a client that stops reading is closed, as ever).
        self._processing = False
        try:
            await self._replay_slots.acquire()
        finally:
            self._processing = True
        sub.live = False  # (until the replay is done)
        try:
            sub.replay = await self.bus.add_sink_since(
                sub, since, on_done=partial(self._replay_done, sub), nursery=self._nursery
            )
        except BaseException:
            self._replay_slots.release()
            raise

    @property
    def _replay_slots(self) -> trio.Semaphore:
        """The ``since`` replays this connection may have under way (made at the first)."""
        replays = self._replays
        if replays is None:
            replays = self._replays = trio.Semaphore(self.limits.max_replays)
        return replays

    def _replay_done(self, sub: RemoteSubscription) -> None:
        """The ``since`` replay of *sub* ended: events now come as they are routed."""
        sub.live = True
        self._replay_slots.release()

    async def _history(self, frame: History) -> None:
        """Answer with the stored events that fit in one message (``more`` if others match)."""
        since: int | datetime | None = frame.since
        if frame.since is not None and frame.since < 0:
            self._error(
                frame.ref, BAD_FRAME, f"'since' must be a seq (0 or more), not {frame.since}"
            )
            return
        limit = max(0, min(frame.limit, MAX_HISTORY))
        budget = self.limits.max_message_size - MESSAGE_MARGIN - FRAME_OVERHEAD
        try:
            decision = self.access.check_subscribe(frame.pattern, None)
        except InvalidTopic as exc:
            self._error(frame.ref, INVALID_TOPIC, str(exc))
            return
        if decision is not None and not decision.allowed:
            self._error(
                frame.ref,
                FORBIDDEN,
                f"user {self.user!r} may not read the history of {frame.pattern!r}: "
                f"{decision.reason}",
            )
            return
        resume: int | None = None
        try:
            validate_pattern(frame.pattern)
            if frame.since_time is not None:
                since = parse_time(frame.since_time)
            if decision is None or not decision.filter:
                events, more = await read_history(self.bus, frame.pattern, since, limit, budget)
            else:
                events, more, resume = await read_history_filtered(
                    self.bus, frame.pattern, since, limit, budget, decision
                )
        except InvalidTopic as exc:
            self._error(frame.ref, INVALID_TOPIC, str(exc))
        except StoreUnavailable:
            self._error(frame.ref, NO_STORE, "this broker has no store: no history to read")
        except ValueError as exc:
            self._error(frame.ref, INTERNAL, str(exc))
        except StoreError as exc:
            self._error(frame.ref, STORE_FAILED, f"reading the store failed: {exc}")
        else:
            self._enqueue(
                HistoryResult(ref=frame.ref, events=tuple(events), more=more, resume=resume)
            )

    # -- requests -------------------------------------------------------------------------

    def _cancel(self, frame: Cancel) -> None:
        """The client gave up on one of its requests: tell whoever handles it."""
        now = trio.current_time()
        bucket = self._cancel_bucket
        if bucket is None:
            bucket = self._cancel_bucket = TokenBucket(CANCEL_RATE, CANCEL_BURST, now)
        if not bucket.has_token(now):
            self.counters.count_limit("cancel_rate")
            self._error(
                None,
                RATE_LIMITED,
                f"cancelling faster than allowed ({CANCEL_BURST} at once, then "
                f"{CANCEL_RATE:g} a second): the cancel of request {frame.id!r} was dropped",
            )
            return
        bucket.take()
        try:
            validate_topic(frame.topic)
            validate_topic(frame.reply_to)
        except InvalidTopic as exc:
            self._error(None, INVALID_TOPIC, f"cancel of request {frame.id!r}: {exc}")
            return
        refusal = (
            f"topic {frame.topic!r}: '$' topics are reserved for the broker"
            if is_reserved(frame.topic)
            else self.access.check_cancel(frame.topic, frame.reply_to)
        )
        if refusal is not None:
            self._error(None, FORBIDDEN, f"cancel of request {frame.id!r} refused: {refusal}")
            return
        cancel = cancel_event(frame.topic, frame.id, frame.reply_to, source=self.limits.name)
        self.bus.route_cancel(cancel)
