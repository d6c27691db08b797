"""Idle connections: what each one costs the broker, and whether a new client still gets in fast.

Run: ``python benchmarks/bench_idle.py`` (10,000 idle connections; ``--quick`` for 1,000, as CI
does; ``--connections N`` for another count).

Layout, as deployed: the broker runs **in its own process** (``python -m trio_realtime serve
--port 0 --store none``, started by this script, which reads the ``listening on ws://…``
line). The idle connections come from ``--processes`` other processes (this script with
``--child idle``), each a minimal client: raw trio-websocket, ``hello`` sent and ``welcome``
read, then nothing but answering the broker's heartbeat pings. The timed client runs in this
process.

1. Memory: the broker process's USS (private pages, from ``/proc/PID/smaps_rollup``; PSS and
   VmRSS beside it) with no connection, then with the N idle connections held; the
   difference divided by N is the cost of one idle connection (target <= 20 KB).
2. Connect and round trip: a new ``open_client`` connects (TCP, WebSocket and ``hello`` /
   ``welcome`` handshakes) and makes one round trip (``publish(…, ack=True)``: the broker
   routes the event and answers ``ack``), timed from before the connect to the ack; p50 and
   max of several, with no other connection (the baseline) and while the N idle
   connections are held (target < 10 ms).

Each figure is measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import orjson
import trio
import trio_websocket

from trio_realtime import open_client

#: Where the broker says it listens.
LISTENING = re.compile(rb"listening on (ws://\S+)")
#: What an idle-clients process says once all its connections are open.
READY = re.compile(rb"ready (\d+)")
#: Connections one idle-clients process opens at once.
CONNECT_CONCURRENCY = 64
#: Timed connect + round trips at each point (the first is a warm-up, not counted).
ROUND_TRIPS = 20
#: Seconds the broker's memory is given to settle before it is read.
SETTLE = 1.0
#: The targets of the performance issue.
TARGET_BYTES = 20 * 1024
TARGET_SECONDS = 0.010

HELLO = orjson.dumps({"type": "hello", "protocol": 1, "client": "idle"}).decode()
PONG = orjson.dumps({"type": "pong"}).decode()


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit on file descriptors to the hard limit (children inherit
    it: the broker derives its default ``max_connections`` from it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1_048_576)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- memory of a process ----------------------------------------------------------------------


def memory(pid: int) -> dict[str, int]:
    """USS, PSS and RSS of process *pid*, in bytes."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[name] = int(parts[0]) * 1024
    return {
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
        "pss": fields["Pss"],
        "rss": fields["Rss"],
    }


async def settled_memory(pid: int) -> dict[str, int]:
    """The memory of *pid* once it stopped changing (its work done: handshakes, garbage)."""
    previous = memory(pid)
    for _ in range(10):
        await trio.sleep(SETTLE)
        now = memory(pid)
        if abs(now["uss"] - previous["uss"]) < 64 * 1024:
            return now
        previous = now
    return previous


# -- child processes --------------------------------------------------------------------------


@asynccontextmanager
async def child(argv: Sequence[str], pattern: re.Pattern[bytes]) -> AsyncIterator[tuple[str, int]]:
    """Run a process for the duration of the block, once it printed *pattern*; yield the first
    group of the match and the process's pid."""
    process = await trio.lowlevel.open_process(
        [sys.executable, *argv], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    try:
        seen = b""
        with trio.fail_after(120):
            while (match := pattern.search(seen)) is None:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"{argv} exited early: {seen.decode()!r}")
                seen += chunk
        async with trio.open_nursery() as nursery:
            # Keep reading its output, so that it never blocks on a full pipe.
            nursery.start_soon(_drain, process.stdout)
            yield match.group(1).decode(), process.pid
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass


def broker_process() -> AbstractAsyncContextManager[tuple[str, int]]:
    """The broker in its own process: the ``trio-realtime serve`` command, as deployed."""
    return child(["-m", "trio_realtime", "serve", "--port", "0", "--store", "none"], LISTENING)


