"""Webhooks on Trio's mock clock: an in-process broker posts to httpx's MockTransport.

The receiver checks every request with the Standard Webhooks reference library
(``standardwebhooks``) and records when it came, in virtual time, so that the retry schedule,
``Retry-After`` and timeouts are checked to the second without waiting for them.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import httpx
import pytest
import standardwebhooks
import trio
import trio.testing
from conftest import running_broker
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from trio_realtime import Broker, Bus, Event, StoreError, open_bus
from trio_realtime.integrations._webhooks import new_webhook_secret, parse_retry_after
from trio_realtime.store import MemoryStore

URL: Final = "http://hooks.test/events"
SECRET: Final = new_webhook_secret()
#: A virtual-time hang guard: longer than any schedule below.
GUARD: Final = 7 * 24 * 3600

Answer = Callable[[httpx.Request, int], Awaitable[httpx.Response]]


@attrs.frozen
class Received:
    """One request the receiver verified."""

    at: float
    webhook_id: str
    body: dict[str, Any]
    headers: dict[str, str]


async def accept(request: httpx.Request, n: int) -> httpx.Response:
    """Answer 204: delivered."""
    await trio.lowlevel.checkpoint()
    return httpx.Response(204)


def answering(*statuses: int, then: int = 204, headers: dict[str, str] | None = None) -> Answer:
    """Answer the requests with *statuses* in turn, then with *then*, each with *headers*."""

    async def answer(request: httpx.Request, n: int) -> httpx.Response:
        await trio.lowlevel.checkpoint()
        return httpx.Response(statuses[n] if n < len(statuses) else then, headers=headers)

    return answer


class Receiver:
    """An endpoint in process: verifies each request's signature and records it."""

    def __init__(self, answer: Answer = accept, *, secrets: tuple[str, ...] = (SECRET,)) -> None:
        self.answer = answer
        self.verifiers = [standardwebhooks.Webhook(secret) for secret in secrets]
        self.received: list[Received] = []
        self._changed = trio.Event()
        self.transport = httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = dict(request.headers)
        for verifier in self.verifiers:
            verifier.verify(body, headers)  # (raises if the signature is not right)
        n = len(self.received)
        self.received.append(
            Received(trio.current_time(), headers["webhook-id"], json.loads(body), headers)
        )
        self._changed.set()
        self._changed = trio.Event()
        return await self.answer(request, n)

    async def wait_for(self, n: int) -> list[Received]:
        """Once *n* requests came: the first *n*."""
        while len(self.received) < n:
            await self._changed.wait()
        return self.received[:n]

    @property
    def times(self) -> list[float]:
        return [r.at for r in self.received]

    @property
    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.received]


@asynccontextmanager
async def sys_events(bus: Bus) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
    """The ``$sys.webhook.*`` events published from now on, as a channel."""
    send, receive = trio.open_memory_channel[Event](1000)
    async with bus.subscribe("$sys.webhook.>") as sub, trio.open_nursery() as nursery:

        async def pump() -> None:
            async for event in sub:
                await send.send(event)

        nursery.start_soon(pump)
        yield receive
        nursery.cancel_scope.cancel()


def make_broker(receiver: Receiver, *, store: bool = True, **options: Any) -> Broker:
    broker = Broker(store=MemoryStore() if store else None, stats_interval=None)
    options.setdefault("secret", SECRET)
    broker.webhook("hook", URL, "orders.>", transport=receiver.transport, **options)
    return broker


async def test_an_event_is_posted_as_a_signed_cloudevent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The body is the stored event as a structured CloudEvent; the headers are Standard
    Webhooks' (the reference library verifies the signature), webhook-id is the event id."""
    receiver = Receiver()
    with trio.fail_after(GUARD):
        async with running_broker(make_broker(receiver)) as served:
            event = await served.broker.bus.publish("orders.created", {"id": 7})
            [got] = await receiver.wait_for(1)
            assert got.webhook_id == event.id
            assert got.body == json.loads(json.dumps(event.to_cloudevent()))
            assert got.body["subject"] == "orders.created"
            assert got.body["sequence"] == f"{event.seq:020d}"
            assert got.headers["content-type"] == "application/cloudevents+json"
            assert got.headers["user-agent"].startswith("trio-realtime")
            assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
            await served.broker.bus.publish("other.topic", 1)
            await served.broker.bus.publish("orders.paid", 2)
            await receiver.wait_for(2)
            await trio.testing.wait_all_tasks_blocked()
            assert [r.body["subject"] for r in receiver.received] == [
                "orders.created",
                "orders.paid",
            ]
            stats = served.broker.statistics().webhooks["hook"]
            assert (stats.delivered, stats.attempts, stats.failed, stats.dropped) == (2, 2, 0, 0)


