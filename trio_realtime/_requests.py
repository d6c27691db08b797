"""Request/reply over plain publish: inbox topics, reply checking, and answering requests.

Shared by the bus and the remote client: a requester subscribes a unique ``_inbox.`` topic and
sets it as the request's ``reply_to``; a responder publishes its reply there, with the header
``error`` when its handler failed.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._channel import DEFAULT_MAX_CONCURRENCY, Handler, Subscription
from ._errors import ConnectionClosed, RequestFailed
from ._event import REPLY_ERROR_HEADER, Event, new_event_id
from ._topics import INBOX_PREFIX

__all__ = ["DEFAULT_MAX_CONCURRENCY", "answer_requests", "check_reply", "new_inbox", "serving"]

logger = logging.getLogger("trio_realtime.bus")


def new_inbox() -> str:
    """A fresh, unique ``_inbox.`` topic for replies."""
    return f"{INBOX_PREFIX}{new_event_id()}"


def check_reply(topic: str, reply: Event) -> Event:
    """*reply*, or :exc:`RequestFailed` if the responder reported that its handler failed."""
    error = reply.headers.get(REPLY_ERROR_HEADER)
    if error is not None:
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