async def idle_clients(url: str, n: int) -> None:
    """The idle-clients process (``--child idle``): open *n* connections, say ``ready N``, and
    hold them (answering pings) until SIGTERM."""
    limit = trio.Semaphore(CONNECT_CONCURRENCY)
    opened = 0
    all_open = trio.Event()

    async def hold() -> None:
        nonlocal opened
        async with limit:
            connection = await trio_websocket.connect_websocket_url(
                nursery, url, subprotocols=["trio-realtime.v1"]
            )
            await connection.send_message(HELLO)
            welcome = orjson.loads(await connection.get_message())
            assert welcome["type"] == "welcome", welcome
        opened += 1
        if opened == n:
            all_open.set()
        try:
            while True:  # the broker's heartbeat: answer its pings
                frames = orjson.loads(await connection.get_message())
                for frame in frames if isinstance(frames, list) else [frames]:
                    if frame.get("type") == "ping":
                        await connection.send_message(PONG)
        except trio_websocket.ConnectionClosed:
            pass

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(hold)
            await all_open.wait()
            print(f"ready {n}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


# -- the timed client -------------------------------------------------------------------------


async def connect_round_trips(url: str, count: int) -> list[float]:
    """Seconds from before ``open_client`` to the ``ack`` of its first ``publish(ack=True)``,
    *count* times (after one warm-up)."""
    times = []
    for i in range(count + 1):
        start = time.perf_counter()
        async with open_client(url, name="timed", reconnect=False) as client:
            await client.publish("bench.idle", {"n": i}, ack=True)
            elapsed = time.perf_counter() - start
        if i:
            times.append(elapsed)
    return times


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


async def run(n: int, processes: int) -> None:
    limit = raise_descriptor_limit()
    if limit < n + 256:
        sys.exit(f"the descriptor limit ({limit}) is too low for {n:,} connections")
    print(
        f"bench_idle: Python {platform.python_version()}, trio {trio.__version__}, "
        f"trio-websocket {trio_websocket.__version__}, {os.cpu_count()} CPUs, "
        f"descriptor limit {limit:,}"
    )
    print(
        f"layout: broker (serve --store none) in its own process; {n:,} idle connections from "
        f"{processes} other processes (raw trio-websocket: hello, welcome, pongs); the timed "
        "client in this one\n"
    )
    async with broker_process() as (url, pid):
        before_times = await connect_round_trips(url, ROUND_TRIPS)
        before = await settled_memory(pid)
        start = time.perf_counter()
        shares = [n // processes + (i < n % processes) for i in range(processes)]
        async with trio.open_nursery() as nursery:
            ready = 0
            done = trio.Event()

            async def clients(share: int) -> None:
                nonlocal ready
                argv = [__file__, "--child", "idle", "--url", url, "--connections", str(share)]
                async with child(argv, READY):
                    ready += 1
                    if ready == len(shares):
                        done.set()
                    await trio.sleep_forever()

            for share in shares:
                nursery.start_soon(clients, share)
            await done.wait()
            connect_seconds = time.perf_counter() - start
            after = await settled_memory(pid)
            after_times = await connect_round_trips(url, ROUND_TRIPS)
            nursery.cancel_scope.cancel()

    print(f"{n:,} idle connections opened in {connect_seconds:.1f} s\n")
    print("broker memory, KB (1 KB = 1,024 bytes)")
    print(f"  {'':40} {'USS':>10} {'PSS':>10} {'RSS':>10}")
    for label, figures in (("no connection (baseline)", before), (f"{n:,} idle", after)):
        print(f"  {label:40} " + " ".join(f"{figures[k] / 1024:>10,.0f}" for k in figures))
    per = {k: (after[k] - before[k]) / n for k in before}
    print(f"  {'per idle connection':40} " + " ".join(f"{per[k] / 1024:>10.1f}" for k in per))
    print(f"  per connection (USS) / target 20 KB (target <= 1): {per['uss'] / TARGET_BYTES:.2f}")
    print()
    print(f"new client: open_client + publish(ack=True), {ROUND_TRIPS} times, milliseconds")
    print(f"  {'':40} {'p50':>8} {'max':>8}")
    for label, times in (
        ("no other connection (baseline)", before_times),
        (f"{n:,} idle held", after_times),
    ):
        print(f"  {label:40} {percentile(times, 50) * 1e3:>8.2f} {max(times) * 1e3:>8.2f}")
    p50 = percentile(after_times, 50)
    print(f"  ratio p50 to baseline: {p50 / percentile(before_times, 50):.2f}")
    print(f"  p50 with {n:,} idle / target 10 ms (target < 1): {p50 / TARGET_SECONDS:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 connections")
    parser.add_argument("--connections", type=int, help="idle connections (default 10,000)")
    parser.add_argument("--processes", type=int, default=2, help="idle-client processes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "idle":
        raise_descriptor_limit()
        trio.run(idle_clients, args.url, args.connections)
        return
    n = args.connections or (1_000 if args.quick else 10_000)
    trio.run(run, n, max(1, min(args.processes, n)))


if __name__ == "__main__":
    main()