async def test_several_secrets_sign_each_request_during_a_rotation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With two secrets, each request carries two signatures: receivers holding either
    secret verify it."""
    new = new_webhook_secret()
    receiver = Receiver(secrets=(SECRET, new))  # (each verifier alone must accept it)
    with trio.fail_after(GUARD):
        async with running_broker(make_broker(receiver, secret=[SECRET, new])) as served:
            await served.broker.bus.publish("orders.created", 1)
            [got] = await receiver.wait_for(1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_webhook_secret()).verify(json.dumps(got.body), got.headers)


async def test_the_retry_schedule_doubles_to_its_cap_with_full_jitter(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing endpoint is tried *attempts* times; each wait is drawn below a bound that
    doubles from *backoff* up to *max_backoff* (here drawn at the bound: exact times), with
    the same webhook-id; then the event fails and, nothing having succeeded meanwhile, the
    endpoint is disabled."""
    monkeypatch.setattr("random.uniform", lambda low, high: high)
    receiver = Receiver(answering(then=503))
    broker = make_broker(receiver, attempts=6, backoff=10, max_backoff=40)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served, sys_events(served.broker.bus) as sys:
            start = trio.current_time()
            event = await served.broker.bus.publish("orders.created", 1)
            failed = await sys.receive()
            disabled = await sys.receive()
    assert [t - start for t in receiver.times] == [0, 10, 30, 70, 110, 150]
    assert set(receiver.ids) == {event.id}
    assert failed.topic == "$sys.webhook.failed"
    assert failed.data == {
        "webhook": "hook",
        "event": event.id,
        "topic": "orders.created",
        "seq": event.seq,
        "attempts": 6,
        "reason": "HTTP 503",
    }
    assert disabled.topic == "$sys.webhook.disabled"
    assert disabled.data["webhook"] == "hook"
    assert "every attempt failed" in disabled.data["reason"]
    stats = broker.statistics().webhooks["hook"]
    assert (stats.attempts, stats.failed_attempts, stats.failed, stats.delivered) == (6, 6, 1, 0)
    assert stats.disabled
    assert broker.statistics().webhooks["hook"].cursor == event.seq  # (given up: done with)


async def test_the_waits_are_random_below_their_bounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without a fixed draw, each wait lies between 0 and its bound (full jitter), and the
    default schedule's bounds add up to about two days."""
    receiver = Receiver(answering(then=500))
    broker = make_broker(receiver, attempts=8, backoff=10, max_backoff=100)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served, sys_events(served.broker.bus) as sys:
            await served.broker.bus.publish("orders.created", 1)
            await sys.receive()
    waits = [b - a for a, b in zip(receiver.times, receiver.times[1:], strict=False)]
    bounds = [10, 20, 40, 80, 100, 100, 100]
    assert len(waits) == len(bounds)
    assert all(0 <= wait <= bound for wait, bound in zip(waits, bounds, strict=True)), waits
    default = Broker().webhook("default", URL, ">", secret=SECRET)
    total = sum(default.retry_bounds())
    assert 1.5 * 86400 < total < 2.5 * 86400  # (on average half of it: about a day)


