"""Three real ``trio-realtime serve --cluster`` processes and a real nats-server, end to end:
fan-out, a queue group over the three, request/reply and no responders, retained values
from another node, and NATS stopped and started again.

What the brokers do inside is not visible from here: waiting for the cluster to route a
pattern is sending probes until they arrive, and the counts come from the HTTP side port's
metrics. The same cases, exactly, with the brokers in this process: tests/test_cluster.py.
"""

from __future__ import annotations

import itertools
import math
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import trio
from _broker_process import POLL_INTERVAL, BrokerProcess, in_thread, open_broker_process
from _nats_server import NatsServer, running_nats_server
from prometheus_client.parser import text_string_to_metric_families

from trio_realtime import Client, Event, NoResponders, Subscription, open_client

pytest.importorskip("nats")
pytest.importorskip("trio_asyncio")

#: Hang guard of the whole test.
E2E_TIMEOUT: Final = 90
#: Events each of two publishers sends in the fan-out.
FAN_OUT: Final = 2000


@asynccontextmanager
async def open_nodes(nats_url: str, n: int = 3) -> AsyncIterator[list[BrokerProcess]]:
    """*n* ``serve --cluster`` processes (nodes ``p0``…), each with an HTTP side port."""
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                open_broker_process(
                    *("--store", "none", "--cluster", nats_url, "--node", f"p{i}"),
                    *("--http-port", "0"),
                    log_level="info",
                )
            )
            for i in range(n)
        ]
        yield nodes


async def http_url(node: BrokerProcess) -> str:
    """The node's HTTP side port, from its start-up line."""
    match = await node.wait_for_output(r"^http: (http://\S+)")
    return match[1]


async def metrics(http: str) -> dict[str, float]:
    """The cluster metrics of the node whose HTTP side port is *http*, by name (the ``node``
    label dropped)."""

    def read() -> str:
        with urllib.request.urlopen(f"{http}/metrics", timeout=10) as response:
            text: str = response.read().decode()
            return text

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(await in_thread(read)):
        for sample in family.samples:
            if sample.name.startswith("trio_realtime_cluster_"):
                found[sample.name.removeprefix("trio_realtime_cluster_")] = sample.value
    return found


