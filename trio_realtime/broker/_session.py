"""One connected client on the broker's side: its nursery, its queue, its limits.

A session runs its tasks in its own nursery: the reader (the session's main task: it reads
messages, feeds the sans-IO :class:`~trio_realtime.protocol.Connection` and acts on each
frame), the writer (the only task that sends on the socket: it drains the outgoing queue,
batching frames into one message when a backlog exists, through the protocol's
:class:`~trio_realtime.protocol.MessageBuilder`), the acker (from the first persisted publish),
and the ``since`` replays of its subscriptions. Every other path (pings, pongs, error frames,
the error announcing a close) queues for the writer. Its heartbeat is no task of its own: the
broker's :class:`~trio_realtime.broker._limits.HeartbeatTimers` calls
:meth:`Session.heartbeat_due` at each of its deadlines.

Each remote subscription is a sink in the broker's bus; a slow client never stalls anyone
else: its queue drops the oldest events (reported with ``gap`` frames) or, if so configured,
the client is disconnected with close code 4001.

A session knows the broker only through a :class:`SessionContext`: the bus, the limits, the
counters it adds to, the two calls that register it with the broker, and the timers that run
its heartbeat. What its client may do (its user, permissions, inbox, leave to reply and
expiry) is its :class:`~trio_realtime.broker._access.Access`.

A session is built in three layers, a module each: sending is
:class:`~trio_realtime.broker._outbox.SessionOutbox`'s (the subscriptions' sinks, the outgoing
queue, the writer, the close); acting on the client's frames (publish, subscribe, history,
cancel) is :class:`~trio_realtime.broker._handlers.SessionHandlers`'s; :class:`Session`, here,
lives: the handshake and authentication, the reader that hands each frame on, the heartbeat
and the credential's expiry.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._errors import ConnectionClosed, RemoteProtocolError
from .._util import open_service_nursery, utf8_size
from ..bus._bus import Bus
from ..protocol import (
    AUTH_EXPIRED,
    AUTH_FAILED,
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT,
    CLOSE_POLICY,
    CLOSE_PROTOCOL,
    PROTOCOL,
    RATE_LIMITED,
    TOO_LARGE,
    Cancel,
    Error,
    FrameError,
    Heartbeat,
    HeartbeatAction,
    Hello,
    History,
    Ping,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    Subscribe,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)
from ..security import Authenticator, AuthFailed, HandshakeInfo
from ._handlers import SessionHandlers
from ._limits import (
    MAX_ANSWER_BACKLOG,
    REFRESH_BURST,
    REFRESH_RATE,
    REFRESH_REFUSALS_BEFORE_CLOSE,
    BrokerCounters,
    HeartbeatTimers,
    SessionLimits,
    TokenBucket,
)

if TYPE_CHECKING:
    from .._transport import WebSocketTransport

__all__ = ["BrokerCounters", "Session", "SessionContext", "SessionLimits"]

logger = logging.getLogger("trio_realtime.broker")

#: The longest ``hello.instance`` used to scope deduplication; longer ones are cut.
MAX_INSTANCE_LENGTH: Final = 256


# ---------------------------------------------------------------------------------------------
# What a session knows of its broker


@attrs.frozen(kw_only=True)
class SessionContext:
    """What a session gets from its broker.

    Attributes:
        bus: The bus its subscriptions and publishes go to.
        limits: The settings it applies.
        counters: Where it counts errors, limits hit and events.
        started: Called once the handshake is done; False if the broker is shutting down
            (the session then leaves).
        ended: Called when a started session ends.
        heartbeats: The timers that run the sessions' heartbeats.
        auth: Who checks the ``hello`` token, or None: every client is anonymous, with full
            access.
        auth_failed: Called when the authenticator refused a client, with the reason (which
            never holds token material).
    """

    bus: Bus
    limits: SessionLimits
    counters: BrokerCounters
    started: Callable[[Session], Awaitable[bool]]
    ended: Callable[[Session], Awaitable[None]]
    heartbeats: HeartbeatTimers
    auth: Authenticator | None = None
    auth_failed: Callable[[Session, str], None] = lambda session, reason: None


class Session(SessionHandlers):
    """The broker's side of one client connection. Created and run by the broker."""

    # (Read from the class until set: see SessionOutbox.)
    client: str | None = None
    _refresh_bucket: TokenBucket | None = None  # (made at the first refresh)

    def __init__(
        self, context: SessionContext, transport: WebSocketTransport, session_id: str
    ) -> None:
        self.context = context
        super().__init__(context.limits, context.counters, context.bus, transport, session_id)
        self._heartbeat_policy = Heartbeat(context.limits.heartbeat, trio.current_time())

    def __repr__(self) -> str:
        return f"<Session {self.id} client={self.client!r} address={self.address}>"

    # -- the session's life ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; tidy up the client's subscriptions."""
        try:
            async with open_service_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                hello = await self._handshake()
                if hello is None:
                    return
                if not await self.context.started(self):
                    await self.close(CLOSE_GOING_AWAY, "broker shutting down")
                    return
                heartbeats = self.context.heartbeats
                heartbeat = heartbeats.add(self, trio.current_time())
                try:
                    if self.context.auth is not None:
                        nursery.start_soon(self._watch_expiry)
                    await self._reader()
                finally:
                    heartbeats.remove(heartbeat)
                    self._drop_subscriptions()
                    await self.context.ended(self)
        except ConnectionClosed:
            pass

    async def _handshake(self) -> Hello | None:
        """Read until the client's ``hello``; answer ``welcome``. None if the client left, or
        was refused (then the connection is closed)."""
        limits = self.limits
        refusal: FrameError | RemoteProtocolError | None = None
        with trio.move_on_after(limits.handshake_timeout):
            while refusal is None:
                try:
                    text = await self.transport.receive()
                except RemoteProtocolError as exc:  # binary, or too big: fatal before hello
                    refusal = exc
                    break
                self._heartbeat_policy.received(trio.current_time())
                self.conn.receive_text(text)
                for item in self.conn.frames():
                    if type(item) is FrameError:  # fatal before hello
                        refusal = item
                        break
                    if type(item) is Hello:
                        self.client = item.client
                        refusal = await self._authenticate(item)
                        if refusal is not None:
                            break
                        if item.instance:
                            instance = item.instance[:MAX_INSTANCE_LENGTH]
                            # (a user's instance: nobody else can claim its published ids)
                            user = self.access.user
                            who = "" if user is None else f"user:{user}:"
                            self._publisher = f"{who}instance:{instance}"
                        welcome = Welcome(
                            session=self.id,
                            broker=limits.name,
                            heartbeat=limits.heartbeat,
                            epoch=self.bus.store.epoch if self.bus.store is not None else None,
                            user=self.access.user,
                            inbox=self.access.inbox,
                            expires_in=self.access.expires_in(),
                            nodes=limits.nodes,
                        )
                        # Sent through the connection now (it is open from here on: the
                        # frames the client pipelined come out next), queued as text.
                        self._enqueue(self.conn.send(welcome))
                        return item
        if refusal is not None:  # (refused outside the timeout: the refusal takes its time)
            await self._refuse(refusal)
            return None
        self.counters.count_error("handshake_timeout")
        message = f"no 'hello' within the handshake timeout ({limits.handshake_timeout:g} s)"
        await self.close(
            CLOSE_PROTOCOL,
            "no 'hello' within the handshake timeout",
            error=Error(code=PROTOCOL, message=message),
        )
        return None

    async def _authenticate(self, hello: Hello) -> RemoteProtocolError | None:
        """Ask the authenticator who the client is; the refusal to send, if it says nobody."""
        auth = self.context.auth
        if auth is None:
            return None
        handshake = self._handshake_info()
        try:
            identity = await auth.authenticate(hello.token, handshake)
        except AuthFailed as exc:
            self.context.auth_failed(self, exc.reason)
            return RemoteProtocolError("authentication failed", code=AUTH_FAILED)
        self.access.take(identity)
        return None

    def _handshake_info(self) -> HandshakeInfo:
        """What the authenticator may know of the connection besides its token."""
        transport = self.transport
        return HandshakeInfo(
            remote=self.address,
            subprotocol=transport.subprotocol,
            certificate_subject=transport.certificate_subject,
        )

    async def _watch_expiry(self) -> None:
        """Close the connection (``auth_expired``, 1008) when its credential expires; a
        ``refresh`` moves the deadline."""
        await self.access.wait_expired()
        self.counters.count_error(AUTH_EXPIRED)
        await self.close(
            CLOSE_POLICY,
            "credential expired",
            error=Error(
                code=AUTH_EXPIRED,
                message="this connection's credential expired: connect again with a new one, "
                "or send 'refresh' before it expires",
            ),
        )
        self._nursery_cancel()

    async def _refresh(self, frame: Refresh) -> None:
        """Take a new credential for the same user; end the subscriptions it no longer
        allows."""
        now = trio.current_time()
        bucket = self._refresh_bucket
        if bucket is None:
            bucket = self._refresh_bucket = TokenBucket(REFRESH_RATE, REFRESH_BURST, now)
        if not bucket.has_token(now):
            self._error(
                frame.ref,
                RATE_LIMITED,
                f"refreshing faster than allowed ({REFRESH_BURST} at once, then one every "
                f"{1 / REFRESH_RATE:g} s): the token was not checked",
            )
            return
        bucket.take()
        auth = self.context.auth
        if auth is None:  # nothing to refresh: every client is anonymous, with full access
            self._enqueue(Refreshed(ref=frame.ref))
            return
        handshake = self._handshake_info()
        try:
            with trio.fail_after(self.limits.handshake_timeout):
                identity = await auth.authenticate(frame.token, handshake)
        except AuthFailed as exc:
            await self._refresh_refused(frame.ref, exc.reason)
            return
        except trio.TooSlowError:
            await self._refresh_refused(frame.ref, "the authenticator did not answer in time")
            return
        access = self.access
        if identity.user != access.user:
            why = f"the credential names user {identity.user!r}, not {access.user!r}"
            await self._refresh_refused(frame.ref, why, note=" (it names another user)")
            return
        access.refused_refreshes = 0
        access.take(identity)
        for sub_id, sub in self.conn.subscriptions():
            decision = access.check_subscribe(sub.pattern, sub.group)
            if decision is not None and not decision.allowed:
                self._end_subscription(sub_id, sub)
                self._enqueue(
                    Unsubscribed(
                        id=sub_id,
                        reason=f"the refreshed permissions of user {access.user!r} no longer "
                        f"allow it: {decision.reason}",
                    )
                )
            else:
                sub.denied = decision if decision is not None and decision.filter else None
        self._enqueue(Refreshed(ref=frame.ref, user=access.user, expires_in=access.expires_in()))

    async def _refresh_refused(self, ref: int | None, reason: str, *, note: str = "") -> None:
        """Tell the refusal of a ``refresh`` (not fatal, unless it is the
        :data:`REFRESH_REFUSALS_BEFORE_CLOSE`-th in a row): *reason* to the log and
        ``$sys.auth.failed``, *note* to the client."""
        self.context.auth_failed(self, f"refresh: {reason}")
        access = self.access
        access.refused_refreshes += 1
        if access.refused_refreshes >= REFRESH_REFUSALS_BEFORE_CLOSE:
            await self._refuse(
                RemoteProtocolError(
                    f"{access.refused_refreshes} refresh tokens in a row were refused",
                    code=AUTH_FAILED,
                    ref=ref,
                )
            )
            self._nursery_cancel()
            return
        message = f"the new credential was refused{note}; the connection keeps its current one"
        self._error(ref, AUTH_FAILED, message)

    def heartbeat_due(self, now: float) -> float | None:
        """Ping a client silent for an interval; close it (4002) if the ping gets no answer in
        time (the protocol's :class:`~trio_realtime.protocol.Heartbeat` policy). Called by
        the broker's :class:`~trio_realtime.broker._limits.HeartbeatTimers` at the deadline
        this returned last: the next deadline, or None once the session is closing."""
        policy = self._heartbeat_policy
        while True:
            action, deadline = policy.poll(now)
            if action is HeartbeatAction.WAIT:
                return deadline
            if action is HeartbeatAction.PING:
                if self._processing:
                    # Busy with the client's frames (waiting on the bus): not the client's
                    # silence. The ping still tells the client that the broker is alive.
                    policy.received(now)
                self._enqueue(Ping())
            elif self._processing:
                policy.received(now)
            else:
                self.counters.count_error("heartbeat_timeout")
                assert self._nursery is not None  # (registered while the nursery is open)
                self._nursery.start_soon(self._close_silent)
                return None

    async def _close_silent(self) -> None:
        """The client did not answer the heartbeat's ping: close it (4002)."""
        await self.close(CLOSE_HEARTBEAT, "heartbeat timeout")
        self._nursery_cancel()

    # -- reading and acting ---------------------------------------------------------------

    async def _reader(self) -> None:
        conn = self.conn
        policy = self._heartbeat_policy
        max_pending_bytes = self._max_pending_bytes
        while True:
            # While acting on the client's frames (which may wait on the bus), silence from
            # the client is ours: the heartbeat does not count it.
            self._processing = True
            for item in conn.frames():
                if type(item) is Publish:  # the bulk of the traffic: no dispatch
                    await self._publish(item)
                elif type(item) is FrameError:
                    if item.fatal:
                        await self._refuse(item)
                        return
                    self.counters.count_error(item.code)
                    self._enqueue(item.to_frame())
                else:
                    await self._handle(item)
                    # One message may hold thousands of frames: let other connections in
                    # between them. (Publishes yield in the bus, every few.)
                    await trio.lowlevel.checkpoint()
                # A client that sends requests but does not read the answers is not read
                # either until it does (TCP then pushes back on it): checked between frames,
                # since one message may ask for many answers.
                if (
                    self._answer_bytes > max_pending_bytes
                    or self._queued_control > MAX_ANSWER_BACKLOG
                ):
                    await self._wait_answers_read()
            self._processing = False
            policy.received(trio.current_time())
            try:
                text = await self.transport.receive()
            except ConnectionClosed:
                return
            except RemoteProtocolError as exc:  # a binary message, or one too big
                policy.received(trio.current_time())
                if exc.code == TOO_LARGE:  # fatal: answered, then closed with 1009
                    await self._refuse(exc)
                    return
                self.counters.count_error(exc.code)
                self._enqueue(Error(ref=exc.ref, code=exc.code, message=str(exc)))
                continue
            policy.received(trio.current_time())
            self.counters.bytes_in += utf8_size(text)
            conn.receive_text(text)

    async def _wait_answers_read(self) -> None:
        limit = self._max_pending_bytes
        # Waiting on the client now: its silence counts again, so a client that reads
        # nothing for a heartbeat interval is closed (it cannot answer the ping unread).
        self._processing = False
        while (self._queued_control > MAX_ANSWER_BACKLOG or self._answer_bytes > limit) and not (
            self._closing or self._slow
        ):
            await self._room_lot.park()
        self._processing = True

    async def _handle(self, frame: Any) -> None:
        kind = type(frame)
        if kind is Publish:
            await self._publish(frame)
        elif kind is Subscribe:
            await self._subscribe(frame)
        elif kind is Unsubscribe:
            # (the connection forgets the id once this frame is handled)
            sub = self.conn.subscription(frame.id)
            if sub is not None:
                self._end_subscription(frame.id, sub)
            self._enqueue(Unsubscribed(id=frame.id))
        elif kind is Ping:
            self._enqueue(Pong())
        elif kind is History:
            await self._history(frame)  # one at a time: a client cannot pile up store reads
        elif kind is Refresh:
            await self._refresh(frame)
        elif kind is Cancel:
            self._cancel(frame)
        # Pong: its arrival already counts as a sign of life.
