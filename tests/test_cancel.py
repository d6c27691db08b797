"""Cancellable requests on the bus: a requester that gives up cancels the handler.

A request carries its timeout (the header ``rttimeout``); a requester that is cancelled, or
times out, hands a cancel to the bus (``Bus.route_cancel``), which cancels the ``serve``
handler working on that request (it sees ``trio.Cancelled``) or keeps it from starting. A
reply that comes after the requester gave up is dropped and counted. Every test runs on the
mock clock (``autojump_clock``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_realtime import Bus, Event, open_bus
from trio_realtime.bus._channel import ACCEPTED, Offered
from trio_realtime.bus._requests import (
    CANCEL_TYPE,
    MAX_EARLY_CANCELS,
    TIMEOUT_HEADER,
    Answering,
    _Answer,
    _slot,
    cancel_event,
    read_cancel,
    request_deadline,
    with_timeout,
)


class Stalled:
    """A handler that waits until released; it records each request and whether it saw
    ``trio.Cancelled``."""

    def __init__(self, reply: Any = "late") -> None:
        self.reply = reply
        self.started: list[Event] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.release = trio.Event()
        self.running = trio.Event()
        self.done = trio.Event()

    async def __call__(self, event: Event) -> Any:
        self.started.append(event)
        self.running.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled.append(event.id)
            raise
        finally:
            self.finished.append(event.id)
            self.done.set()
        return self.reply


class Stubborn(Stalled):
    """A handler that swallows its cancellation and returns a reply all the same."""

    async def __call__(self, event: Event) -> Any:
        self.started.append(event)
        self.running.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled.append(event.id)
        self.finished.append(event.id)
        self.done.set()
        return self.reply


async def request_and_give_up(bus: Bus, topic: str, after: float, **options: Any) -> None:
    """Request on *topic*, and give up (a cancel scope) after *after* seconds."""
    with trio.move_on_after(after):
        await bus.request(topic, "q", **options)
    await trio.lowlevel.checkpoint()


async def test_a_cancelled_request_cancels_its_handler_mid_await(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The requester's cancel scope fires while the handler awaits: the handler sees
    Cancelled and finishes, no reply is published, and the bus counts it cancelled."""
    handler = Stalled()
    async with (
        open_bus() as bus,
        bus.serve("svc.slow", handler),
        bus.subscribe("_inbox.>") as replies,
    ):
        started = trio.current_time()
        await request_and_give_up(bus, "svc.slow", 1.0, timeout=30)
        await handler.done.wait()
        assert trio.current_time() - started == pytest.approx(1.0)
        assert [e.id for e in handler.started] == handler.cancelled == handler.finished
        assert replies.statistics().buffered == 0  # nothing was published to the inbox
        stats = bus.statistics()
        assert (stats.requests_cancelled, stats.requests_expired) == (1, 0)
        # The request carried its timeout: 30 s, in milliseconds.
        assert handler.started[0].headers[TIMEOUT_HEADER] == "30000"


async def test_a_cancel_just_before_the_serve_block_ends_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The requester gives up, and the serve block ends before the handler ran again: the
    handler is cancelled (by both), and counted as cancelled by its requester."""
    handler = Stalled()
    async with open_bus() as bus:
        async with bus.serve("svc.slow", handler):
            with trio.move_on_after(0.5):
                await bus.request("svc.slow")
        assert len(handler.cancelled) == 1
        assert bus.statistics().requests_cancelled == 1


async def test_a_reply_returned_all_the_same_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler that swallows the cancellation and returns: its reply is not sent."""
    handler = Stubborn()
    async with (
        open_bus() as bus,
        bus.serve("svc.stubborn", handler),
        bus.subscribe("_inbox.>") as replies,
    ):
        await request_and_give_up(bus, "svc.stubborn", 0.5)
        await handler.done.wait()
        assert len(handler.cancelled) == 1
        await bus.publish("mark", 1)  # (anything published after would come first otherwise)
        assert replies.statistics().buffered == 0
        assert bus.statistics().requests_cancelled == 1


