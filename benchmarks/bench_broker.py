"""Broker benchmarks over loopback WebSocket, each against a baseline measured in the same run.

Run: ``python benchmarks/bench_broker.py`` (``--quick`` for a shorter run).

1. Throughput: one client publishes N events to one remote subscriber through the broker;
   baseline: raw trio-websocket, one JSON event per message, relayed by a bare server from one
   connection to another (the same path without the broker and without batching).
2. Request/reply round trip p50/p99: a client's ``request`` answered by a responder inside the
   broker, and by a second client; baseline: raw trio-websocket ping-pong of one JSON message.
3. Fan-out: one publisher to 100 remote subscribers (each its own client), deliveries/s;
   baseline: the in-process bus at the same fan-out.
4. Persisted publishes acknowledged by the broker (``ack=True``, SQLite store with group
   commit, 50 concurrent publishers), against the same run unpersisted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import orjson
import trio
import trio_websocket

from trio_realtime import Event, open_bus, open_client
from trio_realtime._broker import Broker
from trio_realtime.store import SQLiteStore

T = TypeVar("T")

EVENT = Event(topic="bench.events", data={"n": 0, "payload": "x" * 32})


def _event_json(n: int) -> str:
    """A realistic event message, as the raw baselines send it."""
    return orjson.dumps(
        {"type": "event", "subs": [1], "event": {**EVENT.to_dict(), "data": {"n": n}}}
    ).decode()


# -- 1. throughput ----------------------------------------------------------------------------


async def raw_relay(n: int) -> float:
    """Events/s relayed one message each through a bare trio-websocket server."""
    subscriber_ready = trio.Event()
    connections: list[trio_websocket.WebSocketConnection] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        connections.append(ws)
        if len(connections) == 1:  # the subscriber: wait until the relay is done
            subscriber_ready.set()
            await trio.sleep_forever()
        sink = connections[0]
        for _ in range(n):
            await sink.send_message(await ws.get_message())
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        )
        url = f"ws://127.0.0.1:{server.port}"
        async with trio_websocket.open_websocket_url(url) as sub:
            await subscriber_ready.wait()
            async with trio_websocket.open_websocket_url(url) as pub:
                messages = [_event_json(i) for i in range(n)]
                start = time.perf_counter()

                async def send_all() -> None:
                    for message in messages:
                        await pub.send_message(message)

                nursery.start_soon(send_all)
                for _ in range(n):
                    orjson.loads(await sub.get_message())
                elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return n / elapsed


async def with_broker(fn: Callable[[Broker, str], Awaitable[T]], **options: object) -> T:
    """Run *fn(broker, url)* against a fresh broker on loopback."""
    broker = Broker(stats_interval=None, **options)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(broker.serve, "127.0.0.1", 0)
        result = await fn(broker, server.url)
        nursery.cancel_scope.cancel()
    return result


async def broker_throughput(n: int, broker: Broker, url: str) -> float:
    """Events/s from one client to another through the broker."""
    async with (
        open_client(url, name="sub") as sub_client,
        open_client(url, name="pub") as pub_client,
        sub_client.subscribe("bench.events", max_buffer_size=n) as sub,
    ):
        start = time.perf_counter()

        async def publish_all() -> None:
            for i in range(n):
                await pub_client.publish("bench.events", {"n": i, "payload": "x" * 32})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_all)
            count = 0
            async for _ in sub:
                count += 1
                if count == n:
                    break
        return n / (time.perf_counter() - start)


# -- 2. request/reply latency -----------------------------------------------------------------


async def raw_ping_pong(n: int) -> list[float]:
    """Round-trip times of one JSON message echoed by a bare trio-websocket server."""

    async def echo(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            message = await ws.get_message()
            await ws.send_message(message)

    times = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(trio_websocket.serve_websocket, echo, "127.0.0.1", 0, None)
        )
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{server.port}") as ws:
            message = _event_json(0)
            for _ in range(n):
                start = time.perf_counter()
                await ws.send_message(message)
                orjson.loads(await ws.get_message())
                times.append(time.perf_counter() - start)
        nursery.cancel_scope.cancel()
    return times


async def broker_round_trips(
    n: int, *, remote_responder: bool, broker: Broker, url: str
) -> list[float]:
    """Round-trip times of ``request`` through the broker."""
    times = []

    def double(event: Event) -> object:
        return {"n": event.data["n"] * 2}

    async with open_client(url, name="requester") as client:
        if remote_responder:
            async with (
                open_client(url, name="responder") as responder,
                responder.serve("bench.rpc", double),
            ):
                for i in range(n):
                    start = time.perf_counter()
                    await client.request("bench.rpc", {"n": i})
                    times.append(time.perf_counter() - start)
        else:
            async with broker.bus.serve("bench.rpc", double):
                for i in range(n):
                    start = time.perf_counter()
                    await client.request("bench.rpc", {"n": i})
                    times.append(time.perf_counter() - start)
    return times


def percentile(times: list[float], q: float) -> float:
    """The *q*-th percentile of *times*, in microseconds."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1e6


# -- 3. fan-out -------------------------------------------------------------------------------


