"""Small structured-concurrency helpers shared by the bus, the broker and the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import trio

__all__ = ["NoPublicConstructor", "only_leaf", "open_service_nursery", "utf8_size"]

_T = TypeVar("_T")


class NoPublicConstructor(type):
    """A metaclass whose classes are built by the library only, through ``cls._create(…)``.

    Calling the class raises :exc:`TypeError` naming the function to use instead, as trio
    does for its own such classes: a ``Bus`` exists only inside ``open_bus()`` (and a
    ``Client`` inside ``open_client()``), which own its tasks and close it.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"trio_realtime.{cls.__qualname__} has no public constructor; use "
            f"trio_realtime.open_{cls.__qualname__.lower()}() instead"
        )

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


def only_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception at the bottom of nested single-member groups, else None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


def _same(exc: BaseException, original: BaseException) -> bool:
    """Whether *exc* is *original*, or a copy of the group *original* with the same leaves (a
    cancel scope that splits the cancellations out of a group rebuilds the groups in it)."""
    if exc is original:
        return True
    if not (isinstance(exc, BaseExceptionGroup) and isinstance(original, BaseExceptionGroup)):
        return False
    return (
        exc.message == original.message
        and len(exc.exceptions) == len(original.exceptions)
        and all(map(_same, exc.exceptions, original.exceptions))
    )


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for the background tasks of an object that lives for the block.

    Leaving the block cancels the background tasks and waits for them. What propagates:

    * the body raised and no background task failed: the body's exception, as itself (not
      wrapped in an :class:`ExceptionGroup`);
    * a background task failed: the group the nursery reports, which holds the body's
      exception too when the body raised something other than the cancellation the failure
      caused (such as an error in its cleanup). Neither exception is lost.

    The nursery combines the exceptions (so Trio decides which cancellations are its own);
    only a group whose one member is the body's exception is unwrapped.
    """
    body_exc: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                body_exc = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if body_exc is None or len(group.exceptions) != 1:
            raise
        if not _same(group.exceptions[0], body_exc):
            raise
        # Raise it as itself, keeping its own context rather than the group that held it (as
        # Trio's nursery does when it raises the group).
        context = body_exc.__context__
        try:
            raise body_exc
        finally:
            body_exc.__context__ = context
            del body_exc  # no reference cycle through this frame


def utf8_size(text: str) -> int:
    """The size of *text* on the wire, in bytes (its UTF-8 encoding)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))