async def test_a_late_reply_from_a_responder_that_ignores_cancels_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A responder that is not a serve block (it cannot be cancelled) replies after the
    request timed out: the reply reaches no request, and is counted."""
    async with open_bus() as bus, bus.subscribe("svc.plain") as requests:
        with pytest.raises(trio.TooSlowError):
            await bus.request("svc.plain", 1, timeout=2)
        request = await requests.receive()
        assert request.reply_to is not None
        await bus.publish(request.reply_to, "too late")
        assert bus.statistics().late_replies == 1


class CancelTaker:
    """A sink that takes cancels, as a broker's session (or a backplane) does."""

    group = None
    ended = False

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.offered: list[Event] = []
        self.cancels: list[Event] = []
        self.arrived = trio.Event()

    def offer(self, event: Event, *, force: bool = False) -> Offered:
        self.offered.append(event)
        return ACCEPTED

    def take_cancel(self, cancel: Event) -> bool:
        self.cancels.append(cancel)
        self.arrived.set()
        return True

    def has_room(self) -> bool:
        return True

    def accepts(self, topic: str) -> bool:
        return True

    async def wait_room(self) -> None:
        await trio.lowlevel.checkpoint()

    def add_missed(self, n: int) -> None:
        pass

    def end(self) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass


async def test_a_timed_out_request_sends_its_cancel(autojump_clock: trio.testing.MockClock) -> None:
    """On a timeout, the cancel goes to the sinks on the request's topic that take cancels
    (a broker's sessions), naming the request by id and reply_to; not to others."""
    taker = CancelTaker("svc.*")
    elsewhere = CancelTaker("other.>")
    async with open_bus() as bus:
        bus.add_sink(taker)
        bus.add_sink(elsewhere)
        with pytest.raises(trio.TooSlowError):
            await bus.request("svc.far", {"n": 1}, timeout=1.5)
        [request] = taker.offered
        assert request.headers[TIMEOUT_HEADER] == "1500"
        [cancel] = taker.cancels
        assert cancel.topic == "svc.far"
        assert cancel.type == CANCEL_TYPE
        assert read_cancel(cancel) == (request.id, request.reply_to)
        assert elsewhere.cancels == []


async def test_a_request_answered_sends_no_cancel(autojump_clock: trio.testing.MockClock) -> None:
    """A request that got its reply, or failed at once, is not cancelled afterwards."""
    taker = CancelTaker("svc.*")
    async with open_bus() as bus, bus.serve("svc.echo", lambda event: event.data):
        bus.add_sink(taker)
        assert (await bus.request("svc.echo", 7)).data == 7
        assert taker.cancels == []


async def test_a_request_past_its_deadline_is_not_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request whose rttimeout is 0 has no time left: its handler never runs."""
    handler = Stalled(reply="ok")
    handler.release.set()
    async with open_bus() as bus, bus.serve("svc.x", handler), bus.subscribe("_inbox.>") as inbox:
        expired = Event(topic="svc.x", reply_to="_inbox.t.1", headers={TIMEOUT_HEADER: "0"}, data=1)
        await bus.publish_event(expired)
        timely = Event(
            topic="svc.x", reply_to="_inbox.t.2", headers={TIMEOUT_HEADER: "5000"}, data=2
        )
        await bus.publish_event(timely)
        reply = await inbox.receive()  # the serve block took them in order
        assert reply.topic == "_inbox.t.2"
        assert [e.data for e in handler.started] == [2]
        assert bus.statistics().requests_expired == 1


async def test_a_request_that_waits_for_a_slot_past_its_deadline_is_not_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With every slot taken, a request waits; when its deadline passes first, it is not
    started, and the handler runs at its deadline for the one that had a slot."""
    handler = Stalled()
    async with open_bus() as bus, bus.serve("svc.one", handler, max_concurrency=1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request_and_give_up, bus, "svc.one", 100.0)
            await handler.running.wait()
            # 1.0005 s: the request says 1000 ms, so its deadline passes before its timeout.
            with pytest.raises(trio.TooSlowError):
                await bus.request("svc.one", "second", timeout=1.0005)
            assert len(handler.started) == 1
            handler.release.set()
        stats = bus.statistics()
        assert (stats.requests_expired, stats.requests_cancelled) == (1, 0)