async def test_retry_after_in_seconds_and_as_a_date_is_honoured_and_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Retry-After sets the next wait: in seconds, as an HTTP date, and at most
    max_backoff."""
    later = email.utils.formatdate(time.time() + 300, usegmt=True)
    statuses = iter([("120", 429), (later, 503), ("999999", 503)])

    async def answer(request: httpx.Request, n: int) -> httpx.Response:
        await trio.lowlevel.checkpoint()
        for retry_after, status in statuses:
            return httpx.Response(status, headers={"retry-after": retry_after})
        return httpx.Response(200)

    receiver = Receiver(answer)
    with trio.fail_after(GUARD):
        async with running_broker(make_broker(receiver, max_backoff=1000)) as served:
            await served.broker.bus.publish("orders.created", 1)
            await receiver.wait_for(4)
    waits = [b - a for a, b in zip(receiver.times, receiver.times[1:], strict=False)]
    assert waits[0] == 120
    assert 298 <= waits[1] <= 301  # (an HTTP date has whole seconds, and the wall clock moves)
    assert waits[2] == 1000


async def test_retry_after_holds_back_the_endpoint_s_other_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While an endpoint's Retry-After runs, its other events wait too."""
    receiver = Receiver(answering(429, headers={"retry-after": "60"}))
    with trio.fail_after(GUARD):
        async with running_broker(make_broker(receiver)) as served:
            start = trio.current_time()
            await served.broker.bus.publish("orders.created", 1)
            await receiver.wait_for(1)
            await served.broker.bus.publish("orders.created", 2)
            await receiver.wait_for(3)
    assert [t - start for t in receiver.times] == [0, 60, 60]


async def test_410_gone_disables_the_endpoint(autojump_clock: trio.testing.MockClock) -> None:
    """An endpoint that answers 410 is disabled at once: announced, counted, sent nothing
    more; its cursor stays before the event it did not take."""
    receiver = Receiver(answering(204, 410))
    broker = make_broker(receiver)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served, sys_events(served.broker.bus) as sys:
            first = await served.broker.bus.publish("orders.created", 1)
            await receiver.wait_for(1)
            await served.broker.bus.publish("orders.created", 2)
            disabled = await sys.receive()
            await served.broker.bus.publish("orders.created", 3)
            await trio.sleep(3600)
    assert disabled.topic == "$sys.webhook.disabled"
    assert disabled.data == {"webhook": "hook", "reason": "it answered 410 Gone"}
    assert len(receiver.received) == 2
    stats = broker.statistics().webhooks["hook"]
    assert stats.disabled
    assert stats.disabled_reason == "it answered 410 Gone"
    assert (stats.delivered, stats.failed) == (1, 0)
    assert stats.cursor == first.seq


async def test_an_attempt_that_takes_too_long_is_cut_at_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An endpoint that does not answer within *timeout* fails that attempt (retried after
    its backoff); one that answers in time is delivered."""

    async def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n == 0:
            await trio.sleep_forever()
        await trio.sleep(4)  # (within the timeout)
        return httpx.Response(200)

    receiver = Receiver(answer)
    broker = make_broker(receiver, timeout=5, backoff=1, max_backoff=1)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served:
            start = trio.current_time()
            await served.broker.bus.publish("orders.created", 1)
            await receiver.wait_for(2)
            await trio.sleep(10)  # (the second attempt's answer takes 4 s)
    assert receiver.times[0] - start == 0
    assert 5 <= receiver.times[1] - start <= 6
    stats = broker.statistics().webhooks["hook"]
    assert (stats.attempts, stats.failed_attempts, stats.delivered) == (2, 1, 1)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed_and_fails_the_event(
    autojump_clock: trio.testing.MockClock, status: int
) -> None:
    """A 3xx is not followed (nothing is posted to its Location) and the event fails at
    once: a redirect is the endpoint's configuration to fix."""
    receiver = Receiver(answering(then=status, headers={"location": "http://elsewhere.test/"}))
    with trio.fail_after(GUARD):
        async with running_broker(make_broker(receiver)) as served:
            async with sys_events(served.broker.bus) as sys:
                await served.broker.bus.publish("orders.created", 1)
                failed = await sys.receive()
            await trio.sleep(3600)
    assert len(receiver.received) == 1
    assert failed.data["reason"] == f"HTTP {status} (a redirect: not followed)"
    assert failed.data["attempts"] == 1


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        *[(status, False) for status in (400, 401, 404, 422)],
        *[(status, True) for status in (408, 409, 425, 429, 500, 502)],
    ],
)
async def test_client_errors_are_final_but_a_few(
    autojump_clock: trio.testing.MockClock, status: int, retried: bool
) -> None:
    """A 4xx is the endpoint's final answer (the event fails at once), but 408, 409, 425 and
    429, which are retried as 5xx are."""
    receiver = Receiver(answering(status))
    with trio.fail_after(GUARD):
        async with running_broker(make_broker(receiver)) as served:
            async with sys_events(served.broker.bus) as sys:
                await served.broker.bus.publish("orders.created", 1)
                if retried:
                    await receiver.wait_for(2)
                else:
                    failed = await sys.receive()
                    assert failed.data["reason"] == f"HTTP {status}"
            await trio.sleep(3600)
    stats = served.broker.statistics().webhooks["hook"]
    assert len(receiver.received) == (2 if retried else 1)
    assert (stats.delivered, stats.failed) == ((1, 0) if retried else (0, 1))


