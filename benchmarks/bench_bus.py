"""In-process bus benchmarks, each against a baseline measured in the same run.

Run: ``python benchmarks/bench_bus.py`` (``--quick`` for a shorter run).

1. Fan-out: deliveries/s from one publisher to 1, 10 and 100 subscribers through the bus
   (``async for`` consumers, policy ``block``), against hand-tuned raw Trio: one memory channel
   per subscriber, ``send_nowait`` with a blocking ``send`` only when full, and consumers that
   drain with ``receive_nowait`` after each ``receive``.
2. Index: publish cost with 10,000 subscriptions of which 10 match, against 10 subscriptions,
   on one topic (the route cache hits) and on 5,000 rotating topics (it misses, so every
   publish walks the token trie).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import trio

from trio_realtime import open_bus

BUFFER = 1024


async def raw_fanout(n_subs: int, n_events: int) -> float:
    """Deliveries/s with raw memory channels (the baseline)."""
    pairs = [trio.open_memory_channel[object](BUFFER) for _ in range(n_subs)]
    senders = [s for s, _ in pairs]

    async def consume(receiver: trio.MemoryReceiveChannel[object]) -> None:
        count = 0
        while count < n_events:
            await receiver.receive()
            count += 1
            while count < n_events:
                try:
                    receiver.receive_nowait()
                except trio.WouldBlock:
                    break
                count += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _, receiver in pairs:
            nursery.start_soon(consume, receiver)
        for i in range(n_events):
            for sender in senders:
                try:
                    sender.send_nowait(i)
                except trio.WouldBlock:
                    await sender.send(i)
    return n_subs * n_events / (time.perf_counter() - start)


async def bus_fanout(n_subs: int, n_events: int) -> float:
    """Deliveries/s through the bus."""
    async with open_bus() as bus:
        ready = trio.Event()
        subscribed = 0

        async def consume() -> None:
            nonlocal subscribed
            async with bus.subscribe("bench.fanout", max_buffer_size=BUFFER) as sub:
                subscribed += 1
                if subscribed == n_subs:
                    ready.set()
                count = 0
                async for _ in sub:
                    count += 1
                    if count == n_events:
                        return

        async with trio.open_nursery() as nursery:
            for _ in range(n_subs):
                nursery.start_soon(consume)
            await ready.wait()
            start = time.perf_counter()
            for i in range(n_events):
                await bus.publish("bench.fanout", i)
        return n_subs * n_events / (time.perf_counter() - start)


async def publish_cost(n_subs: int, matching: int, n_events: int, n_topics: int) -> float:
    """Microseconds per publish with *n_subs* subscriptions of which *matching* match."""
    async with open_bus() as bus, trio.open_nursery() as nursery:
        ready = trio.Event()
        stop = trio.Event()
        count = 0

        async def hold(pattern: str) -> None:
            nonlocal count
            async with bus.subscribe(pattern, max_buffer_size=1, overflow="drop_oldest"):
                count += 1
                if count == n_subs:
                    ready.set()
                await stop.wait()

        shapes = ["bench.{}.x", "bench.{}.*", "other.*.{}", "bench.{}.>"]
        for i in range(n_subs - matching):
            nursery.start_soon(hold, shapes[i % len(shapes)].format(f"n{i}"))
        for pattern in ["bench.*.x", "bench.>", "*.*.x", "bench.*.*", ">"] * (matching // 5):
            nursery.start_soon(hold, pattern)
        await ready.wait()
        topics = [f"bench.t{i}.x" for i in range(n_topics)]
        start = time.perf_counter()
        for i in range(n_events):
            await bus.publish(topics[i % n_topics], None)
        elapsed = time.perf_counter() - start
        stop.set()
    return elapsed / n_events * 1e6


def best(runs: int, fn: Callable[[], Awaitable[float]], *, lower_is_better: bool = False) -> float:
    """The best of *runs* measurements (noise on a shared machine only ever slows things)."""
    results = [trio.run(fn) for _ in range(runs)]
    return min(results) if lower_is_better else max(results)


def main() -> None:
    """Run every benchmark and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one run each")
    args = parser.parse_args()
    deliveries = 200_000 if args.quick else 1_000_000
    runs = 1 if args.quick else 3

    print(f"fan-out: deliveries/s, 1 publisher -> N subscribers (best of {runs})")
    print(f"  {'subscribers':>11}  {'raw trio':>12}  {'bus':>12}  {'bus/raw':>7}")
    for n_subs in (1, 10, 100):
        n_events = deliveries // n_subs
        raw = best(runs, lambda: raw_fanout(n_subs, n_events))  # noqa: B023 - called at once
        bus = best(runs, lambda: bus_fanout(n_subs, n_events))  # noqa: B023
        print(f"  {n_subs:>11}  {raw:>12,.0f}  {bus:>12,.0f}  {bus / raw:>7.2f}")

    n_events = 20_000 if args.quick else 100_000
    print("publish cost: microseconds per publish, 10 matching subscriptions")
    print(f"  {'topics':>11}  {'10 subs':>12}  {'10,000 subs':>12}  {'ratio':>7}")
    for n_topics, label in ((1, "1 (cached)"), (5000, "5,000")):
        small = best(runs, lambda: publish_cost(10, 10, n_events, n_topics), lower_is_better=True)  # noqa: B023
        large = best(
            runs,
            lambda: publish_cost(10_000, 10, n_events, n_topics),  # noqa: B023
            lower_is_better=True,
        )
        print(f"  {label:>11}  {small:>12.2f}  {large:>12.2f}  {large / small:>7.2f}")


if __name__ == "__main__":
    main()