async def ready(http: str) -> int:
    """The status of ``/readyz`` of the node whose HTTP side port is *http*."""

    def read() -> int:
        try:
            with urllib.request.urlopen(f"{http}/readyz", timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    return await in_thread(read)


async def until_routed(
    publisher: Client,
    topic: str,
    subs: Sequence[Subscription],
    others: list[Event] | None = None,
) -> int:
    """Publish probes on *topic* until each of *subs* received one: the cluster routes the
    pattern from the publisher's node to theirs, and what the publisher sent before has
    arrived. Events other than probes met on the way go to *others* (or fail the test).
    Returns how many probes were sent (some may still be on their way)."""
    seen = [False] * len(subs)
    for sent in itertools.count(1):
        await publisher.publish(topic, "probe")
        with trio.move_on_after(POLL_INTERVAL * 5):
            async with trio.open_nursery() as nursery:
                for i, sub in enumerate(subs):
                    if not seen[i]:
                        nursery.start_soon(_see, sub, seen, i, others)
        if all(seen):
            return sent
    raise AssertionError("unreachable")  # pragma: no cover


async def _see(sub: Subscription, seen: list[bool], i: int, others: list[Event] | None) -> None:
    while (event := await sub.receive()).data != "probe":
        assert others is not None, f"unexpected {event!r}"
        others.append(event)
    seen[i] = True


async def data_events(sub: Subscription, n: int) -> list[Event]:
    """The next *n* events of *sub* that are not probes."""
    found: list[Event] = []
    while len(found) < n:
        event = await sub.receive()
        if event.data != "probe":
            found.append(event)
    return found


async def test_three_processes_end_to_end(tmp_path: Path) -> None:
    """Three brokers behind one NATS behave as one: fan-out of thousands of events once each
    in publisher order, a queue group over the nodes, requests and no responders across
    them, retained values from another node; NATS stopped for two seconds: local delivery
    goes on, the nodes say they are down, the cluster heals and the counts add up."""
    with trio.fail_after(E2E_TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nodes(server.url) as nodes,
            AsyncExitStack() as stack,
        ):
            https = [await http_url(node) for node in nodes]
            assert f"cluster: node 'p0' through NATS at {server.url}" in nodes[0].stdout()
            clients = [await stack.enter_async_context(open_client(n.url)) for n in nodes]
            await fan_out(clients)
            await queue_group(clients)
            await requests(clients)
            await retained(clients)
            await outage(server, nodes[0], https[0], clients)
            for node in nodes:
                node.assert_healthy()


async def fan_out(clients: list[Client]) -> None:
    """Every subscription of every node gets each event of two publishers once, in order."""
    async with AsyncExitStack() as stack:
        subs = [
            await stack.enter_async_context(c.subscribe(p, max_buffer_size=math.inf))
            for c in clients
            for p in ("fan.>", "fan.*")
        ]
        for publisher in clients[:2]:
            await until_routed(publisher, "fan.probe", subs)
        for i in range(FAN_OUT):
            await clients[0].publish("fan.a", ["p0", i])
            await clients[1].publish("fan.b", ["p1", i])
        for publisher, topic in ((clients[0], "fan.a"), (clients[1], "fan.b")):
            await publisher.publish(topic, ["end", 0])
        for sub in subs:
            events = await data_events(sub, 2 * FAN_OUT + 2)
            by_publisher: dict[str, list[int]] = {"p0": [], "p1": [], "end": []}
            for event in events:
                by_publisher[event.data[0]].append(event.data[1])
            assert by_publisher == {
                "p0": list(range(FAN_OUT)),
                "p1": list(range(FAN_OUT)),
                "end": [0, 0],
            }


async def queue_group(clients: list[Client]) -> None:
    """Members on two nodes, none on the publisher's: each event reaches one member; those
    published on a member's node stay there."""
    async with AsyncExitStack() as stack:
        members = [
            await stack.enter_async_context(
                c.subscribe("jobs.>", group="workers", max_buffer_size=math.inf)
            )
            for c in (clients[1], clients[2], clients[2])
        ]
        await until_routed(clients[0], "jobs.probe", members[:2])
        n = 300
        for i in range(n):
            await clients[0].publish("jobs.run", i)
            await clients[1].publish("jobs.local", i)
        received: list[Event] = []
        while len(received) < 2 * n:
            with trio.move_on_after(POLL_INTERVAL * 5):
                async with trio.open_nursery() as nursery:
                    for member in members:
                        nursery.start_soon(_collect_into, member, received)
        await until_routed(clients[0], "jobs.probe", members[:2], received)  # the last ones
        for member in members:
            while member.buffered:
                event = member.receive_nowait()
                if event.data != "probe":
                    received.append(event)
        runs = sorted(e.data for e in received if e.topic == "jobs.run")
        assert runs == list(range(n))
        locals_ = [e for e in received if e.topic == "jobs.local"]
        assert sorted(e.data for e in locals_) == list(range(n))
        assert members[0].statistics().received >= n  # node1's member took node1's own


async def _collect_into(sub: Subscription, into: list[Event]) -> None:
    while True:
        event = await sub.receive()
        if event.data != "probe":
            into.append(event)


async def requests(clients: list[Client]) -> None:
    """A responder on the third node answers a requester on the first; a request nobody in
    the cluster takes raises NoResponders."""
    async with clients[2].serve("svc.echo", lambda e: ["echo", e.data]):
        while True:  # until the responder's subscription is in place at NATS
            try:
                reply = await clients[0].request("svc.echo", 1, timeout=5)
            except NoResponders:
                await trio.sleep(POLL_INTERVAL)
                continue
            break
        assert reply.data == ["echo", 1]
        for i in range(20):
            assert (await clients[0].request("svc.echo", i, timeout=5)).data == ["echo", i]
    with pytest.raises(NoResponders):
        await clients[1].request("svc.nobody", timeout=5)


async def retained(clients: list[Client]) -> None:
    """A retained value published on the first node is given to a new subscriber on the
    third, once that node has it from the stream."""
    await clients[0].publish("cfg.mode", "fast", retain=True, ack=True)
    while True:
        async with clients[2].subscribe("cfg.mode") as sub:
            with trio.move_on_after(POLL_INTERVAL * 5):
                event = await sub.receive()
                assert event.data == "fast"
                return


async def outage(server: NatsServer, node: BrokerProcess, http: str, clients: list[Client]) -> None:
    """NATS away for two seconds: see the test's docstring (*node*, *http*: the first)."""
    async with AsyncExitStack() as stack:
        downs = [await stack.enter_async_context(c.subscribe("$sys.cluster.*")) for c in clients]
        local = await stack.enter_async_context(
            clients[0].subscribe("out.>", max_buffer_size=math.inf)
        )
        remote = await stack.enter_async_context(
            clients[1].subscribe("out.>", max_buffer_size=math.inf)
        )
        await until_routed(clients[0], "out.probe", [remote])
        before = await metrics(http)
        assert before["connected"] == 1
        assert await ready(http) == 200
        await server.stop()
        for down in downs:
            event = await down.receive()
            assert event.topic == "$sys.cluster.down"
        assert await ready(http) == 503
        assert (await metrics(http))["connected"] == 0
        during = 100
        start = trio.current_time()
        for i in range(during):  # paced: NATS stays away two seconds
            await clients[0].publish("out.during", i)
            await trio.sleep_until(start + 2.0 * (i + 1) / during)
        got = await data_events(local, during)
        assert [e.data for e in got] == list(range(during))  # local delivery went on
        await server.start()
        for down in downs:
            event = await down.receive()
            assert event.topic == "$sys.cluster.up"
            assert event.data["node"] in ("p0", "p1", "p2")
        assert await ready(http) == 200
        queued: list[Event] = []  # (what node1 gets of what was queued, if it was back first)
        probes = await until_routed(clients[0], "out.probe", [remote], queued)
        assert [e.data for e in queued] == list(range(during - len(queued), during))
        after = await metrics(http)
        shared = after["events_out_total"] - before["events_out_total"]
        not_shared = after["not_shared_total"] - before["not_shared_total"]
        assert shared + not_shared == during + probes
        assert after["pending"] == 0
        assert after["disconnects_total"] == before["disconnects_total"] + 1
        assert re.search(r"cluster backplane down", node.stderr())
