"""The in-process bus: behaviour beyond the EventChannel conformance suite."""

from __future__ import annotations

import logging
import math

import attrs
import pytest
import trio
import trio.testing

from trio_realtime import (
    Event,
    NoResponders,
    Overflow,
    RequestFailed,
    SlowConsumer,
    StoreUnavailable,
    event_type,
    open_bus,
)
from trio_realtime.bus._channel import RECEIVE_BATCH, Subscription


@event_type("test.bus.point")
@attrs.frozen
class Point:
    """A typed payload for these tests."""

    x: int
    y: int


async def test_close_ends_iteration_cleanly() -> None:
    """Closing the bus ends every subscriber's `async for` after it drains the buffer."""
    seen: list[object] = []
    async with trio.open_nursery() as nursery, open_bus() as bus:

        async def consume(task_status: trio.TaskStatus[None]) -> None:
            async with bus.subscribe("a.>") as sub:
                task_status.started()
                async for event in sub:
                    seen.append(event.data)  # noqa: PERF401 - the test watches each step
            seen.append("end")

        await nursery.start(consume)
        await bus.publish("a.b", 1)
        await bus.publish("a.c", 2)
    assert seen == [1, 2, "end"]


async def test_publish_after_close_raises() -> None:
    """A closed bus refuses publishes and subscriptions."""
    async with open_bus() as bus:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await bus.publish("a.b", 1)
    with pytest.raises(trio.ClosedResourceError):
        async with bus.subscribe("a.b"):
            pass


async def test_body_exception_propagates_unwrapped() -> None:
    """An exception in the open_bus block comes out as itself, not in an ExceptionGroup."""
    with pytest.raises(KeyError):
        async with open_bus():
            raise KeyError("x")


async def test_no_task_outlives_the_bus() -> None:
    """Serve handlers still running are cancelled when the bus closes."""
    cancelled = trio.Event()
    started = trio.Event()

    async def handler(event: Event) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    with trio.fail_after(5):
        async with open_bus() as bus, bus.serve("svc.slow", handler):
            await bus.publish("svc.slow", 1)
            await started.wait()
    assert cancelled.is_set()


async def test_block_policy_makes_the_publisher_wait() -> None:
    """With `block`, a full buffer holds the publisher until the consumer makes room."""
    async with open_bus() as bus, bus.subscribe("t", max_buffer_size=2) as sub:
        progress: list[int] = []

        async def publisher() -> None:
            for i in range(4):
                await bus.publish("t", i)
                progress.append(i)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            await trio.testing.wait_all_tasks_blocked()
            assert progress == [0, 1]
            assert (await sub.receive()).data == 0
            await trio.testing.wait_all_tasks_blocked()
            assert progress == [0, 1, 2]
            assert [(await sub.receive()).data for _ in range(3)] == [1, 2, 3]
        assert sub.missed == 0


async def test_blocked_publisher_released_when_subscription_leaves() -> None:
    """A publisher waiting on a full subscription goes on when that subscription ends."""
    async with open_bus() as bus:
        done = trio.Event()
        async with trio.open_nursery() as nursery, bus.subscribe("t", max_buffer_size=1):

            async def publisher() -> None:
                await bus.publish("t", 1)
                await bus.publish("t", 2)
                done.set()

            nursery.start_soon(publisher)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
        assert done.is_set()


async def test_disconnect_policy_removes_the_subscription() -> None:
    """`disconnect` ends the subscription with SlowConsumer and takes it off the bus."""
    async with (
        open_bus() as bus,
        bus.subscribe("t", max_buffer_size=1, overflow="disconnect") as sub,
    ):
        await bus.publish("t", 1)
        await bus.publish("t", 2)
        assert bus.statistics().subscriptions == 0
        with pytest.raises(SlowConsumer, match="disconnect"):
            await sub.receive()
        with pytest.raises(SlowConsumer):
            sub.receive_nowait()
        assert sub.missed == 2
        assert bus.statistics().dropped == 2


async def test_statistics_count_publishes_deliveries_and_drops() -> None:
    """Bus statistics follow publishes, deliveries and drops."""
    async with open_bus() as bus:
        async with (
            bus.subscribe("s.>") as a,
            bus.subscribe("s.*", max_buffer_size=1, overflow="drop_newest") as b,
        ):
            await bus.publish("s.x", 1)
            await bus.publish("s.y", 2, retain=True)
            stats = bus.statistics()
            assert (stats.subscriptions, stats.published, stats.delivered) == (2, 2, 3)
            assert stats.dropped == 1
            assert stats.retained == 1
            assert a.statistics().buffered == 2
            assert b.statistics() == b.statistics()
            assert b.statistics().overflow is Overflow.DROP_NEWEST
        assert bus.statistics().subscriptions == 0
        assert bus.statistics().dropped == 1