async def test_a_hanging_endpoint_slows_neither_the_broker_nor_other_endpoints(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One endpoint that never answers: the publisher never waits for it, and another
    endpoint gets every event at once."""
    hanging = Receiver(answering())

    async def never(request: httpx.Request, n: int) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    hanging.answer = never
    fine = Receiver()
    broker = Broker(store=MemoryStore(), stats_interval=None)
    broker.webhook("stuck", URL, ">", secret=SECRET, transport=hanging.transport, buffer=10)
    broker.webhook("fine", URL, ">", secret=SECRET, transport=fine.transport, max_pending=10_000)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served:
            start = trio.current_time()
            for n in range(2000):
                await served.broker.bus.publish("orders.created", n)
            assert trio.current_time() == start  # (the publisher never waited)
            await fine.wait_for(2000)
            assert trio.current_time() == start
            stuck = broker.statistics().webhooks["stuck"]
            assert stuck.in_flight == 4  # (its concurrency: requests hanging)
            assert stuck.dropped == 0  # (stored events wait in the store, not lost)


async def test_overflow_of_an_unstored_topic_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without a store, events that find the endpoint's buffer full are dropped and counted
    (in statistics and metrics); the publisher does not wait."""
    from trio_realtime.broker._http import metrics_text

    async def slow(request: httpx.Request, n: int) -> httpx.Response:
        await trio.sleep(10)
        return httpx.Response(200)

    receiver = Receiver(slow)
    broker = make_broker(receiver, store=False, buffer=5, max_pending=1, concurrency=1)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served:
            for n in range(50):
                await served.broker.bus.publish("orders.created", n)
            await trio.testing.wait_all_tasks_blocked()
            stats = broker.statistics().webhooks["hook"]
            assert stats.dropped > 0
            assert stats.dropped + stats.queued + stats.in_flight == 50
            samples = {
                (s.name, s.labels.get("webhook")): s.value
                for family in text_string_to_metric_families(metrics_text(broker).decode())
                for s in family.samples
            }
            assert samples["trio_realtime_webhook_dropped_total", "hook"] == stats.dropped
            await receiver.wait_for(50 - stats.dropped)
            await trio.sleep(11)  # (the last answer takes 10 s)
            assert broker.statistics().webhooks["hook"].delivered == 50 - stats.dropped
    bodies = [r.body["data"] for r in receiver.received]
    assert bodies == sorted(bodies)  # (the ones delivered, in order)
    assert ("trio_realtime_webhook_cursor", "hook") not in samples  # (no store: no cursor)


async def test_stored_events_that_overflow_are_read_from_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a store, a full buffer loses nothing: the endpoint reads the events it could
    not take from the store, each once, in order."""

    async def slow(request: httpx.Request, n: int) -> httpx.Response:
        await trio.sleep(1)
        return httpx.Response(200)

    receiver = Receiver(slow)
    broker = make_broker(receiver, buffer=3, max_pending=2, concurrency=1)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served:
            published = [await served.broker.bus.publish("orders.created", n) for n in range(200)]
            await receiver.wait_for(200)
            await trio.sleep(5)
            stats = broker.statistics().webhooks["hook"]
    assert receiver.ids == [event.id for event in published]
    assert (stats.delivered, stats.dropped, stats.cursor) == (200, 0, published[-1].seq)


async def test_a_restarted_broker_resumes_from_the_cursor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The cursor is saved in the store: a broker serving again over the same store posts
    the events the last one did not deliver, and not those it did."""
    receiver = Receiver()
    async with open_bus(store=MemoryStore()) as bus:
        with trio.fail_after(GUARD):
            broker = Broker(bus=bus, stats_interval=None)
            broker.webhook("hook", URL, "orders.>", secret=SECRET, transport=receiver.transport)
            async with running_broker(broker):
                done = [await bus.publish("orders.created", n) for n in range(5)]
                await receiver.wait_for(5)
                receiver.answer = answering(then=503)
                undone = [await bus.publish("orders.created", n) for n in range(5, 10)]
                await receiver.wait_for(10)
            assert await bus.store.load_cursor("webhook:hook") == done[-1].seq  # type: ignore[union-attr]
            later = [await bus.publish("orders.created", n) for n in range(10, 12)]
            receiver.answer = accept
            again = Broker(bus=bus, stats_interval=None)
            again.webhook("hook", URL, "orders.>", secret=SECRET, transport=receiver.transport)
            async with running_broker(again):
                await receiver.wait_for(17)
                await trio.sleep(CURSOR_WAIT)
                assert again.statistics().webhooks["hook"].cursor == later[-1].seq
    assert receiver.ids[10:] == [event.id for event in undone + later]


#: Virtual seconds after which the cursor has been saved.
CURSOR_WAIT: Final = 2.0


async def test_a_new_endpoint_starts_with_the_newest_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An endpoint without a cursor does not post what was stored before it started."""
    receiver = Receiver()
    async with open_bus(store=MemoryStore()) as bus:
        await bus.publish("orders.created", "old")
        broker = Broker(bus=bus, stats_interval=None)
        broker.webhook("hook", URL, "orders.>", secret=SECRET, transport=receiver.transport)
        with trio.fail_after(GUARD):
            async with running_broker(broker):
                new = await bus.publish("orders.created", "new")
                await receiver.wait_for(1)
                await trio.sleep(CURSOR_WAIT)
    assert receiver.ids == [new.id]


async def test_an_event_matching_two_patterns_is_posted_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Patterns that overlap post an event once, live and when read from the store."""
    receiver = Receiver()
    broker = Broker(store=MemoryStore(), stats_interval=None)
    broker.webhook(
        "hook", URL, ["orders.>", "*.created"], secret=SECRET, transport=receiver.transport
    )
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served:
            bus = served.broker.bus
            events = [
                await bus.publish("orders.created", 1),
                await bus.publish("users.created", 2),
                await bus.publish("orders.paid", 3),
            ]
            await receiver.wait_for(3)
            await trio.sleep(60)
    assert receiver.ids == [event.id for event in events]


async def test_an_endpoint_s_own_failures_are_not_posted_to_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An endpoint on ``$sys.>`` gets others' events, but not its own $sys.webhook.* (which
    would fail in turn, without end)."""
    receiver = Receiver(answering(then=400))
    broker = Broker(stats_interval=None)
    broker.webhook("hook", URL, ["orders.>", "$sys.>"], secret=SECRET, transport=receiver.transport)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served:
            await served.broker.bus.publish("orders.created", 1)
            await receiver.wait_for(1)
            await trio.sleep(3600)
    assert [r.body["subject"] for r in receiver.received] == ["orders.created"]


def test_webhook_settings_are_checked() -> None:
    """Bad settings raise at once, naming the setting; the repr shows no secret."""
    broker = Broker()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "a b"}, "name"),
        ({"url": "ftp://x"}, "url"),
        ({"url": "http://user:pw@x.test/"}, "credentials"),
        ({"patterns": []}, "patterns"),
        ({"patterns": ["a..b"]}, r"patterns\[0\]"),
        ({"secret": "whsec_!!"}, "secret"),
        ({"secret": "whsec_" + "QUJD"}, "3 bytes"),
        ({"timeout": 0}, "timeout"),
        ({"attempts": 0}, "attempts"),
        ({"backoff": 10, "max_backoff": 5}, "max_backoff"),
        ({"buffer": 0}, "buffer"),
    ]
    for options, message in cases:
        arguments: dict[str, Any] = {"name": "hook", "url": URL, "patterns": ">", "secret": SECRET}
        arguments |= options
        with pytest.raises(ValueError, match=message):
            broker.webhook(**arguments)
    hook = broker.webhook("hook", URL, ">", secret=SECRET)
    assert SECRET.removeprefix("whsec_") not in repr(hook)
    with pytest.raises(ValueError, match="already a webhook named 'hook'"):
        broker.webhook("hook", URL, ">", secret=SECRET)


@given(
    st.one_of(st.text(), st.from_regex(r"[A-Za-z]{3}, \d{1,2} [A-Za-z]{3} \d{1,6} [\d:]{8} \S+"))
)
def test_any_retry_after_is_a_wait_or_nothing(value: str) -> None:
    """Whatever an endpoint sends as Retry-After, it reads as a wait of 0 or more seconds, or
    as nothing: it never raises."""
    wait = parse_retry_after(value, 1_700_000_000.0)
    assert wait is None or wait >= 0
    assert parse_retry_after(" 30 ", 0) == 30
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40) == 60
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", 40) == 0


async def test_webhooks_are_added_before_the_broker_serves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Adding an endpoint to a serving broker is refused."""
    async with running_broker(Broker(stats_interval=None)) as served:
        with pytest.raises(RuntimeError, match="before the broker serves"):
            served.broker.webhook("late", URL, ">", secret=SECRET)