async def test_a_timed_out_request_cancels_its_handler_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handler of a request that times out is cancelled then (by its deadline or the
    requester's cancel, whichever the scheduler runs first)."""
    handler = Stalled()
    async with open_bus() as bus, bus.serve("svc.slow", handler):
        with pytest.raises(trio.TooSlowError):
            await bus.request("svc.slow", timeout=2)
        await handler.done.wait()
        assert len(handler.cancelled) == 1
        stats = bus.statistics()
        assert stats.requests_expired + stats.requests_cancelled == 1


async def test_a_cancel_before_the_request_is_taken_keeps_it_from_starting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests wait for a slot (one) or in the subscription's buffer (the next): cancelled
    there, neither starts when the slot frees."""
    handler = Stalled(reply="first")
    async with open_bus() as bus, bus.serve("svc.busy", handler, max_concurrency=1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bus.request, "svc.busy", "first")
            await handler.running.wait()
            await request_and_give_up(bus, "svc.busy", 0.5)  # waits for the slot
            await request_and_give_up(bus, "svc.busy", 0.5)  # in the buffer
            handler.release.set()
        assert [e.data for e in handler.started] == ["first"]
        assert bus.statistics().requests_cancelled == 2


async def test_queue_group_members_each_get_the_cancel_of_their_own_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two members of a queue group, a request each (round robin): cancelling one request
    cancels the handler of the member that has it; the other goes on and replies."""
    first, second = Stalled(reply="a"), Stalled(reply="b")
    kept: list[Event] = []

    async def keep(bus: Bus) -> None:
        kept.append(await bus.request("svc.q", "kept"))

    async with (
        open_bus() as bus,
        bus.serve("svc.q", first, group="workers"),
        bus.serve("svc.q", second, group="workers"),
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request_and_give_up, bus, "svc.q", 1.0)
            nursery.start_soon(keep, bus)
            await first.running.wait()
            await second.running.wait()
            dropped = first if first.started[0].data == "q" else second
            other = second if dropped is first else first
            await dropped.done.wait()  # given up on at 1.0
            assert len(dropped.cancelled) == 1
            assert other.cancelled == []
            other.release.set()
        assert [event.data for event in kept] == [other.reply]
        assert bus.statistics().requests_cancelled == 1


class ForwardingRemote:
    """A backplane stand-in that forwards cancels (the optional ``forward_cancel``)."""

    reachable = True

    def __init__(self) -> None:
        self.cancels: list[Event] = []

    def interest_added(self, pattern: str, group: str | None) -> None:
        pass

    def interest_removed(self, pattern: str, group: str | None) -> None:
        pass

    def forward(self, event: Event, *, served: Sequence[str], routed: bool, retain: bool) -> None:
        pass

    def share_retained(self, event: Event) -> None:
        pass

    def clear_retained(self, topic: str) -> None:
        pass

    def forward_cancel(self, cancel: Event) -> None:
        self.cancels.append(cancel)


async def test_a_backplane_with_forward_cancel_is_handed_the_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cancel is an event on the request's topic: a backplane that forwards cancels gets
    it, for the nodes that may hold the request (they call route_cancel with it)."""
    remote = ForwardingRemote()
    handler = Stalled()
    async with open_bus() as bus, open_bus() as other_node, other_node.serve("svc.x", handler):
        bus.attach_remote(remote)
        # (Nothing serves here; the backplane is reachable, so the request goes out.)
        with trio.move_on_after(1):
            await bus.request("svc.x", timeout=10)
        [cancel] = remote.cancels
        request_id, reply_to = read_cancel(cancel) or ("", "")
        assert cancel.topic == "svc.x"
        # The other node: its serve block got the request from its backplane; the cancel
        # delivered there cancels the handler.
        request = Event(topic="svc.x", id=request_id, reply_to=reply_to)
        await other_node.route_remote(request)
        await handler.running.wait()
        assert other_node.route_cancel(cancel) == 1
        await handler.done.wait()
        assert handler.cancelled == [request_id]


async def test_route_cancel_ignores_what_is_not_a_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An ordinary event handed to route_cancel cancels nothing."""
    handler = Stalled()
    async with open_bus() as bus, bus.serve("svc.x", handler):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bus.request, "svc.x")
            await handler.running.wait()
            request = handler.started[0]
            fake = Event(topic="svc.x", data={"id": request.id, "reply_to": request.reply_to})
            assert bus.route_cancel(fake) == 0
            assert request.reply_to is not None
            wrong = cancel_event("svc.x", request.id, request.reply_to + "9", source="t")
            assert bus.route_cancel(wrong) == 0
            handler.release.set()
        assert handler.cancelled == []