async def test_queue_group_round_robin_prefers_members_with_room() -> None:
    """A queue group spreads events round robin and skips members whose buffer is full."""
    async with (
        open_bus() as bus,
        bus.subscribe("q", group="g", max_buffer_size=1, overflow="drop_newest") as one,
        bus.subscribe("q", group="g", max_buffer_size=10) as two,
    ):
        for i in range(6):
            await bus.publish("q", i)
        assert one.statistics().buffered == 1
        assert two.statistics().buffered == 5
        assert one.missed == 0


async def test_retained_values_and_clear() -> None:
    """Retained events reach new subscribers first; clear_retained forgets them."""
    async with open_bus() as bus:
        await bus.publish("r.a", 1, retain=True)
        await bus.publish("r.b", 2, retain=True)
        await bus.publish("r.c", 3, retain=True)
        assert [e.data for e in bus.retained("r.*")] == [1, 2, 3]
        assert bus.clear_retained("r.a")
        assert not bus.clear_retained("r.a")
        async with bus.subscribe("r.>", max_buffer_size=1) as sub:
            # retained events are delivered even past a `block` buffer
            assert sub.statistics().buffered == 2
            assert [(await sub.receive()).data for _ in range(2)] == [2, 3]


async def test_request_times_out_under_autojump_clock(autojump_clock: trio.abc.Clock) -> None:
    """A request with a silent responder raises TooSlowError after its timeout."""
    async with open_bus() as bus, bus.subscribe("svc.silent"):
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await bus.request("svc.silent", timeout=30)
        assert trio.current_time() - start == pytest.approx(30)


async def test_request_failed_and_no_responders_messages(caplog: pytest.LogCaptureFixture) -> None:
    """RequestFailed carries the handler's message; the failure is logged."""

    async def broken(event: Event) -> None:
        raise ZeroDivisionError

    async with open_bus() as bus:
        with pytest.raises(NoResponders, match=r"svc\.none"):
            await bus.request("svc.none")
        with caplog.at_level(logging.WARNING, logger="trio_realtime.bus"):
            async with bus.serve("svc.broken", broken):
                with pytest.raises(RequestFailed, match="ZeroDivisionError") as info:
                    await bus.request("svc.broken")
        assert info.value.message == "ZeroDivisionError"
        assert "svc.broken" in caplog.text


async def test_bad_reply_is_reported_to_the_requester() -> None:
    """A handler returning data that is not JSON makes the request fail, naming the value."""
    async with open_bus() as bus, bus.serve("svc.bad", lambda e: {"x": object()}):
        with pytest.raises(RequestFailed, match="bad reply"):
            await bus.request("svc.bad")


async def test_serve_handles_requests_concurrently() -> None:
    """Requests to one serve block are answered concurrently, up to max_concurrency."""
    async with open_bus() as bus:
        gate = trio.Event()
        active = 0
        peak = 0

        async def handler(event: Event) -> int:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await gate.wait()
            active -= 1
            return 0

        async with (
            bus.serve("svc.c", handler, max_concurrency=3),
            trio.open_nursery() as nursery,
        ):
            for _ in range(5):
                nursery.start_soon(bus.request, "svc.c")
            await trio.testing.wait_all_tasks_blocked()
            assert peak == 3
            gate.set()
        assert peak == 3


async def test_events_without_reply_to_are_handled_too() -> None:
    """serve() calls the handler for plain events and discards the result."""
    seen: list[object] = []
    async with open_bus() as bus, bus.serve("svc.log", lambda e: seen.append(e.data)):
        await bus.publish("svc.log", 7)
        await trio.testing.wait_all_tasks_blocked()
    assert seen == [7]


async def test_typed_subscription_and_publish() -> None:
    """subscribe(Cls) converts JSON payloads; publish(obj) needs no topic."""
    async with open_bus() as bus, bus.subscribe(Point) as sub:
        await bus.publish(Point(1, 2))
        await bus.publish("test.bus.point", {"x": 3, "y": 4})
        await bus.publish("test.bus.point", {"x": "no"})
        assert [(await sub.receive()).data for _ in range(2)] == [Point(1, 2), Point(3, 4)]
        assert sub.statistics().rejected == 1