async def broker_fanout(n_subs: int, n: int, broker: Broker, url: str) -> float:
    """Deliveries/s from one publisher to *n_subs* remote subscribers."""
    ready = trio.Event()
    subscribed = 0
    async with trio.open_nursery() as nursery:

        async def subscriber() -> None:
            nonlocal subscribed
            async with (
                open_client(url, name="fan") as client,
                client.subscribe("bench.fan", max_buffer_size=n) as sub,
            ):
                subscribed += 1
                if subscribed == n_subs:
                    ready.set()
                count = 0
                async for _ in sub:
                    count += 1
                    if count == n:
                        return

        for _ in range(n_subs):
            nursery.start_soon(subscriber)
        await ready.wait()
        start = time.perf_counter()
        async with open_client(url, name="publisher") as publisher:
            for i in range(n):
                await publisher.publish("bench.fan", i)
    return n_subs * n / (time.perf_counter() - start)


async def bus_fanout(n_subs: int, n: int) -> float:
    """Deliveries/s through the in-process bus at the same fan-out (the baseline)."""
    async with open_bus() as bus:
        ready = trio.Event()
        subscribed = 0
        async with trio.open_nursery() as nursery:

            async def subscriber() -> None:
                nonlocal subscribed
                async with bus.subscribe("bench.fan", max_buffer_size=n) as sub:
                    subscribed += 1
                    if subscribed == n_subs:
                        ready.set()
                    count = 0
                    async for _ in sub:
                        count += 1
                        if count == n:
                            return

            for _ in range(n_subs):
                nursery.start_soon(subscriber)
            await ready.wait()
            start = time.perf_counter()
            for i in range(n):
                await bus.publish("bench.fan", i)
        return n_subs * n / (time.perf_counter() - start)


# -- 4. persisted, acknowledged publishes ----------------------------------------------------


async def acked_publishes(n: int, publishers: int, broker: Broker, url: str) -> float:
    """Acknowledged publishes/s from *publishers* concurrent tasks on one client."""
    async with open_client(url, name="acker") as client:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for p in range(publishers):

                async def publish_share(p: int = p) -> None:
                    for i in range(n // publishers):
                        await client.publish("bench.acked", {"p": p, "i": i}, ack=True)

                nursery.start_soon(publish_share)
        return n / (time.perf_counter() - start)


async def persisted(n: int, publishers: int, *, store: bool) -> float:
    """Acknowledged publishes/s with (or without) a SQLite store behind the broker."""
    with tempfile.TemporaryDirectory() as tmp:
        options: dict[str, object] = {}
        if store:
            options["store"] = SQLiteStore(Path(tmp) / "bench.db")
        return await with_broker(partial(acked_publishes, n, publishers), **options)


def best(runs: int, fn: Callable[[], Awaitable[float]]) -> float:
    """The best of *runs* measurements (noise on a shared machine only ever slows things)."""
    return max(trio.run(fn) for _ in range(runs))


def main() -> None:
    """Run every benchmark and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one run each")
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    n = 20_000 if args.quick else 100_000

    raw = best(runs, lambda: raw_relay(n))
    ours = best(runs, lambda: with_broker(partial(broker_throughput, n)))
    print(f"throughput, 1 publisher -> broker -> 1 subscriber, {n:,} events (best of {runs})")
    print(f"  raw trio-websocket relay, 1 event/message  {raw:>12,.0f} events/s")
    print(f"  trio_realtime broker + clients             {ours:>12,.0f} events/s")
    print(f"  ratio                                      {ours / raw:>12.2f}")

    rounds = 500 if args.quick else 3000
    raw_times = trio.run(raw_ping_pong, rounds)
    local = trio.run(
        with_broker,
        lambda b, u: broker_round_trips(rounds, remote_responder=False, broker=b, url=u),
    )
    remote = trio.run(
        with_broker, lambda b, u: broker_round_trips(rounds, remote_responder=True, broker=b, url=u)
    )
    print(f"request/reply round trip, {rounds:,} requests, microseconds")
    print(f"  {'':40} {'p50':>8} {'p99':>8} {'p50/raw':>8}")
    base = percentile(raw_times, 50)
    for label, times in (
        ("raw trio-websocket ping-pong", raw_times),
        ("request, responder in the broker", local),
        ("request, responder in another client", remote),
    ):
        p50 = percentile(times, 50)
        print(f"  {label:40} {p50:>8.0f} {percentile(times, 99):>8.0f} {p50 / base:>8.2f}")

    n_subs = 100
    per = 200 if args.quick else 1000
    baseline = best(runs, lambda: bus_fanout(n_subs, per))
    fan = best(runs, lambda: with_broker(partial(broker_fanout, n_subs, per)))
    print(f"fan-out, 1 publisher -> {n_subs} remote subscribers, {per:,} events each")
    print(f"  in-process bus (baseline)                  {baseline:>12,.0f} deliveries/s")
    print(f"  through the broker, 100 clients            {fan:>12,.0f} deliveries/s")
    print(f"  ratio                                      {fan / baseline:>12.2f}")

    acked = 10_000 if args.quick else 50_000
    plain = best(runs, lambda: persisted(acked, 50, store=False))
    stored = best(runs, lambda: persisted(acked, 50, store=True))
    print(f"acknowledged publishes, 50 concurrent publishers, {acked:,} events")
    print(f"  unpersisted                                {plain:>12,.0f} events/s")
    print(f"  persisted in SQLite (group commit)         {stored:>12,.0f} events/s")
    print(f"  ratio                                      {stored / plain:>12.2f}")


if __name__ == "__main__":
    main()
