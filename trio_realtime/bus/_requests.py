"""Request/reply over plain publish: the reply inbox, reply checking, and answering requests.

Shared by the bus and the remote client, which request the same way (as NATS's new-style
requests do): one inbox subscription per channel, ``_inbox.<unique>.>``, made on the first
request; each request's ``reply_to`` is ``_inbox.<unique>.<n>``, and a reply is matched to its
request by that topic (:class:`ReplyInbox`). A responder publishes its reply to ``reply_to``,
with the header ``error`` when its handler failed. A remote client takes the inbox each
connection's ``welcome`` names instead (:meth:`ReplyInbox.rebase`).

Requests can be cancelled end to end. A request carries how long its requester waits (the
header :data:`TIMEOUT_HEADER`, in milliseconds). A requester that gives up (its cancel scope
fired, or it timed out) sends a cancel: an event on the request's topic naming the request
by its id and ``reply_to`` (:func:`cancel_event`), which the bus hands to the responders that
may hold the request (:meth:`Bus.route_cancel <trio_realtime.Bus.route_cancel>`) rather than
routing it as an event. A responder runs each handler in a cancel scope of its own with the
request's deadline (:class:`Answering`): the cancel, or the deadline, cancels it, and its
reply, if any, is dropped. A reply that comes when no request waits for it is dropped and
counted (:attr:`ReplyInbox.late`).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
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
    "CANCEL_TYPE",
    "DEFAULT_MAX_CONCURRENCY",
    "MAX_EARLY_CANCELS",
    "REPLY_CODE_HEADER",
    "TIMEOUT_HEADER",
    "Answering",
    "BusRequest",
    "InboxSink",
    "ReplyInbox",
    "ReplyWaiter",
    "answer_requests",
    "cancel_event",
    "check_reply",
    "deliver_cancel",
    "new_inbox",
    "read_cancel",
    "request_deadline",
    "serving",
    "with_timeout",
]

logger = logging.getLogger("trio_realtime.bus")

#: The header that gives a reply made by the broker rather than a responder (it carries the
#: header ``error`` too) the error code of why: ``no_responders`` when a request sent on to
#: the other nodes of a cluster found nobody there either.
REPLY_CODE_HEADER: Final = "error_code"
#: The header in which a request carries how long its requester waits for the reply: whole
#: milliseconds, from when it was sent (a duration, so that the two clocks need not agree).
#: A responder does not start a request whose time is up, and cancels its handler when it
#: runs out (see :func:`request_deadline`).
TIMEOUT_HEADER: Final = "rttimeout"
#: The type of the event that carries a request's cancel (see :func:`cancel_event`).
CANCEL_TYPE: Final = "trio_realtime.cancel"
#: Cancels a channel keeps for requests its ``serve`` blocks have not taken yet (still in
#: their subscriptions' buffers); past that, the oldest is forgotten, and its request runs
#: until its deadline.
MAX_EARLY_CANCELS: Final = 1024
#: A timeout of more digits than this (in milliseconds: about 31 years) is left out.
_MAX_TIMEOUT_DIGITS: Final = 12


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
        #: Replies dropped because no request waited for them: it had given up (cancelled,
        #: or timed out), or had its reply already.
        self.late = 0

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
        """Hand *reply* to the request waiting for it; whether one was (if not, the reply is
        dropped and counted in :attr:`late`)."""
        prefix, _, key = reply.topic.rpartition(".")
        waiter = self._waiting.get(key) if prefix == self.prefix else None
        if waiter is None:
            self.late += 1
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


# ---------------------------------------------------------------------------------------------
# Deadlines and cancels


def with_timeout(headers: dict[str, str] | None, seconds: float) -> dict[str, str] | None:
    """*headers* with :data:`TIMEOUT_HEADER` set to *seconds* (in whole milliseconds, rounded
    down, 0 at least); as they are when *seconds* is too large to say (``inf``)."""
    if not seconds < 10**_MAX_TIMEOUT_DIGITS / 1000:  # (inf, and nan)
        return headers
    milliseconds = str(int(seconds * 1000)) if seconds > 0 else "0"
    if not headers:
        return {TIMEOUT_HEADER: milliseconds}
    return {**headers, TIMEOUT_HEADER: milliseconds}


def request_deadline(event: Event, now: float) -> float:
    """When the requester of *event*, received at *now*, stops waiting for its reply: *now*
    plus its :data:`TIMEOUT_HEADER`; ``inf`` for an event without one (or with a value that is
    not a number of milliseconds, which is ignored)."""
    value = event.headers.get(TIMEOUT_HEADER)
    if value is None:
        return math.inf
    if not (value.isascii() and value.isdigit()) or len(value) > _MAX_TIMEOUT_DIGITS:
        logger.debug("request %s: header %s=%r ignored", event.id, TIMEOUT_HEADER, value)
        return math.inf
    return now + int(value) / 1000


def cancel_event(topic: str, request_id: str, reply_to: str, *, source: str) -> Event:
    """The event that cancels the request *request_id* with *reply_to*, published on *topic*.

    It goes where the request went, by its topic: to the responders subscribed there (and,
    in a cluster, to the nodes with an interest in the topic). It is never routed as an
    event: the bus hands it to whoever may hold the request (:meth:`Bus.route_cancel
    <trio_realtime.Bus.route_cancel>`), which acts on it only if it holds a request with
    both that id and that ``reply_to``. Whoever builds one vouches that the requester sent
    it: a broker checks that the ``reply_to`` lies in the cancelling connection's inbox.
    """
    return Event(
        topic=topic, type=CANCEL_TYPE, source=source, data={"id": request_id, "reply_to": reply_to}
    )


def read_cancel(cancel: Event) -> tuple[str, str] | None:
    """The ``(request id, reply_to)`` a :func:`cancel_event` names; None if it is not one."""
    data = cancel.data
    if cancel.type != CANCEL_TYPE or type(data) is not dict:
        return None
    request_id = data.get("id")
    reply_to = data.get("reply_to")
    if type(request_id) is not str or type(reply_to) is not str:
        return None
    return request_id, reply_to


def deliver_cancel(cancel: Event, sinks: list[Any], answering: Answering, remote: object) -> int:
    """Hand *cancel* (a :func:`cancel_event`) to those of *sinks* (the sinks matching its
    topic) that take cancels (a ``take_cancel(cancel) -> bool`` method: a broker's session),
    to the requests *answering* handles if one of its ``serve`` subscriptions is among
    them, and to *remote* if it has a ``forward_cancel(cancel)`` method (a backplane, for
    the other nodes). How many were handling the request.
    """
    named = read_cancel(cancel)
    if named is None:
        return 0
    served_here = False
    took = 0
    for sink in sinks:
        if sink in answering.subs:
            served_here = True
            continue
        take = getattr(sink, "take_cancel", None)
        if take is not None and take(cancel):
            took += 1
    if served_here and answering.cancel(*named, early=True):
        took += 1
    forward = getattr(remote, "forward_cancel", None)
    if forward is not None:
        forward(cancel)
    return took


class _Answer:
    """One request a ``serve`` block took: its deadline and the cancel scope of the work on
    it (the wait for a slot, then the handler)."""

    __slots__ = ("cancelled", "deadline", "key", "scope")

    def __init__(self, key: tuple[str, str] | None, deadline: float) -> None:
        self.key = key
        self.deadline = deadline
        self.scope: trio.CancelScope | None = None
        #: Its requester cancelled it (else, if its scope was cancelled, its deadline passed).
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class Answering:
    """The requests one channel's ``serve`` blocks are handling, by id and ``reply_to``, so
    that a cancel finds them; and what became of those cut short.

    A cancel for a request not taken yet (still in a subscription's buffer) is kept, at most
    :data:`MAX_EARLY_CANCELS` of them, so that the request is not started when it is taken.
    """

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], list[_Answer]] = {}
        self._early: dict[tuple[str, str], None] = {}
        #: The subscriptions of the channel's ``serve`` blocks.
        self.subs: set[Subscription] = set()
        #: Requests whose handler was cancelled, or not started, because their requester
        #: cancelled them.
        self.cancelled = 0
        #: Requests whose handler was cancelled, or not started, because their deadline passed.
        self.expired = 0

    def take(self, event: Event, now: float) -> _Answer:
        """A ``serve`` block took *event* at *now*: its record, registered until
        :meth:`finish` (cancelled already if a cancel for it came first)."""
        if event.reply_to is None:
            return _Answer(None, math.inf)  # not a request: nobody waits, nobody cancels
        key = (event.id, event.reply_to)
        answer = _Answer(key, request_deadline(event, now))
        if self._early and key in self._early:
            del self._early[key]
            answer.cancelled = True
        self._answers.setdefault(key, []).append(answer)
        return answer

    def finish(self, answer: _Answer) -> None:
        """*answer* is done with: a cancel no longer finds it."""
        key = answer.key
        if key is None:
            return
        answers = self._answers.get(key)
        if answers is None:
            return
        answers.remove(answer)
        if not answers:
            del self._answers[key]

    def cut_short(self, answer: _Answer) -> None:
        """*answer*'s handler was cancelled, or not started: count why."""
        if answer.cancelled:
            self.cancelled += 1
        else:
            self.expired += 1

    def cancel(self, request_id: str, reply_to: str, *, early: bool) -> bool:
        """Cancel the work on the request *request_id* with *reply_to*; whether any was
        under way. With *early*, a request not taken yet is not started when it is."""
        key = (request_id, reply_to)
        answers = self._answers.get(key)
        if answers is not None:
            for answer in answers:
                answer.cancel()
            return True
        if early:
            early_cancels = self._early
            early_cancels[key] = None
            if len(early_cancels) > MAX_EARLY_CANCELS:
                del early_cancels[next(iter(early_cancels))]
        return False


async def answer_requests(
    channel: Any,
    sub: Subscription,
    handler: Handler,
    max_concurrency: int,
    answering: Answering,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[trio.CancelScope],
) -> None:
    """Call *handler* for each event of *sub*, publishing replies through *channel*.

    Each request's handler runs in a cancel scope of its own, with the request's deadline
    (:func:`request_deadline`), that a cancel from its requester cancels too
    (:class:`Answering`): the handler sees :exc:`trio.Cancelled`, and its reply, if it
    returns one all the same, is dropped. A request whose deadline passed, or that was
    cancelled, before a slot was free is not started.
    """
    semaphore = trio.Semaphore(max_concurrency)

    async def answer(event: Event, record: _Answer) -> None:
        try:
            scope = record.scope
            assert scope is not None
            failure: Exception | None = None
            result: Any = None
            try:
                with scope:
                    try:
                        result = handler(event)
                        if inspect.isawaitable(result):
                            result = await result
                    except Exception as exc:  # noqa: BLE001 - reported to the requester
                        failure = exc
            finally:
                if scope.cancel_called:  # (counted even when the serve block ends meanwhile)
                    answering.cut_short(record)
            if scope.cancel_called:
                return  # its requester gave up, or its deadline passed: nobody waits for it
            if failure is not None:
                message = str(failure) or type(failure).__name__
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
            answering.finish(record)

    answering.subs.add(sub)
    try:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            try:
                async with trio.open_nursery() as nursery:
                    async for event in sub:
                        record = answering.take(event, trio.current_time())
                        try:
                            slot = await _slot(semaphore, record)
                        except BaseException:  # (the serve block ends while it waits)
                            answering.finish(record)
                            raise
                        if not slot:
                            answering.cut_short(record)
                            answering.finish(record)
                            continue
                        record.scope = trio.CancelScope(deadline=record.deadline)
                        nursery.start_soon(answer, event, record)
            except* ConnectionClosed:
                pass  # the channel closed for good: nobody is left to answer
    finally:
        answering.subs.discard(sub)
        done.set()


async def _slot(semaphore: trio.Semaphore, record: _Answer) -> bool:
    """Take a slot for *record*'s handler; False (none taken) if it was cancelled or its
    deadline passed first."""
    if record.cancelled or record.deadline <= trio.current_time():
        return False
    # acquire() is a checkpoint even when a slot is free: one more trip through the
    # scheduler on every request's path. Wait only when full.
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        with trio.CancelScope(deadline=record.deadline) as waiting:
            record.scope = waiting
            await semaphore.acquire()
        record.scope = None
        if waiting.cancelled_caught:
            return False
        if waiting.cancel_called:  # a cancel came as the slot was taken: too late to stop it
            semaphore.release()
            return False
    return True


@asynccontextmanager
async def serving(
    nursery: trio.Nursery,
    channel: Any,
    sub: Subscription,
    handler: Handler,
    max_concurrency: int,
    answering: Answering,
) -> AsyncIterator[None]:
    """Answer the requests of *sub* in *nursery* (the channel's own) for the block's duration,
    registered with the channel's *answering*, which cancels are handed to.

    Leaving the block cancels the handlers still running and waits for them.
    """
    done = trio.Event()
    scope: trio.CancelScope = await nursery.start(
        answer_requests, channel, sub, handler, max_concurrency, answering, done
    )
    try:
        yield
    finally:
        scope.cancel()
        with trio.CancelScope(shield=True):
            await done.wait()
