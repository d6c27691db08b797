"""Small structured-concurrency helpers shared by the bus, the broker and the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["only_leaf", "open_service_nursery"]


def only_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception at the bottom of nested single-member groups, else None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for the background tasks of an object that lives for the block.

    Leaving the block cancels the background tasks and waits for them. An exception raised by
    the body propagates as itself, not wrapped in an :class:`ExceptionGroup` (a crash of a
    background task still propagates as the nursery reports it).
    """
    body_exc: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except BaseException as exc:  # noqa: BLE001 - re-raised below, outside the nursery
            body_exc = exc
        nursery.cancel_scope.cancel()
    if body_exc is not None:
        raise body_exc