async def test_a_connection_that_fails_is_retried_and_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No connection (refused, or a name that does not resolve) fails the attempt; it is
    retried, and the failure names what happened."""

    async def refuse(request: httpx.Request, n: int) -> httpx.Response:
        await trio.lowlevel.checkpoint()
        raise httpx.ConnectError("connection refused", request=request)

    receiver = Receiver(refuse)
    broker = make_broker(receiver, attempts=3, backoff=1, max_backoff=1)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served, sys_events(served.broker.bus) as sys:
            await served.broker.bus.publish("orders.created", 1)
            failed = await sys.receive()
    assert failed.data["reason"] == "cannot connect: connection refused"
    assert failed.data["attempts"] == 3
    assert len(receiver.received) == 3


class _FailingCursors(MemoryStore):
    """A store whose cursors cannot be read or saved."""

    async def load_cursor(self, name: str) -> int | None:
        await trio.lowlevel.checkpoint()
        raise StoreError("the cursor table is damaged")

    async def save_cursor(self, name: str, seq: int) -> None:
        await trio.lowlevel.checkpoint()
        raise StoreError("the disk is full")


async def test_a_store_that_fails_its_cursors_does_not_stop_delivery(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An endpoint whose cursor cannot be read starts with the newest events, and one whose
    cursor cannot be saved goes on delivering; both are logged, without a traceback."""
    receiver = Receiver()
    broker = Broker(store=_FailingCursors(), stats_interval=None)
    broker.webhook("hook", URL, "orders.>", secret=SECRET, transport=receiver.transport)
    with trio.fail_after(GUARD):
        async with running_broker(broker) as served:
            for n in range(3):
                await served.broker.bus.publish("orders.created", n)
            await receiver.wait_for(3)
            await trio.sleep(CURSOR_WAIT)
    assert broker.statistics().webhooks["hook"].delivered == 3
    messages = [record.getMessage() for record in caplog.records]
    assert any("cannot read its cursor" in m and "damaged" in m for m in messages)
    assert any("cannot save its cursor" in m and "disk is full" in m for m in messages)
    assert not any(record.exc_info for record in caplog.records)


class _FlakyReads(MemoryStore):
    """A store whose first read fails."""

    failures = 1

    async def read(self, pattern: str, **options: Any) -> list[Event]:
        if self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise StoreError("the disk went away for a moment")
        return await super().read(pattern, **options)


async def test_a_failed_catch_up_read_is_tried_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A read of the store that fails while catching up is logged and tried again a little
    later; the events are delivered all the same."""
    receiver = Receiver()
    async with open_bus(store=_FlakyReads()) as bus:
        broker = Broker(bus=bus, stats_interval=None)
        broker.webhook("hook", URL, "orders.>", secret=SECRET, transport=receiver.transport)
        with trio.fail_after(GUARD):
            async with running_broker(broker):
                event = await bus.publish("orders.created", 1)
                await receiver.wait_for(1)
    assert receiver.ids == [event.id]
    assert any("reading the store failed" in r.getMessage() for r in caplog.records)