def test_the_timeout_header_is_whole_milliseconds_rounded_down() -> None:
    """with_timeout writes milliseconds (never negative), and leaves out what is too long."""
    assert with_timeout(None, 2.0) == {TIMEOUT_HEADER: "2000"}
    assert with_timeout({"a": "b"}, 0.0019) == {"a": "b", TIMEOUT_HEADER: "1"}
    assert with_timeout(None, -3) == {TIMEOUT_HEADER: "0"}
    assert with_timeout(None, -math.inf) == {TIMEOUT_HEADER: "0"}
    assert with_timeout(None, math.inf) is None
    assert with_timeout(None, math.nan) is None
    assert with_timeout({"a": "b"}, 1e12) == {"a": "b"}


@given(st.text(max_size=30))
def test_a_deadline_header_of_any_text_never_fails(value: str) -> None:
    """Whatever a requester writes in rttimeout, the responder reads a deadline: the time in
    milliseconds from now, or none (inf) for anything else."""
    event = Event(topic="t", reply_to="_inbox.x.1", headers={TIMEOUT_HEADER: value})
    deadline = request_deadline(event, 100.0)
    if value.isascii() and value.isdigit() and len(value) <= 12:
        assert deadline == 100.0 + int(value) / 1000
    else:
        assert deadline == math.inf


def test_early_cancels_are_bounded() -> None:
    """Cancels kept for requests not taken yet are at most MAX_EARLY_CANCELS: the oldest
    goes."""
    answering = Answering()
    for i in range(MAX_EARLY_CANCELS + 1):
        assert not answering.cancel(str(i), "_inbox.x.1", early=True)
    first = answering.take(Event(topic="t", id="0", reply_to="_inbox.x.1"), 0.0)
    last = answering.take(Event(topic="t", id=str(MAX_EARLY_CANCELS), reply_to="_inbox.x.1"), 0.0)
    assert not first.cancelled  # forgotten for room
    assert last.cancelled


async def test_a_cancel_that_comes_as_the_slot_is_taken_still_stops_the_request() -> None:
    """The slot freed and the cancel in one pass of the scheduler: the waiting request gets
    its slot back to the semaphore and is not started."""
    semaphore = trio.Semaphore(1)
    semaphore.acquire_nowait()  # (a handler runs)
    record = _Answer(("id", "_inbox.x.1"), math.inf)
    taken: list[bool] = []

    async def take() -> None:
        taken.append(await _slot(semaphore, record))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        semaphore.release()  # the handler finished: the waiting request is woken ...
        record.cancel()  # ... and its requester gives up before it runs
    assert taken == [False]
    assert semaphore.value == 1
