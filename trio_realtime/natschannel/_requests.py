"""A NATS channel's requests: one reply inbox, and cancels for the responders.

A channel subscribes once, on its first request, to an inbox of its own,
``_INBOX.<unique>.*`` (NATS's inbox convention, so that any NATS responder answers it), and
publishes each request, with the connection's other messages, with the reply subject
``_INBOX.<unique>.<n>``: the reply, or NATS's no-responders status (a message with the header
``Status: 503``, which the server sends at once when nothing subscribes to the subject), comes
back on the inbox and goes to the request waiting for it. Requests cross into nats-py with the
connection's batches, not one crossing each.

A request given up on (cancelled, or timed out) sends a cancel: the bus's cancel event
(:func:`~trio_realtime.bus._requests.cancel_event`: the request's id and reply subject) on
the subject ``<prefix>c.<topic>``, which each ``serve`` block of a channel subscribes to for
its pattern: the one handling the request cancels its handler, as on a bus.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from .._errors import ConnectionClosed, InvalidTopic
from .._event import Event, new_event_id
from .._nats import CLOSE_TIMEOUT, NatsConnection, NatsMessage, NatsSubscription
from .._nats_wire import INBOX_SUBJECT_PREFIX, decode, encode
from .._topics import validate_topic
from ..bus._requests import Answering, cancel_event, read_cancel

__all__ = ["STATUS_HEADER", "Requests", "cancels"]

logger = logging.getLogger("trio_realtime.natschannel")

#: The header of a status message from the NATS server; ``503`` is "no responders".
STATUS_HEADER: Final = "Status"
_NO_RESPONDERS: Final = "503"


class _Waiter:
    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: NatsMessage | None = None
        self.error: BaseException | None = None


class Requests:
    """A channel's requests in flight, and its reply inbox (see the module's docstring)."""

    def __init__(
        self, connection: NatsConnection, nursery: trio.Nursery, prefix: str, source: str
    ) -> None:
        self._connection = connection
        self._nursery = nursery
        self._cancel_prefix = prefix + "c."
        self._source = source
        #: The inbox: replies come on its subjects.
        self.inbox = INBOX_SUBJECT_PREFIX + new_event_id()
        self._ids = itertools.count(1)
        self._waiting: dict[str, _Waiter] = {}
        self._ready: trio.Event | None = None
        self._closed = False
        #: Replies that came when no request waited for them (given up on, or answered twice).
        self.late = 0
        #: Requests given up on (cancelled, or timed out), whose responders were told.
        self.cancelled = 0

    async def _open_inbox(self) -> None:
        """Subscribe to the inbox, once (in place at the server when this returns)."""
        if self._ready is not None:
            await self._ready.wait()
            return
        self._ready = trio.Event()
        subscription = await self._connection.subscribe(self.inbox + ".*")
        if self._connection.connected:
            await self._connection.flush()
        self._nursery.start_soon(self._receive, subscription)
        self._ready.set()

    async def _receive(self, subscription: NatsSubscription) -> None:
        while True:
            try:
                batch = await subscription.receive_batch()
            except trio.ClosedResourceError:
                return
            for message in batch:
                waiter = self._waiting.get(message.subject.rpartition(".")[2])
                if waiter is None or waiter.done.is_set():
                    self.late += 1
                    continue
                waiter.reply = message
                waiter.done.set()

    async def send(
        self, event: Event, subject: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Event | None:
        """Publish the request *event* on *subject* and return its reply (None when NATS says
        nobody subscribes to the subject).

        Raises:
            trio.TooSlowError: if no reply came within *timeout* seconds.
            trio.ClosedResourceError: if the channel closed first.
        """
        await self._open_inbox()
        token = str(next(self._ids))
        reply_to = f"{self.inbox}.{token}"
        waiter = _Waiter()
        self._waiting[token] = waiter
        sent = False
        try:
            with trio.fail_after(timeout):
                while True:
                    if self._closed:
                        raise trio.ClosedResourceError("the channel is closed")
                    try:
                        self._connection.publish_nowait(
                            subject, body, headers=headers, reply=reply_to
                        )
                    except trio.WouldBlock:
                        try:
                            await self._connection.flush()
                        except ConnectionClosed:
                            pass  # (NATS did not confirm, but the queue has room again)
                        continue
                    break
                sent = True
                await waiter.done.wait()
        finally:
            del self._waiting[token]
            if sent and not waiter.done.is_set() and not self._closed:
                self._cancel(event, reply_to)
        if waiter.error is not None:
            raise waiter.error
        reply = waiter.reply
        assert reply is not None
        if reply.headers.get(STATUS_HEADER) == _NO_RESPONDERS and not reply.data:
            return None
        return decode(reply_to, reply.headers, reply.data)

    def _cancel(self, request: Event, reply_to: str) -> None:
        """Tell the responder that the request was given up on (best effort: never waits)."""
        cancel = cancel_event(request.topic, request.id, reply_to, source=self._source)
        headers, body = encode(cancel)
        try:
            self._connection.publish_nowait(
                self._cancel_prefix + request.topic, body, headers=headers
            )
        except (trio.WouldBlock, trio.ClosedResourceError):
            return  # the responder stops at the request's deadline all the same
        self.cancelled += 1

    def close(self) -> None:
        """Fail the requests waiting with ClosedResourceError."""
        self._closed = True
        for waiter in self._waiting.values():
            if not waiter.done.is_set():
                waiter.error = trio.ClosedResourceError("the channel closed before the reply came")
                waiter.done.set()


@asynccontextmanager
async def cancels(
    connection: NatsConnection,
    nursery: trio.Nursery,
    prefix: str,
    pattern: str,
    answering: Answering,
) -> AsyncIterator[None]:
    """Hand the cancels of requests on *pattern* to *answering* (the channel's ``serve``
    blocks) for the block, receiving them in a task of *nursery* (the channel's)."""
    cancel_prefix = prefix + "c."
    subscription = await connection.subscribe(cancel_prefix + pattern)
    if connection.connected:
        await connection.flush()

    async def receive(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        skip = len(cancel_prefix)
        with trio.CancelScope() as scope:
            task_status.started(scope)
            while True:
                try:
                    batch = await subscription.receive_batch()
                except trio.ClosedResourceError:
                    return
                for message in batch:
                    try:
                        topic = validate_topic(message.subject[skip:])
                        event = decode(topic, message.headers, message.data)
                    except (InvalidTopic, ValueError):
                        continue
                    named = read_cancel(event)
                    if named is not None:
                        answering.cancel(*named, early=True)

    scope: trio.CancelScope = await nursery.start(receive)
    try:
        yield
    finally:
        scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await subscription.unsubscribe()
            except (trio.ClosedResourceError, OSError, asyncio.CancelledError):
                pass  # the connection is closing: the subscription goes with it
