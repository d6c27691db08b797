"""Request/reply over plain publish: the reply inbox, reply checking, and answering requests.

Shared by the bus and the remote client, which request the same way (as NATS's new-style
requests do): one inbox subscription per channel, ``_inbox.<unique>.>``, made on the first
request; each request's ``reply_to`` is ``_inbox.<unique>.<n>``, and a reply is matched to its
request by that topic (:class:`ReplyInbox`). A responder publishes its reply to ``reply_to``,
with the header ``error`` when its handler failed. A remote client takes the inbox each
connection's ``welcome`` names instead (:meth:`ReplyInbox.rebase`).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final, Generic, Protocol, TypeVar

import trio

from .._errors import ConnectionClosed, NoResponders, RequestFailed
from .._event import REPLY_ERROR_HEADER, Event, new_event_id
from .._topics import INBOX_PREFIX
from ._channel import (
    ACCEPTED,
    DEFAULT_MAX_CONCURRENCY,
    DROPPED,
    Handler,
    Offered,
    Subscription,
)

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "REPLY_CODE_HEADER",
    "BusRequest",
    "InboxSink",
    "ReplyInbox",
    "ReplyWaiter",
    "answer_requests",
    "check_reply",
    "new_inbox",
    "serving",
]

logger = logging.getLogger("trio_realtime.bus")

#: The header that gives a reply made by the broker rather than a responder (it carries the
#: header ``error`` too) the error code of why: ``no_responders`` when a request sent on to
#: the other nodes of a cluster found nobody there either.
REPLY_CODE_HEADER: Final = "error_code"


def new_inbox() -> str:
    """A fresh, unique ``_inbox.`` topic for replies."""
    return f"{INBOX_PREFIX}{new_event_id()}"


class ReplyWaiter(Protocol):
    """A request waiting for its reply."""

    def succeed(self, reply: Event) -> None:
        """The reply arrived."""


W = TypeVar("W", bound=ReplyWaiter)


class ReplyInbox(Generic[W]):
    """A channel's one reply inbox: hands out ``reply_to`` topics and matches replies to them.

    The channel subscribes :attr:`pattern` once (on its first request) and hands every event
    of that subscription to :meth:`deliver`. A request takes a fresh :meth:`reply_to` topic
    and waits for its reply while it is :meth:`expected <expect>`. A reply that no request
    waits for (it timed out, or a responder answered twice) is dropped.

    Requests are known by the last token of their ``reply_to``, so that the inbox may move
    (:meth:`rebase`: a remote client's broker gives each connection its own inbox) with
    requests waiting: sent again, their ``reply_to`` is :meth:`current`.
    """

    def __init__(self) -> None:
        #: The inbox topic: replies come under it.
        self.prefix = new_inbox()
        self._ids = itertools.count(1)
        self._waiting: dict[str, W] = {}  # by the last token of their reply_to

    @property
    def pattern(self) -> str:
        """The pattern the channel subscribes for its replies."""
        return f"{self.prefix}.>"

    def reply_to(self) -> str:
        """A fresh ``reply_to`` topic, under :attr:`pattern`."""
        return f"{self.prefix}.{next(self._ids)}"

    def rebase(self, prefix: str) -> None:
        """Take *prefix* as the inbox from now on; replies under the old one are dropped."""
        self.prefix = prefix

    def current(self, reply_to: str) -> str:
        """*reply_to*, a topic :meth:`reply_to` gave, under the inbox as it is now."""
        return f"{self.prefix}.{reply_to.rpartition('.')[2]}"

    @contextmanager
    def expect(self, reply_to: str, waiter: W) -> Iterator[None]:
        """Hand the reply to *reply_to* to *waiter* during the ``with`` block."""
        key = reply_to.rpartition(".")[2]
        self._waiting[key] = waiter
        try:
            yield
        finally:
            del self._waiting[key]

    def deliver(self, reply: Event) -> bool:
        """Hand *reply* to the request waiting for it; whether one was."""
        prefix, _, key = reply.topic.rpartition(".")
        if prefix != self.prefix:
            return False
        waiter = self._waiting.get(key)
        if waiter is None:
            return False
        waiter.succeed(reply)
        return True

    def waiters(self) -> list[W]:
        """The requests waiting now."""
        return list(self._waiting.values())


class BusRequest:
    """A request on a bus, waiting for its reply (its :class:`ReplyWaiter`)."""

    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Event | None = None
        self.error: BaseException | None = None

    def succeed(self, reply: Event) -> None:
        if not self.done.is_set():
            self.reply = reply
            self.done.set()

    def fail(self, exc: BaseException) -> None:
        if not self.done.is_set():
            self.error = exc
            self.done.set()

    def result(self) -> Event:
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


class InboxSink:
    """The bus's one reply inbox as a sink: replies go straight to the waiting request."""

    group = None

    def __init__(self, inbox: ReplyInbox[BusRequest]) -> None:
        self.inbox = inbox
        self.pattern = inbox.pattern
        self.ended = False

    def offer(self, event: Event, *, force: bool = False) -> Offered:
        if not self.ended and self.inbox.deliver(event):
            return ACCEPTED
        return DROPPED  # no request waits for it (it timed out, or a second reply)

    def has_room(self) -> bool:
        return True

    def accepts(self, topic: str) -> bool:
        return True

    async def wait_room(self) -> None:
        await trio.lowlevel.checkpoint()

    def add_missed(self, n: int) -> None:
        pass

    def end(self) -> None:
        self.ended = True

    def fail(self, exc: BaseException) -> None:
        self.ended = True


def check_reply(topic: str, reply: Event) -> Event:
    """*reply*, or :exc:`RequestFailed` if the responder reported that its handler failed, or
    :exc:`NoResponders` if the reply says that nobody in the cluster took the request (see
    :data:`REPLY_CODE_HEADER`)."""
    error = reply.headers.get(REPLY_ERROR_HEADER)
    if error is not None:
        if reply.headers.get(REPLY_CODE_HEADER) == NoResponders.CODE:
            raise NoResponders(topic)
        raise RequestFailed(topic, error)
    return reply


async def answer_requests(
    channel: Any,
    sub: Subscription,
    handler: Handler,
    max_concurrency: int,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[trio.CancelScope],
) -> None:
    """Call *handler* for each event of *sub*, publishing replies through *channel*."""
    semaphore = trio.Semaphore(max_concurrency)

    async def answer(event: Event) -> None:
        try:
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:  # noqa: BLE001 - reported to the requester, then go on
                message = str(exc) or type(exc).__name__
                logger.warning("request handler for %r failed: %s", event.topic, message)
                if event.reply_to is not None:
                    await channel.publish(event.reply_to, headers={REPLY_ERROR_HEADER: message})
                return
            if event.reply_to is not None:
                try:
                    await channel.publish(event.reply_to, result)
                except TypeError as exc:
                    await channel.publish(
                        event.reply_to, headers={REPLY_ERROR_HEADER: f"bad reply: {exc}"}
                    )
        except (trio.ClosedResourceError, ConnectionClosed):
            pass  # the channel closed under us: nobody is left to reply to
        finally:
            semaphore.release()

    try:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            try:
                async with trio.open_nursery() as nursery:
                    async for event in sub:
                        # acquire() is a checkpoint even when a slot is free: one more trip
                        # through the scheduler on every request's path. Wait only when full.
                        try:
                            semaphore.acquire_nowait()
                        except trio.WouldBlock:
                            await semaphore.acquire()
                        nursery.start_soon(answer, event)
            except* ConnectionClosed:
                pass  # the channel closed for good: nobody is left to answer
    finally:
        done.set()


@asynccontextmanager
async def serving(
    nursery: trio.Nursery,
    channel: Any,
    sub: Subscription,
    handler: Handler,
    max_concurrency: int,
) -> AsyncIterator[None]:
    """Answer the requests of *sub* in *nursery* (the channel's own) for the block's duration.

    Leaving the block cancels the handlers still running and waits for them.
    """
    done = trio.Event()
    scope: trio.CancelScope = await nursery.start(
        answer_requests, channel, sub, handler, max_concurrency, done
    )
    try:
        yield
    finally:
        scope.cancel()
        with trio.CancelScope(shield=True):
            await done.wait()