async def test_publish_and_subscribe_argument_errors() -> None:
    """Wrong arguments raise TypeError or ValueError naming the problem."""

    class Unregistered:
        pass

    async with open_bus() as bus:
        with pytest.raises(TypeError, match="not registered"):
            await bus.publish(Unregistered())
        with pytest.raises(TypeError, match="no data"):
            await bus.publish(Point(1, 1), 5)
        with pytest.raises(TypeError, match="headers"):
            await bus.publish("a", headers={"k": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="registered with @event_type"):
            async with bus.subscribe(Unregistered):
                pass
        with pytest.raises(ValueError, match="overflow must be one of"):
            async with bus.subscribe("a", overflow="sometimes"):
                pass
        for size in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match=r"max_buffer_size"):
                async with bus.subscribe("a", max_buffer_size=size):
                    pass
        async with bus.subscribe("a", max_buffer_size=math.inf):
            pass
        with pytest.raises(StoreUnavailable, match="needs a bus with a store"):
            async with bus.subscribe("a", since=0):
                pass
        with pytest.raises(StoreUnavailable, match="needs a bus with a store"):
            await bus.history("a")
        assert not bus.is_persisted("a")


async def test_publish_event_with_reply_to_and_no_subscriber() -> None:
    """publish_event with reply_to set and nothing subscribed raises NoResponders."""
    async with open_bus() as bus:
        with pytest.raises(NoResponders):
            await bus.publish_event(Event(topic="x.y", reply_to="_inbox.1"))
        assert bus.statistics().published == 0


async def test_consumer_yields_only_once_per_batch() -> None:
    """Draining a backlog yields to the scheduler once per RECEIVE_BATCH events, not each."""

    class StepCounter(trio.abc.Instrument):
        def __init__(self, task: trio.lowlevel.Task) -> None:
            self.task = task
            self.steps = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task is self.task:
                self.steps += 1

    async with open_bus() as bus, bus.subscribe("t", max_buffer_size=math.inf) as sub:
        for i in range(RECEIVE_BATCH * 3):
            await bus.publish("t", i)
        counter = StepCounter(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(counter)
        try:
            for _ in range(RECEIVE_BATCH * 3):
                await sub.receive()
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert counter.steps == 2


async def test_receive_is_cancellable_while_waiting() -> None:
    """A receive waiting for events is a cancellation point."""
    async with open_bus() as bus, bus.subscribe("t") as sub:
        with trio.move_on_after(1) as scope:
            await sub.receive()
        assert scope.cancelled_caught


async def test_subscription_repr_and_receive_nowait() -> None:
    """receive_nowait raises WouldBlock on an empty buffer; repr names the pattern."""
    sub = Subscription("a.b", group="g")
    assert "a.b" in repr(sub)
    assert "g" in repr(sub)
    with pytest.raises(trio.WouldBlock):
        sub.receive_nowait()
    sub.end()
    with pytest.raises(trio.EndOfChannel):
        sub.receive_nowait()


async def test_max_retained_evicts_the_value_updated_longest_ago() -> None:
    """Issue 7, finding 5: past max_retained, the oldest-updated retained value goes, counted."""
    async with open_bus(max_retained=3) as bus:
        for topic in ("r.a", "r.b", "r.c"):
            await bus.publish(topic, topic, retain=True)
        await bus.publish("r.a", "a again", retain=True)  # r.a is now the newest
        await bus.publish("r.d", "d", retain=True)  # evicts r.b, updated longest ago
        assert [e.data for e in bus.retained()] == ["r.c", "a again", "d"]
        assert [e.topic for e in bus.retained("r.*")] == ["r.c", "r.a", "r.d"]
        stats = bus.statistics()
        assert (stats.retained, stats.retained_evicted) == (3, 1)
        assert bus.clear_retained("r.a")
        assert not bus.clear_retained("r.b")
        assert [e.topic for e in bus.retained()] == ["r.c", "r.d"]
        async with bus.subscribe("r.>") as sub:
            assert [(await sub.receive()).topic for _ in range(2)] == ["r.c", "r.d"]


async def test_max_retained_must_be_positive() -> None:
    """open_bus refuses a max_retained below 1."""
    with pytest.raises(ValueError, match="max_retained"):
        async with open_bus(max_retained=0):
            pass  # pragma: no cover
