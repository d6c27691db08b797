"""The behavioural contract of an :class:`~trio_realtime.EventChannel`, as a reusable check."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import datetime
from typing import Any, Final

import attrs
import trio
import trio.testing

from .._errors import (
    InvalidTopic,
    NoResponders,
    Refused,
    RequestFailed,
    SlowConsumer,
    StoreUnavailable,
)
from .._event import Event
from .._payloads import temporary_event_type
from ..bus._channel import EventChannel, Overflow, Subscription

__all__ = ["CheckOrder", "check_channel"]

#: How long any single step of the check may take before it fails as hung.
STEP_TIMEOUT: Final = 10.0

ChannelFactory = Callable[[], AbstractAsyncContextManager[EventChannel]]


@attrs.frozen
class CheckOrder:
    """The typed payload the conformance check publishes.

    :func:`check_channel` registers it as event type ``check.typed.order`` while it runs
    (importing this module registers nothing).
    """

    order_id: int
    total: float


class _Failed(AssertionError):
    pass


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise _Failed(message)


async def _receive(sub: Subscription) -> Event:
    with trio.fail_after(STEP_TIMEOUT):
        return await sub.receive()


async def _receive_n(sub: Subscription, n: int) -> list[Event]:
    return [await _receive(sub) for _ in range(n)]


async def _until_marker(sub: Subscription) -> list[Event]:
    """The events *sub* receives before the next one whose data is ``"marker"``."""
    events = []
    while (event := await _receive(sub)).data != "marker":
        events.append(event)
    return events


async def check_channel(
    open_channel: ChannelFactory,
    *,
    stored: bool = False,
    open_owned: ChannelFactory | None = None,
) -> None:
    """Check an :class:`~trio_realtime.EventChannel` implementation against the whole contract.

    Every row of the contract table (see the "EventChannel contract" page of the docs) is
    checked: publishing, acknowledgements, wildcards, order, groups, retained events, typed
    payloads, request and reply, ``serve``'s concurrency, the overflow policies, refusals,
    ended subscriptions, closed channels, and the store (or its absence).

    *open_channel* is called several times; every channel it opens during one check must be
    connected to the others (for a bus, yield the same bus; for remote clients, connect each
    to the same broker), which must start with no subscriptions and no retained events under
    ``check.``; run the check once per bus or broker. With *stored*,
    the channels' topics under ``check.`` are persisted, and ``history`` and
    ``subscribe(since=…)`` are checked too; without, they must raise
    :exc:`~trio_realtime.StoreUnavailable`.

    *open_owned* opens a channel that its block owns: leaving the block closes it (for a
    bus, ``open_bus``; for a client, ``open_client``). It checks what a closed channel and
    its subscriptions do; by default *open_channel* is used, which must then close its
    channels on exit.

    Raises:
        AssertionError: naming the first behaviour that does not hold.
    """
    checks: list[Callable[[EventChannel, EventChannel], Any]] = [
        _check_basic,
        _check_wildcards,
        _check_order,
        _check_fanout_and_groups,
        _check_retained,
        _check_typed,
        _check_request_reply,
        _check_serve_concurrency,
        _check_ack_stored if stored else _check_ack_unstored,
        _check_overflow,
        _check_leave,
        _check_bad_input,
        _check_refusals,
    ]
    checks.append(_check_history if stored else _check_no_store)
    with temporary_event_type(CheckOrder, "check.typed.order"):
        for check in checks:
            await _run_check(open_channel, check)
        for early in (False, True):
            try:
                with trio.fail_after(STEP_TIMEOUT * 6):
                    await _check_closed(open_owned or open_channel, early=early)
            except _Failed as exc:
                how = "aclose()" if early else "leaving its block"
                raise AssertionError(f"closed by {how}: {exc}") from None


async def _run_check(
    open_channel: ChannelFactory, check: Callable[[EventChannel, EventChannel], Any]
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_channel())
        b = await stack.enter_async_context(open_channel())
        try:
            with trio.fail_after(STEP_TIMEOUT * 6):
                await check(a, b)
        except _Failed as exc:
            raise AssertionError(f"{check.__name__[7:]}: {exc}") from None


async def _check_basic(a: EventChannel, b: EventChannel) -> None:
    async with b.subscribe("check.basic.>") as sub:
        sent = await a.publish(
            "check.basic.one", {"n": 1, "s": "é"}, headers={"k": "v"}, source="checker"
        )
        got = await _receive(sub)
        _expect(got.topic == "check.basic.one", f"topic {got.topic!r}")
        _expect(got.data == {"n": 1, "s": "é"}, f"data {got.data!r}")
        _expect(got.id == sent.id, "the received id differs from the published one")
        _expect(got.type == "check.basic.one", f"type should default to the topic: {got.type!r}")
        _expect(got.source == "checker", f"source {got.source!r}")
        _expect(got.headers == {"k": "v"}, f"headers {got.headers!r}")
        _expect(got.time.tzinfo is not None, "time must be aware")
        _expect(got.reply_to is None, "reply_to must be None on a plain publish")
        typed = await a.publish("check.basic.two", [1, 2], type="custom.type")
        got = await _receive(sub)
        _expect(got.type == "custom.type" == typed.type, f"explicit type lost: {got.type!r}")


async def _check_wildcards(a: EventChannel, b: EventChannel) -> None:
    async with (
        b.subscribe("check.wild.*") as star,
        b.subscribe("check.wild.>") as rest,
        b.subscribe("check.*.x") as middle,
    ):
        for topic in ["check.wild.a", "check.wild.a.b", "check.other.x", "check.wild.x"]:
            await a.publish(topic)
        await a.publish("check.wild.x", "marker")
        expected = {
            "check.wild.*": ["check.wild.a", "check.wild.x"],
            "check.wild.>": ["check.wild.a", "check.wild.a.b", "check.wild.x"],
            "check.*.x": ["check.other.x", "check.wild.x"],
        }
        for sub in (star, rest, middle):
            got = [e.topic for e in await _until_marker(sub)]
            _expect(got == expected[sub.pattern], f"{sub.pattern!r} received {got}")


async def _check_order(a: EventChannel, b: EventChannel) -> None:
    async with b.subscribe("check.order") as sub:
        for i in range(300):
            await a.publish("check.order", i)
        got = [e.data for e in await _receive_n(sub, 300)]
        _expect(got == list(range(300)), "events from one publisher arrived out of order")


async def _check_fanout_and_groups(a: EventChannel, b: EventChannel) -> None:
    async with (
        b.subscribe("check.group.>") as plain1,
        a.subscribe("check.group.*") as plain2,
        b.subscribe("check.group.>", group="workers") as w1,
        a.subscribe("check.group.>", group="workers") as w2,
        b.subscribe("check.group.*", group="workers") as w3,
    ):
        n = 30
        for i in range(n):
            await a.publish("check.group.job", i)
        for plain in (plain1, plain2):
            got = [e.data for e in await _receive_n(plain, n)]
            _expect(got == list(range(n)), "a subscription without a group missed events")
        shares: list[Any] = []
        all_in = trio.Event()

        async def collect(worker: Subscription) -> None:
            async for event in worker:
                shares.append(event.data)
                if len(shares) >= n:
                    all_in.set()

        async with trio.open_nursery() as nursery:
            for worker in (w1, w2, w3):
                nursery.start_soon(collect, worker)
            with trio.fail_after(STEP_TIMEOUT):
                await all_in.wait()
            nursery.cancel_scope.cancel()
        _expect(
            sorted(shares) == list(range(n)),
            f"a queue group must get each event exactly once; got {sorted(shares)}",
        )


async def _check_retained(a: EventChannel, b: EventChannel) -> None:
    await a.publish("check.retained.x", "old", retain=True)
    await a.publish("check.retained.x", "new", retain=True)
    await a.publish("check.retained.y", "y", retain=True)
    await a.publish("check.retained.z", "not retained", ack=True)
    async with b.subscribe("check.retained.*") as sub:
        first = await _receive_n(sub, 2)
        _expect(
            sorted(e.data for e in first) == ["new", "y"],
            f"a new subscription gets the last retained event per topic: {first}",
        )
        await a.publish("check.retained.x", "live")
        _expect((await _receive(sub)).data == "live", "live events follow the retained ones")


async def _check_typed(a: EventChannel, b: EventChannel) -> None:
    async with b.subscribe(CheckOrder) as typed, b.subscribe("check.typed.>") as plain:
        sent = await a.publish(CheckOrder(order_id=1, total=2.5))
        _expect(sent.topic == "check.typed.order", f"typed publish topic {sent.topic!r}")
        _expect(sent.type == "check.typed.order", f"typed publish type {sent.type!r}")
        await a.publish("check.typed.order", {"order_id": 2, "total": 3.0})
        await a.publish("check.typed.order", {"no": "fit"})
        await a.publish("check.typed.order", {"order_id": 3, "total": 1.5})
        got = [e.data for e in await _receive_n(typed, 3)]
        _expect(
            got == [CheckOrder(1, 2.5), CheckOrder(2, 3.0), CheckOrder(3, 1.5)],
            f"typed subscription data {got}",
        )
        _expect(typed.statistics().rejected == 1, "a payload that does not fit is counted")
        raw = await _receive_n(plain, 4)
        _expect(raw[2].data == {"no": "fit"}, "a plain subscription gets every payload")


async def _check_request_reply(a: EventChannel, b: EventChannel) -> None:
    async def double(event: Event) -> Any:
        return {"doubled": event.data * 2}

    def fail(event: Event) -> Any:
        raise ValueError("cannot do that")

    async def stall(event: Event) -> Any:
        await trio.sleep_forever()

    async with (
        b.serve("check.rpc.double", double),
        b.serve("check.rpc.fail", fail),
        b.serve("check.rpc.stall", stall),
    ):
        reply = await a.request("check.rpc.double", 21)
        _expect(reply.data == {"doubled": 42}, f"reply data {reply.data!r}")
        replies = [(await a.request("check.rpc.double", i)).data["doubled"] for i in range(5)]
        _expect(replies == [0, 2, 4, 6, 8], f"sequential requests {replies}")
        try:
            await a.request("check.rpc.fail", 1)
        except RequestFailed as exc:
            _expect("cannot do that" in str(exc), f"RequestFailed lost the message: {exc}")
        else:
            raise _Failed("a failing handler must make request() raise RequestFailed")
        reply = await a.request("check.rpc.double", 1)
        _expect(reply.data == {"doubled": 2}, "the responder must keep serving after a failure")
        try:
            await a.request("check.rpc.stall", None, timeout=0.2)
        except trio.TooSlowError:
            pass
        else:
            raise _Failed("request() must raise TooSlowError on timeout")
    try:
        await a.request("check.rpc.nobody", 1)
    except NoResponders:
        pass
    else:
        raise _Failed("request() to a topic nobody serves must raise NoResponders")


async def _check_serve_concurrency(a: EventChannel, b: EventChannel) -> None:
    for limit in (1, 2):
        await _check_concurrency_limit(a, b, limit)


async def _check_concurrency_limit(a: EventChannel, b: EventChannel, limit: int) -> None:
    async def echo(event: Event) -> Any:
        return event.data

    active = most = 0
    first_in = trio.Event()
    second_in = trio.Event()
    release = trio.Event()

    async def handler(event: Event) -> Any:
        nonlocal active, most
        active += 1
        most = max(most, active)
        (first_in if event.data == 0 else second_in).set()
        if event.data == 0:
            await release.wait()
        active -= 1
        return event.data

    replies: list[Any] = []

    async def ask(n: int, topic: str) -> None:
        replies.append((await a.request(topic, n)).data)

    async with (
        b.serve(f"check.conc.{limit}", handler, max_concurrency=limit),
        b.serve(f"check.probe.{limit}", echo),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(ask, 0, f"check.conc.{limit}")
        with trio.fail_after(STEP_TIMEOUT):
            await first_in.wait()
        nursery.start_soon(ask, 1, f"check.conc.{limit}")
        await trio.testing.wait_all_tasks_blocked()  # the second request is sent (or queued)
        if limit == 1:
            # Two round trips through the responder after the second request: by their
            # answers, it has read the second request, and could have started it.
            await a.request(f"check.probe.{limit}", "probe")
            await a.request(f"check.probe.{limit}", "probe")
            _expect(not second_in.is_set(), "max_concurrency=1 started a second handler")
        else:
            with trio.fail_after(STEP_TIMEOUT):
                await second_in.wait()  # while the first is still running
        release.set()
    _expect(sorted(replies) == [0, 1], f"serve answered {replies}, not [0, 1]")
    _expect(most == limit, f"max_concurrency={limit} ran at most {most} handlers at once")


async def _check_ack_stored(a: EventChannel, b: EventChannel) -> None:
    async with b.subscribe("check.ack.>") as sub:
        for i in range(3):
            await a.publish("check.ack.x", i)
        acked = await a.publish("check.ack.x", 3, ack=True)
        _expect(acked.seq is not None, "ack=True on a stored topic returns the event's seq")
        got = await _receive_n(sub, 4)
        _expect([e.data for e in got] == [0, 1, 2, 3], f"acked publish order {got}")
        _expect(got[3].id == acked.id and got[3].seq == acked.seq, "the acked event is routed")
        seqs = [e.seq or 0 for e in got]
        _expect(all(seqs) and seqs == sorted(seqs), f"stored events have rising seqs: {seqs}")


async def _check_ack_unstored(a: EventChannel, b: EventChannel) -> None:
    async with b.subscribe("check.ack.>") as sub:
        for i in range(3):
            await a.publish("check.ack.x", i)
        acked = await a.publish("check.ack.x", 3, ack=True)
        _expect(acked.seq is None, f"without a store, an acked event has no seq: {acked.seq}")
        got = await _receive_n(sub, 4)
        _expect([e.data for e in got] == [0, 1, 2, 3], f"acked publish order {got}")
        _expect(got[3].id == acked.id, "the acked event is the one routed")


async def _check_refusals(a: EventChannel, b: EventChannel) -> None:
    async def refused(what: str, call: Callable[[], Any], cls: type[Refused], code: str) -> None:
        try:
            await call()
        except cls as exc:
            _expect(isinstance(exc, Refused), f"{what}: {cls.__name__} must be a Refused")
            _expect(exc.code == code, f"{what}: code {exc.code!r}, not {code!r}")
        else:
            raise _Failed(f"{what} must raise {cls.__name__}")

    async def subscribe_bad() -> None:
        async with b.subscribe("check..x"):
            pass

    async def serve_bad() -> None:
        async with b.serve("check..x", lambda event: None):
            pass

    await refused(
        "publish to a bad topic", lambda: a.publish("check..x"), InvalidTopic, "invalid_topic"
    )
    await refused("subscribe to a bad pattern", subscribe_bad, InvalidTopic, "invalid_topic")
    await refused("serve a bad pattern", serve_bad, InvalidTopic, "invalid_topic")
    await refused(
        "request to a bad topic", lambda: a.request("check.>", 1), InvalidTopic, "invalid_topic"
    )
    await refused(
        "history of a bad pattern", lambda: a.history("check..x"), InvalidTopic, "invalid_topic"
    )
    await refused(
        "a request nobody serves",
        lambda: a.request("check.nobody", 1),
        NoResponders,
        "no_responders",
    )
    # A refusal leaves the channel usable.
    async with b.subscribe("check.after") as sub:
        await a.publish("check.after", "ok")
        _expect((await _receive(sub)).data == "ok", "the channel stopped working after a refusal")


async def _check_closed(open_owned: ChannelFactory, *, early: bool) -> None:
    """A subscription live when its channel closes (its block exits or, *early*, aclose() is
    called in the block) ends cleanly after its buffered events; a closed channel refuses
    everything with trio.ClosedResourceError; aclose() again is a no-op."""
    got: list[Any] = []
    subscribed = trio.Event()
    received = trio.Event()
    ended_cleanly = trio.Event()
    async with trio.open_nursery() as nursery:
        async with open_owned() as channel:

            async def consume() -> None:
                async with channel.subscribe("check.closing") as sub:
                    subscribed.set()
                    async for event in sub:
                        got.append(event.data)
                        received.set()
                ended_cleanly.set()  # the iteration ended without an exception

            nursery.start_soon(consume)
            with trio.fail_after(STEP_TIMEOUT):
                await subscribed.wait()
            await channel.publish("check.closing", 1)
            with trio.fail_after(STEP_TIMEOUT):
                await received.wait()
            if early:
                await channel.aclose()
                with trio.fail_after(STEP_TIMEOUT):
                    await ended_cleanly.wait()  # before the block exits
                await channel.aclose()  # a no-op
        with trio.fail_after(STEP_TIMEOUT):
            await ended_cleanly.wait()
    _expect(got == [1], f"the live subscription got {got}")

    async def subscribe() -> None:
        async with channel.subscribe("check.closed"):
            pass

    async def subscribe_since() -> None:
        async with channel.subscribe("check.closed", since=0):
            pass

    async def serve() -> None:
        async with channel.serve("check.closed", lambda event: None):
            pass

    calls: list[tuple[str, Callable[[], Any]]] = [
        ("publish", lambda: channel.publish("check.closed", 1)),
        ("publish(ack=True)", lambda: channel.publish("check.closed", 1, ack=True)),
        ("subscribe", subscribe),
        ("subscribe(since=0)", subscribe_since),
        ("serve", serve),
        ("request", lambda: channel.request("check.closed", 1)),
        ("history", lambda: channel.history("check.closed")),
    ]
    for what, call in calls:
        try:
            await call()
        except trio.ClosedResourceError:
            pass
        except Exception as exc:  # noqa: BLE001 - any other exception is the failure
            raise _Failed(
                f"{what} on a closed channel raised {exc!r}, not ClosedResourceError"
            ) from None
        else:
            raise _Failed(f"{what} on a closed channel must raise trio.ClosedResourceError")


async def _check_overflow(a: EventChannel, b: EventChannel) -> None:
    async with (
        b.subscribe("check.flow", max_buffer_size=2, overflow="drop_oldest") as oldest,
        b.subscribe("check.flow", max_buffer_size=2, overflow=Overflow.DROP_NEWEST) as newest,
        b.subscribe("check.flow", max_buffer_size=2, overflow="disconnect") as disconnect,
        b.subscribe("check.flow", max_buffer_size=math.inf) as witness,
    ):
        for i in range(5):
            await a.publish("check.flow", i)
        await _receive_n(witness, 5)
        got = [e.data for e in await _receive_n(oldest, 2)]
        _expect(got == [3, 4], f"drop_oldest kept {got}, not the newest [3, 4]")
        _expect(oldest.missed == 3, f"drop_oldest missed {oldest.missed}, not 3")
        got = [e.data for e in await _receive_n(newest, 2)]
        _expect(got == [0, 1], f"drop_newest kept {got}, not the oldest [0, 1]")
        _expect(newest.missed == 3, f"drop_newest missed {newest.missed}, not 3")
        try:
            await _receive(disconnect)
        except SlowConsumer:
            pass
        else:
            raise _Failed("an overflowing 'disconnect' subscription must raise SlowConsumer")
    async with b.subscribe("check.block", max_buffer_size=2, overflow="block") as blocking:
        async with trio.open_nursery() as nursery:

            async def publish_all() -> None:
                for i in range(20):
                    await a.publish("check.block", i)

            nursery.start_soon(publish_all)
            got = [e.data for e in await _receive_n(blocking, 20)]
        _expect(got == list(range(20)), f"block must be lossless and in order: {got}")
        _expect(blocking.missed == 0, "block must never drop")


async def _check_leave(a: EventChannel, b: EventChannel) -> None:
    async with b.subscribe("check.leave") as sub:
        await a.publish("check.leave", 1)
        await _receive(sub)
    try:
        sub.receive_nowait()
    except trio.ClosedResourceError:
        pass
    else:
        raise _Failed("receiving after leaving the subscription block must raise")
    with trio.CancelScope() as scope:
        async with b.subscribe("check.leave") as sub:
            scope.cancel()
            await trio.sleep_forever()
    try:
        await a.request("check.leave", None, timeout=STEP_TIMEOUT)
    except NoResponders:
        pass
    else:
        raise _Failed("a subscription cancelled out of its block must be gone")


async def _check_bad_input(a: EventChannel, b: EventChannel) -> None:
    for topic in ["", "check..x", "check.*", "check.>", "check x", "check.é"]:
        try:
            await a.publish(topic, 1)
        except InvalidTopic as exc:
            _expect(repr(topic) in str(exc), f"InvalidTopic must name the topic: {exc}")
        else:
            raise _Failed(f"publish({topic!r}) must raise InvalidTopic")
    for pattern in ["", "check.>.x", "check.a*", "check..x"]:
        try:
            async with b.subscribe(pattern):
                pass
        except InvalidTopic:
            pass
        else:
            raise _Failed(f"subscribe({pattern!r}) must raise InvalidTopic")
    try:
        await a.publish("check.bad", {"x": {1, 2}})
    except TypeError as exc:
        _expect("{1, 2}" in str(exc), f"the TypeError must name the bad value: {exc}")
    else:
        raise _Failed("publishing data that is not JSON-compatible must raise TypeError")
    await _check_bad_arguments(b)
    async with b.subscribe("check.bad") as sub:
        await a.publish("check.bad", "fine")
        _expect((await _receive(sub)).data == "fine", "the channel must work after bad input")


async def _check_bad_arguments(channel: EventChannel) -> None:
    """A bad ``since`` or ``limit`` is refused before anything else, store or no store."""

    def subscribe_since(since: Any) -> Callable[[], Any]:
        async def call() -> None:
            async with channel.subscribe("check.bad", since=since):
                pass

        return call

    calls: list[tuple[str, Callable[[], Any], type[Exception]]] = [
        ("subscribe(since=-1)", subscribe_since(-1), ValueError),
        ("subscribe(since='1')", subscribe_since("1"), TypeError),
        ("subscribe(since=True)", subscribe_since(True), TypeError),
        ("history(since=-1)", lambda: channel.history("check.bad", since=-1), ValueError),
        ("history(since=1.5)", lambda: channel.history("check.bad", since=1.5), TypeError),  # type: ignore[arg-type]
        ("history(limit=-1)", lambda: channel.history("check.bad", limit=-1), ValueError),
        ("history(limit=True)", lambda: channel.history("check.bad", limit=True), ValueError),
    ]
    for what, call, expected in calls:
        try:
            await call()
        except StoreUnavailable:
            raise _Failed(f"{what}: the bad argument must be refused first") from None
        except expected:
            pass
        else:
            raise _Failed(f"{what} must raise {expected.__name__}")


async def _check_history(a: EventChannel, b: EventChannel) -> None:
    first = await a.publish("check.history.a", 0, ack=True)
    assert first.seq is not None
    _expect(first.seq > 0, f"a persisted publish returns its seq: {first.seq}")
    for i in range(1, 10):
        await a.publish("check.history.b" if i % 2 else "check.history.a", i, ack=True)
    got = await b.history("check.history.>", since=first.seq - 1, limit=100)
    _expect([e.data for e in got] == list(range(10)), f"history {[e.data for e in got]}")
    seqs = [e.seq or 0 for e in got]
    _expect(seqs == sorted(seqs) and len(set(seqs)) == 10, "history is in strictly rising seq")
    got = await b.history("check.history.a", since=first.seq - 1, limit=3)
    _expect([e.data for e in got] == [0, 2, 4], f"history with pattern and limit {got}")
    middle = got[1].seq
    assert middle is not None
    async with b.subscribe("check.history.>", since=middle) as sub:
        await a.publish("check.history.a", 10)
        replayed = [e.data for e in await _receive_n(sub, 8)]
        _expect(replayed == list(range(3, 11)), f"since replays then goes live: {replayed}")
    when: datetime = got[0].time
    got = await b.history("check.history.>", since=when, limit=1)
    _expect(len(got) == 1 and got[0].time >= when, "history since a time")


async def _check_no_store(a: EventChannel, b: EventChannel) -> None:
    for channel in (a, b):
        try:
            await channel.history("check.>")
        except StoreUnavailable:
            pass
        else:
            raise _Failed("history() without a store must raise StoreUnavailable")
        try:
            async with channel.subscribe("check.>", since=0):
                pass
        except StoreUnavailable:
            pass
        else:
            raise _Failed("subscribe(since=…) without a store must raise StoreUnavailable")
    # The channel is still usable.
    async with b.subscribe("check.nostore") as sub:
        await a.publish("check.nostore", "after")
        _expect((await _receive(sub)).data == "after", "the channel stopped working")
