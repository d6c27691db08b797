"""The NATS connection: nats-py on an asyncio loop under trio-asyncio, driven from Trio.

nats-py is asyncio-only. :func:`open_nats` runs it on a trio-asyncio loop owned by the task
that opens it, for the duration of an ``async with`` block, and every other part of the
project (the cluster backplane, the JetStream store) talks to NATS through the
:class:`NatsConnection` it yields, from Trio.

Crossing between the loops costs about as much as a hundred publishes, so the connection
crosses in batches: :meth:`NatsConnection.publish_nowait` only queues, and one pump task hands
everything queued since its last pass to nats-py in one crossing; messages received on a
subscription are appended to a buffer on the asyncio side and the Trio side takes the whole
buffer at once (:meth:`NatsSubscription.receive_batch`). Both queues are bounded; what does not
fit is refused (:exc:`trio.WouldBlock`) or dropped, and counted.

The connection is opened in the background by default: :func:`open_nats` returns at once, and
:attr:`NatsConnection.connected` says when NATS is reachable (nats-py then reconnects by itself
after an outage, re-subscribing what was subscribed). ``wait=True`` makes opening wait for the
first connection instead (bounded by *connect_timeout*), for users that can do nothing
without NATS, such as a store.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import trio

from ._errors import ConnectionClosed, NoResponders
from ._util import open_service_nursery

if TYPE_CHECKING:
    import ssl

    from nats.aio.client import Client as _NatsClient
    from nats.aio.msg import Msg as _NatsMsg
    from nats.aio.subscription import Subscription as _NatsSub

__all__ = [
    "DEFAULT_MAX_PENDING",
    "NatsConnection",
    "NatsMessage",
    "NatsStatistics",
    "NatsSubscription",
    "open_nats",
]

T = TypeVar("T")
#: A message queued for publishing: subject, payload, headers, reply subject.
_Outgoing = tuple[str, bytes, dict[str, str] | None, str]

#: Messages queued for publishing (not yet handed to nats-py) before ``publish_nowait``
#: refuses, and messages received on one subscription and not yet taken before new ones are
#: dropped.
DEFAULT_MAX_PENDING: Final = 65_536
#: Seconds the first connection may take with ``wait=True``, and one connection attempt.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: Seconds between reconnect attempts to one server.
DEFAULT_RECONNECT_WAIT: Final = 0.5
#: Seconds leaving the block may spend handing over what is still queued.
CLOSE_TIMEOUT: Final = 2.0


def _import_nats() -> Any:
    try:
        import nats  # an optional dependency (the nats extra): imported when used
        import trio_asyncio
    except ImportError as exc:  # pragma: no cover (the test extra installs both)
        raise RuntimeError(
            "NATS support needs the nats extra: pip install 'trio-realtime[nats]'"
        ) from exc
    return nats, trio_asyncio


@attrs.frozen(slots=True)
class NatsMessage:
    """One message received from NATS."""

    #: The subject it was published to.
    subject: str
    #: Its payload.
    data: bytes
    #: Its headers (empty when it had none).
    headers: Mapping[str, str]
    #: Where a reply should go ("" when none).
    reply: str


@attrs.frozen(slots=True, kw_only=True)
class NatsStatistics:
    """A snapshot of what a :class:`NatsConnection` did (counters are totals)."""

    #: Whether NATS is reachable now.
    connected: bool
    #: The URL of the server connected to (None when not connected).
    server: str | None
    #: Times the connection was lost.
    disconnects: int
    #: Times it was re-established after a loss.
    reconnects: int
    #: Messages handed to nats-py for publishing.
    published: int
    #: Crossings from Trio to asyncio that carried publishes.
    publish_batches: int
    #: Messages queued and not yet handed over.
    pending: int
    #: Publishes refused because the queue was full.
    refused: int
    #: Messages received on all subscriptions.
    received: int
    #: Messages dropped because a subscription's buffer was full (or nats-py called the
    #: subscription a slow consumer).
    dropped: int
    #: Errors nats-py reported (each also logged by the user of the connection, if it wants).
    errors: int
    #: Seconds the oldest message queued (not yet handed over) has waited: how far behind
    #: publishing is (0 when nothing is queued).
    pending_seconds: float = 0.0


class NatsSubscription:
    """A subscription on a :class:`NatsConnection` (from :meth:`NatsConnection.subscribe`)."""

    def __init__(self, connection: NatsConnection, subject: str, queue: str, max_pending: int):
        self.subject: Final = subject
        self.queue: Final = queue
        self._connection = connection
        self._max_pending = max_pending
        self._buffer: deque[NatsMessage] = deque()
        self._ready = trio.Event()
        self._closed = False
        self._sub: _NatsSub | None = None
        #: Messages dropped because the buffer was full (or nats-py's own queue of the
        #: subscription was: a slow consumer).
        self.dropped = 0
        #: Why NATS refused the subscription, if it did (it is then ended).
        self.error: BaseException | None = None

    @property
    def buffered(self) -> int:
        """Messages received and not yet taken."""
        return len(self._buffer)

    async def _deliver(self, msg: _NatsMsg) -> None:
        """The nats-py callback (runs on the asyncio loop, in this thread): buffer, wake."""
        if self._closed:
            return  # ended here, and NATS not told yet: nobody will take it
        if len(self._buffer) >= self._max_pending:
            self.dropped += 1
            self._connection._dropped += 1
            return
        self._connection._received += 1
        self._buffer.append(NatsMessage(msg.subject, msg.data, msg.headers or {}, msg.reply))
        self._ready.set()

    async def receive_batch(self) -> list[NatsMessage]:
        """Wait for messages and return all that arrived since the last call, in order.

        Raises:
            trio.ClosedResourceError: if the subscription was ended.
        """
        while not self._buffer:
            if self._closed:
                raise trio.ClosedResourceError("the NATS subscription was ended")
            await self._ready.wait()
            self._ready = trio.Event()
        batch = list(self._buffer)
        self._buffer.clear()
        return batch

    def unsubscribe_nowait(self) -> None:
        """End the subscription (idempotent) without waiting: messages still buffered are
        discarded at once, and NATS is told in order with what the connection publishes
        (see :meth:`NatsConnection.subscribe_nowait`)."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._ready.set()
        if not self._connection._closed:
            self._connection._queue_operation(_Unsubscribe(self))

    async def unsubscribe(self) -> None:
        """End the subscription (idempotent); messages still buffered are discarded."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._ready.set()
        sub, self._sub = self._sub, None
        if sub is not None and not self._connection._nc.is_closed:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await self._connection.run(sub.unsubscribe)


@attrs.frozen(slots=True)
class _Subscribe:
    """Queued in the outbox: subscribe *subscription* (in order with the publishes)."""

    subscription: NatsSubscription


@attrs.frozen(slots=True)
class _Unsubscribe:
    """Queued in the outbox: unsubscribe *subscription*."""

    subscription: NatsSubscription


@attrs.define(slots=True)
class _Flush:
    """Queued in the outbox: ask the server to confirm all before it; then set *done*."""

    done: trio.Event
    error: BaseException | None = None


_Operation = _Subscribe | _Unsubscribe | _Flush


class NatsConnection:
    """A connection to NATS, used from Trio (from :func:`open_nats`)."""

    def __init__(
        self, nc: _NatsClient, aio_as_trio: Any, errors: type[Exception], max_pending: int
    ) -> None:
        self._nc = nc
        self._errors_type = errors
        self._aio_as_trio = aio_as_trio
        self._max_pending = max_pending
        self._outbox: list[_Outgoing | _Operation] = []
        self._outbox_since = 0.0  # when the oldest message queued was
        self._outbox_ready = trio.Event()
        self._handing = trio.Event()  # set once the pump's batch in flight is handed over
        self._handing.set()
        self._changed = trio.Event()
        self._closed = False
        self._ever_connected = False
        self._disconnects = 0
        self._reconnects = 0
        self._published = 0
        self._batches = 0
        self._refused = 0
        self._received = 0
        self._dropped = 0
        self._errors = 0
        #: The last error nats-py reported (for the user's log), or None.
        self.last_error: BaseException | None = None

    # -- state ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether NATS is reachable now."""
        return bool(self._nc.is_connected)

    @property
    def pending(self) -> int:
        """Messages queued and not yet handed over."""
        return len(self._outbox)

    @property
    def client(self) -> _NatsClient:
        """The nats-py client, for calls made through :meth:`run` (JetStream, for one)."""
        return self._nc

    async def wait_changed(self) -> bool:
        """Wait until the connection is established or lost; return :attr:`connected`."""
        await self._changed.wait()
        return self.connected

    def _state_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_connected(self) -> None:
        """Wait until NATS is reachable (at once if it is)."""
        while not self.connected:
            await self.wait_changed()

    def statistics(self) -> NatsStatistics:
        """A snapshot of the connection's :class:`NatsStatistics`."""
        url = self._nc.connected_url if self.connected else None
        return NatsStatistics(
            connected=self.connected,
            server=None if url is None else url.geturl(),
            disconnects=self._disconnects,
            reconnects=self._reconnects,
            published=self._published,
            publish_batches=self._batches,
            pending=len(self._outbox),
            refused=self._refused,
            received=self._received,
            dropped=self._dropped,
            errors=self._errors,
            pending_seconds=(trio.current_time() - self._outbox_since if self._outbox else 0.0),
        )

    # -- crossing into asyncio --------------------------------------------------------------

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run the asyncio coroutine function *fn* on the connection's loop; its result.

        One crossing: use it for calls that are not per message (JetStream management, a
        store's append of a whole batch), with :attr:`client`. Any task of the Trio run may
        call it while the connection is open, whether or not it runs inside the block that
        opened it.
        """
        if self._closed:
            raise trio.ClosedResourceError("the NATS connection is closed")
        result: T = await self._aio_as_trio(fn)(*args, **kwargs)
        return result

    # -- publishing --------------------------------------------------------------------------

    def publish_nowait(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        """Queue a message for publishing; the pump hands it to nats-py with its batch.

        Messages are published in the order they were queued. While NATS is unreachable they
        wait in the queue (bounded; see ``max_pending`` of :func:`open_nats`).

        Raises:
            trio.WouldBlock: if the queue is full (the message is not queued; counted).
            trio.ClosedResourceError: if the connection is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the NATS connection is closed")
        outbox = self._outbox
        if len(outbox) >= self._max_pending:
            self._refused += 1
            raise trio.WouldBlock
        if not outbox:
            self._outbox_since = trio.current_time()
        outbox.append((subject, data, headers, reply))
        self._outbox_ready.set()

    def _queue_operation(self, operation: _Operation) -> None:
        """Queue a subscription's (un)subscribing with the publishes (never refused: their
        number is bounded by the subscriptions the user holds)."""
        if not self._outbox:
            self._outbox_since = trio.current_time()
        self._outbox.append(operation)
        self._outbox_ready.set()

    async def flush(self) -> None:
        """Wait until everything queued so far was handed over and sent to the server.

        Raises:
            ConnectionClosed: if NATS did not confirm (it is unreachable).
        """
        if self._closed:
            raise trio.ClosedResourceError("the NATS connection is closed")
        # Queued behind what is queued, and done by the pump: no crossing from this task,
        # which may run outside the block that opened the connection.
        flush = _Flush(trio.Event())
        self._queue_operation(flush)
        await flush.done.wait()
        if flush.error is not None:
            raise ConnectionClosed(f"NATS did not confirm the flush: {flush.error!r}")

    async def _flush_at_close(self) -> None:
        """(closing, shielded) Hand over what is still queued and have the server confirm it,
        from this task: the pump may have been cancelled with the block."""
        await self._handing.wait()  # (after the pump's batch in flight, if any: in order)
        batch, self._outbox = self._outbox, []
        if batch:
            await self.run(self._publish_batch, batch)
        await self._flush([item for item in batch if isinstance(item, _Flush)])

    async def _pump(self) -> None:
        """Hand what is queued to nats-py, one crossing per batch, while connected."""
        while True:
            while not self._outbox:
                await self._outbox_ready.wait()
                self._outbox_ready = trio.Event()
            await self.wait_connected()
            batch, self._outbox = self._outbox, []
            # Never half handed over: cancelled (the block closing), the pump finishes the
            # batch first, which takes no waiting (nats-py only buffers what it is given), and
            # closing flushes it.
            self._handing = handing = trio.Event()
            with trio.CancelScope(shield=True):
                try:
                    await self.run(self._publish_batch, batch)
                finally:
                    handing.set()
            self._batches += 1
            flushes = [item for item in batch if isinstance(item, _Flush)]
            if flushes:
                await self._flush(flushes)

    async def _flush(self, flushes: list[_Flush]) -> None:
        """Have the server confirm what was handed over; then the *flushes* are done."""
        try:
            await self.run(self._nc.flush)
        except (self._errors_type, OSError, TimeoutError) as exc:
            for flush in flushes:
                flush.error = exc
        except BaseException:
            for flush in flushes:
                flush.error = trio.ClosedResourceError("the connection closed")
            raise
        finally:
            for flush in flushes:
                flush.done.set()

    async def _publish_batch(self, batch: list[_Outgoing | _Operation]) -> None:
        """(asyncio side) Publish a batch; what nats-py refuses is counted as refused."""
        publish = self._nc.publish
        for item in batch:
            if not isinstance(item, tuple):
                await self._operate(item)
                continue
            subject, data, headers, reply = item
            try:
                await publish(subject, data, reply=reply, headers=headers)
            except (self._errors_type, OSError) as exc:  # its buffer limit, or closing
                self._refused += 1
                self.last_error = exc
            else:
                self._published += 1

    async def _operate(self, operation: _Operation) -> None:
        """(asyncio side) Subscribe or unsubscribe, in the batch's order (a flush is done by
        the pump, once the batch is handed over)."""
        if isinstance(operation, _Flush):
            return
        subscription = operation.subscription
        try:
            if isinstance(operation, _Unsubscribe):
                sub, subscription._sub = subscription._sub, None
                if sub is not None:
                    await sub.unsubscribe()
            elif not subscription._closed:  # (not ended before its turn came)
                subscription._sub = await self._nc.subscribe(
                    subscription.subject,
                    queue=subscription.queue,
                    cb=subscription._deliver,
                    pending_msgs_limit=subscription._max_pending,
                )
        except (self._errors_type, OSError) as exc:  # a subject NATS refuses, or closing
            self._errors += 1
            self.last_error = exc
            if isinstance(operation, _Subscribe):
                subscription.error = exc
                subscription._closed = True
                subscription._ready.set()

    # -- subscribing ------------------------------------------------------------------------

    def subscribe_nowait(
        self, subject: str, *, queue: str = "", max_pending: int | None = None
    ) -> NatsSubscription:
        """Subscribe to *subject* (in the queue group *queue*, if given) without waiting.

        The subscription is queued with the publishes and handed to nats-py in their order:
        the server has it before any message this connection publishes after this call (so a
        reply to a request published next cannot pass it by). It is never refused for room.
        If NATS refuses the subject, the subscription ends (:attr:`NatsSubscription.error`).

        Raises:
            trio.ClosedResourceError: if the connection is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the NATS connection is closed")
        subscription = NatsSubscription(
            self, subject, queue, self._max_pending if max_pending is None else max_pending
        )
        self._queue_operation(_Subscribe(subscription))
        return subscription

    async def subscribe_through(
        self,
        subscribe: Callable[..., Awaitable[Any]],
        subject: str,
        *,
        max_pending: int | None = None,
        **options: Any,
    ) -> NatsSubscription:
        """Subscribe to *subject* with *subscribe*, a nats-py function that takes ``cb=``
        (a JetStream context's ``subscribe``, for an ordered consumer of a stream: the
        cluster's retained values use it), passing it *options*; its messages are received as
        those of :meth:`subscribe`. One crossing.
        """
        subscription = NatsSubscription(
            self, subject, "", self._max_pending if max_pending is None else max_pending
        )
        subscription._sub = await self.run(subscribe, subject, cb=subscription._deliver, **options)
        return subscription

    async def subscribe(
        self, subject: str, *, queue: str = "", max_pending: int | None = None
    ) -> NatsSubscription:
        """Subscribe to *subject* (NATS wildcards), in the queue group *queue* if given.

        The subscription survives reconnects (nats-py subscribes again).
        """
        subscription = NatsSubscription(
            self, subject, queue, self._max_pending if max_pending is None else max_pending
        )
        subscription._sub = await self.run(
            self._nc.subscribe,
            subject,
            queue=queue,
            cb=subscription._deliver,
            pending_msgs_limit=subscription._max_pending,
        )
        return subscription

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 1.0,
    ) -> NatsMessage:
        """Publish a request and wait for its reply (nats-py's request: one crossing).

        Raises:
            NoResponders: if nobody subscribes to *subject* (the server says so at once).
            TimeoutError: if no reply came within *timeout*.
        """
        nats, _ = _import_nats()
        try:
            msg = await self.run(self._nc.request, subject, data, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise NoResponders(subject) from None
        except nats.errors.TimeoutError:
            raise TimeoutError(f"no reply from {subject!r} within {timeout} s") from None
        return NatsMessage(msg.subject, msg.data, msg.headers or {}, msg.reply)


@asynccontextmanager
async def open_nats(
    servers: str | Sequence[str],
    *,
    name: str | None = None,
    no_echo: bool = False,
    wait: bool = False,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    reconnect_wait: float = DEFAULT_RECONNECT_WAIT,
    max_pending: int = DEFAULT_MAX_PENDING,
    tls: ssl.SSLContext | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
) -> AsyncIterator[NatsConnection]:
    """Connect to NATS at *servers* for the duration of an ``async with`` block.

    Args:
        servers: ``nats://host:port`` (or ``tls://``) URLs; nats-py picks among them and
            fails over.
        name: The connection's name, as the server's monitoring shows it.
        no_echo: Don't deliver this connection's own publishes back to it.
        wait: Wait for the first connection (at most *connect_timeout* seconds) before
            entering the block; otherwise the block starts at once and the connection is
            established in the background, retried every *reconnect_wait* seconds until it is.
        connect_timeout: See *wait*; also bounds one connection attempt.
        reconnect_wait: Seconds between attempts on one server.
        max_pending: Bound of the publish queue and of each subscription's buffer.
        tls: The TLS context for ``tls://`` servers.
        user: User name, with *password*.
        password: Password, with *user*.
        token: Authentication token.

    Raises:
        ConnectionClosed: with ``wait=True``, if NATS was not reachable in time.
        RuntimeError: if the ``nats`` extra is not installed.
    """
    if max_pending < 1:
        raise ValueError(f"max_pending must be at least 1, not {max_pending}")
    nats, trio_asyncio = _import_nats()
    urls = [servers] if isinstance(servers, str) else list(servers)
    if not urls:
        raise ValueError("no NATS server given")
    nc = nats.NATS()
    connection = NatsConnection(nc, trio_asyncio.aio_as_trio, nats.errors.Error, max_pending)

    async def disconnected() -> None:
        connection._disconnects += 1
        connection._state_changed()

    async def reconnected() -> None:
        connection._reconnects += 1
        connection._state_changed()

    async def error(exc: Exception) -> None:
        connection._errors += 1
        connection.last_error = exc
        if isinstance(exc, nats.errors.SlowConsumerError):
            connection._dropped += 1
            # nats-py's own queue of the subscription was full: count the drop there too
            subscription = getattr(getattr(exc.sub, "_cb", None), "__self__", None)
            if isinstance(subscription, NatsSubscription):
                subscription.dropped += 1

    options: dict[str, Any] = {
        "servers": urls,
        "name": name,
        "no_echo": no_echo,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": reconnect_wait,
        "connect_timeout": max(1, math.ceil(connect_timeout)),
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
        "tls": tls,
        "user": user,
        "password": password,
        "token": token,
    }

    async def connect(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not wait:
            task_status.started()
        await trio_asyncio.aio_as_trio(nc.connect)(**options)
        connection._ever_connected = True
        connection._state_changed()
        task_status.started()

    failure: BaseException | None = None  # what the block (or the first connect) raised
    try:
        async with trio_asyncio.open_loop() as loop, open_service_nursery() as nursery:
            # Bound to this loop, so that any task of the run may use the connection (one
            # that a store holds, say), not only the tasks started inside this block.
            connection._aio_as_trio = functools.partial(trio_asyncio.aio_as_trio, loop=loop)
            try:
                if wait:
                    with trio.move_on_after(connect_timeout):
                        await nursery.start(connect)
                    _check_reachable(connection, urls, connect_timeout)
                else:
                    nursery.start_soon(connect)
                nursery.start_soon(connection._pump)
                yield connection
            except BaseException as exc:
                failure = exc
                raise
            finally:
                with trio.CancelScope(shield=True):
                    if connection.connected:
                        with trio.move_on_after(CLOSE_TIMEOUT):
                            await connection._flush_at_close()
                    nursery.cancel_scope.cancel()
                    connection._closed = True
                    for item in connection._outbox:  # (nobody may wait for ever)
                        if isinstance(item, _Flush):
                            item.error = trio.ClosedResourceError("the connection closed")
                            item.done.set()
                    if connection._ever_connected:  # else nats-py has nothing to close yet
                        with trio.move_on_after(CLOSE_TIMEOUT):
                            await trio_asyncio.aio_as_trio(nc.close)()
    except BaseExceptionGroup as group:
        # trio-asyncio's loop runs in nurseries of its own, which wrap what the block raised:
        # give the block's exception back as itself when it is all there is.
        if failure is not None and _only(group, failure):
            raise failure from None
        raise


def _check_reachable(connection: NatsConnection, urls: list[str], timeout: float) -> None:
    if not connection._ever_connected:
        where = ", ".join(urls)
        raise ConnectionClosed(f"NATS at {where} was not reachable within {timeout} s")


def _only(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    """Whether every exception in *group* (nested groups flattened) is *exc*."""
    return all(
        _only(member, exc) if isinstance(member, BaseExceptionGroup) else member is exc
        for member in group.exceptions
    )
