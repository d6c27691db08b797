"""The structured-concurrency helpers: what propagates out of a service nursery."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_realtime._util import only_leaf, open_service_nursery


class BodyError(Exception):
    """Raised by the body of the block."""


class ChildError(Exception):
    """Raised by a background task."""


async def fail_child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.lowlevel.checkpoint()
    raise ChildError("the child failed")


def leaves(exc: BaseException) -> list[BaseException]:
    """Every exception at the bottom of *exc* (itself when it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


async def test_body_exception_propagates_as_itself() -> None:
    """With no background task failing, the body's exception is not wrapped in a group."""
    cancelled: list[bool] = []

    async def service() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(True)

    async def block() -> None:
        async with open_service_nursery() as nursery:
            nursery.start_soon(service)
            await trio.testing.wait_all_tasks_blocked()
            raise BodyError("the body")

    with pytest.raises(BodyError, match="the body") as info:
        await block()
    assert cancelled == [True]
    # its context is its own, not the group that carried it through the nursery
    assert info.value.__context__ is None


async def test_body_exception_keeps_its_cause_and_context() -> None:
    """``raise X from Y`` (and an implicit context) survive the trip through the nursery."""

    async def block() -> None:
        async with open_service_nursery():
            try:
                raise KeyError("handled")
            except KeyError as handled:
                raise BodyError("the body") from handled

    with pytest.raises(BodyError) as info:
        await block()
    assert isinstance(info.value.__cause__, KeyError)
    assert isinstance(info.value.__context__, KeyError)


async def test_body_group_propagates_as_itself() -> None:
    """A group raised by the body is not wrapped in another one."""
    group = ExceptionGroup("from the body", [BodyError("one")])
    with pytest.raises(ExceptionGroup) as info:
        async with open_service_nursery():
            raise group
    assert info.value is group


async def test_leaving_normally_cancels_the_background_tasks() -> None:
    """A block that ends normally cancels its background tasks and raises nothing."""
    async with open_service_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
    # nothing outlives the block (pytest-trio would complain about a leaked task)


async def test_child_failure_alone_is_the_nurserys_group() -> None:
    """A failed background task propagates as the nursery reports it, and ends the body."""
    body: list[str] = []

    async def block() -> None:
        async with open_service_nursery() as nursery:
            await nursery.start(fail_child)
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                body.append("cancelled")
                raise

    with pytest.raises(ExceptionGroup) as info:
        await block()
    assert body == ["cancelled"]
    assert [type(leaf) for leaf in leaves(info.value)] == [ChildError]
    assert only_leaf(info.value) is not None


async def test_child_failure_then_body_exception_keeps_both() -> None:
    """Regression: when the body raises after a child failed, both errors propagate.

    The body's error (raised while the failure cancelled it, as cleanup code might) used to
    disappear, leaving a group of the child's error alone.
    """

    async def block() -> None:
        async with open_service_nursery() as nursery:
            await nursery.start(fail_child)
            try:
                await trio.sleep_forever()
            finally:
                raise BodyError("the cleanup failed too")

    with pytest.raises(ExceptionGroup) as info:
        await block()
    found = leaves(info.value)
    assert sorted(type(leaf).__name__ for leaf in found) == ["BodyError", "ChildError"]
    assert only_leaf(info.value) is None
    body = next(leaf for leaf in found if isinstance(leaf, BodyError))
    # what the body was handling when it raised: the cancellation the child's failure caused
    assert isinstance(body.__context__, trio.Cancelled)


async def test_body_exception_before_the_child_failure_is_kept() -> None:
    """The body raises first, then a task fails while being cancelled: both propagate."""

    async def fail_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ChildError("failed while cancelled")

    async def block() -> None:
        async with open_service_nursery() as nursery:
            nursery.start_soon(fail_when_cancelled)
            await trio.testing.wait_all_tasks_blocked()
            raise BodyError("the body")

    with pytest.raises(ExceptionGroup) as info:
        await block()
    assert sorted(type(leaf).__name__ for leaf in leaves(info.value)) == [
        "BodyError",
        "ChildError",
    ]


async def test_outer_cancellation_cancels_body_and_children() -> None:
    """Cancelling from outside ends the block and its tasks; the outer scope catches it."""
    cancelled: list[str] = []

    async def service() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append("child")

    with trio.CancelScope() as scope:
        async with open_service_nursery() as nursery:
            nursery.start_soon(service)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.append("body")
    assert scope.cancelled_caught
    assert sorted(cancelled) == ["body", "child"]


async def test_outer_cancellation_reaches_the_caller_as_cancelled() -> None:
    """The body's Cancelled leaves the block as a bare Cancelled, not inside a group."""
    seen: list[BaseException] = []
    with trio.CancelScope() as scope:
        try:
            async with open_service_nursery():
                scope.cancel()
                await trio.sleep_forever()
        except BaseException as exc:
            seen.append(exc)
            raise
    assert scope.cancelled_caught
    assert [type(exc) for exc in seen] == [trio.Cancelled]


def test_only_leaf_walks_single_member_groups() -> None:
    """only_leaf finds the one leaf of nested single groups, and None for two or more."""
    leaf = BodyError("x")
    assert only_leaf(ExceptionGroup("a", [ExceptionGroup("b", [leaf])])) is leaf
    assert only_leaf(ExceptionGroup("a", [leaf, ChildError("y")])) is None
