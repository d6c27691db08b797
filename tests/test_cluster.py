"""The cluster backplane: brokers in this process sharing one event space through a real
nats-server (tests/_nats_server.py). The same, with real ``trio-realtime serve`` processes:
tests/test_cluster_processes.py.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
import trio
import trio.testing
from _nats_server import NatsServer, running_nats_server
from conftest import RunningBroker, running_broker

from trio_realtime import Event, EventChannel, NoResponders, Subscription, open_bus, open_client
from trio_realtime._nats import open_nats
from trio_realtime._topics import topic_matches
from trio_realtime.cluster import Backplane, ClusterOptions, open_backplane
from trio_realtime.cluster._options import queue_name

pytest.importorskip("nats")
pytest.importorskip("trio_asyncio")

#: Hang guard for a test with several brokers and a NATS server.
CLUSTER_TIMEOUT: Final = 30


def backplane(running: RunningBroker) -> Backplane:
    """The backplane of a clustered broker."""
    found = running.broker.backplane
    assert found is not None
    return found


async def connected(*nodes: RunningBroker) -> None:
    """Wait until each node reaches NATS."""
    for node in nodes:
        link = backplane(node)
        while not link.connected:
            await link.wait_changed()


async def settle(*nodes: RunningBroker) -> None:
    """Wait until what the nodes published so far was handed to NATS, sent to its
    subscribers and delivered: each node's queue is flushed (a round trip to the server,
    which answers after what it had for the node), then every task here waits."""
    for _ in range(2):  # (the second round: what the first one's deliveries published)
        for node in nodes:
            await backplane(node).wait_synced()
        await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def open_cluster(
    tmp_path: Path, n: int = 3, *, jetstream: bool = True, **options: Any
) -> AsyncIterator[tuple[NatsServer, list[RunningBroker]]]:
    """A nats-server and *n* brokers clustered through it (nodes ``node0``…), connected."""
    async with (
        running_nats_server(tmp_path, jetstream=jetstream) as server,
        AsyncExitStack() as stack,
    ):
        nodes = []
        for i in range(n):
            cluster = ClusterOptions(
                servers=server.url, node=f"node{i}", reconnect_wait=0.05, **options
            )
            nodes.append(
                await stack.enter_async_context(running_broker(name=f"node{i}", cluster=cluster))
            )
        await connected(*nodes)
        yield server, nodes


async def collect(sub: Subscription, n: int, into: list[Event]) -> None:
    """Receive *n* events from *sub* into *into*."""
    for _ in range(n):
        into.append(await sub.receive())  # noqa: PERF401 - seen as they come


def per_publisher(events: list[Event]) -> dict[str, list[int]]:
    """The data's counters, by publisher (the data is ``[publisher, counter]``)."""
    found: dict[str, list[int]] = defaultdict(list)
    for event in events:
        publisher, i = event.data
        found[publisher].append(i)
    return found


async def test_fan_out_once_each_in_publisher_order(tmp_path: Path) -> None:
    """Thousands of events from publishers on two nodes (clients and a bus) reach every
    subscription on every node once each, in each publisher's order, whichever of a node's
    overlapping patterns match; nothing travels back to its own node twice."""
    counts = {"node0-client": 2000, "node1-client": 2000, "node2-bus": 1000}
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with open_cluster(tmp_path) as (_, nodes), AsyncExitStack() as stack:
            subs: list[tuple[str, Subscription, int]] = []
            for node in nodes:
                client = await stack.enter_async_context(open_client(node.url))
                for pattern, wanted in (("fan.>", 5000), ("fan.*", 5000), ("*.x", 3000)):
                    sub = await stack.enter_async_context(
                        client.subscribe(pattern, max_buffer_size=math.inf)
                    )
                    subs.append((f"{node.broker.name} {pattern}", sub, wanted))
            await settle(*nodes)
            received: dict[str, list[Event]] = {}
            async with trio.open_nursery() as nursery:
                for name, sub, wanted in subs:
                    received[name] = []
                    nursery.start_soon(collect, sub, wanted, received[name])
                async with (
                    open_client(nodes[0].url) as p0,
                    open_client(nodes[1].url) as p1,
                ):
                    for i in range(2000):
                        await p0.publish("fan.x", ["node0-client", i])
                        await p1.publish("fan.y", ["node1-client", i])
                        if i < 1000:
                            await nodes[2].broker.bus.publish("fan.x", ["node2-bus", i])
            await settle(*nodes)
            for name, sub, _ in subs:
                events = received[name]
                assert sub.buffered == 0, f"{name}: more events than sent"
                assert len({e.id for e in events}) == len(events), f"{name}: a duplicate"
                for publisher, got in per_publisher(events).items():
                    assert got == list(range(counts[publisher])), f"{name} from {publisher}"
            for node in nodes:
                stats = backplane(node).statistics()
                assert stats.skipped > 0  # (fan.> and fan.* both receive fan.x)
                assert stats.bad_messages == stats.dropped == stats.not_shared == 0


#: Patterns and topics whose matching must be the same across nodes as on one bus.
PATTERNS: Final = (
    ">",
    "a",
    "a.>",
    "a.*",
    "*.b",
    "*.*",
    "a.*.c",
    "*.b.>",
    "a.b.c.d",
    "x-y.z_1.>",
    "*.*.*.*",
    "_inbox.*.>",
)
TOPICS: Final = (
    "a",
    "b",
    "a.b",
    "a.c",
    "x.b",
    "a.b.c",
    "a.x.c",
    "a.b.c.d",
    "a.b.c.d.e",
    "x-y.z_1.w",
    "x-y.z_1",
    "_inbox.k.1",
    "q.b.r.s",
)


async def test_matching_is_the_same_as_on_one_bus(tmp_path: Path) -> None:
    """Each pattern subscribed on one node gets, from a publisher on another, exactly the
    topics a lone bus gives it, once each."""
    expected: dict[str, Counter[str]] = {}
    async with open_bus() as bus, AsyncExitStack() as stack:
        local = [
            (p, await stack.enter_async_context(bus.subscribe(p, max_buffer_size=math.inf)))
            for p in PATTERNS
        ]
        for topic in TOPICS:
            await bus.publish(topic)
        for pattern, sub in local:
            expected[pattern] = Counter(sub.receive_nowait().topic for _ in range(sub.buffered))
    assert expected[">"] == Counter(TOPICS)  # (the oracle is not trivial)
    assert all(expected[p] == Counter(t for t in TOPICS if topic_matches(p, t)) for p in PATTERNS)
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with open_cluster(tmp_path, 2) as (_, nodes), AsyncExitStack() as stack:
            remote = [
                (
                    p,
                    await stack.enter_async_context(
                        nodes[1].broker.bus.subscribe(p, max_buffer_size=math.inf)
                    ),
                )
                for p in PATTERNS
            ]
            await settle(*nodes)
            for topic in TOPICS:
                await nodes[0].broker.bus.publish(topic)
            await settle(*nodes)
            for pattern, sub in remote:
                got = Counter(sub.receive_nowait().topic for _ in range(sub.buffered))
                del got["$sys.cluster.up"]  # (the node's own, if it came after subscribing)
                assert got == expected[pattern], pattern
            stats = backplane(nodes[1]).statistics()
            assert stats.interest == len(PATTERNS)
            copies = sum(expected[p].total() for p in PATTERNS if not p.startswith("_"))
            copies += expected["_inbox.*.>"].total()
            assert stats.events_in + stats.skipped == copies
            assert stats.events_in == len(TOPICS)


async def test_queue_group_spread_over_three_nodes(tmp_path: Path) -> None:
    """Members of one queue group on two nodes (none on the third) share each event: one
    member in the whole cluster gets it, whichever node published it; a subscription outside
    the group gets every one."""
    per_node = 300
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with open_cluster(tmp_path) as (_, nodes), AsyncExitStack() as stack:
            members = [
                await stack.enter_async_context(
                    nodes[0].broker.bus.subscribe("q.>", group="work", max_buffer_size=math.inf)
                ),
                await stack.enter_async_context(
                    nodes[0].broker.bus.subscribe("q.>", group="work", max_buffer_size=math.inf)
                ),
            ]
            client = await stack.enter_async_context(open_client(nodes[1].url))
            members.append(
                await stack.enter_async_context(
                    client.subscribe("q.>", group="work", max_buffer_size=math.inf)
                )
            )
            everything = await stack.enter_async_context(
                nodes[2].broker.bus.subscribe("q.>", max_buffer_size=math.inf)
            )
            await settle(*nodes)
            for i in range(per_node):
                for node in nodes:
                    await node.broker.bus.publish("q.job", [node.broker.name, i])
            received: list[Event] = []
            while len(received) < 3 * per_node:
                async with trio.open_nursery() as nursery:  # whichever has some, in turn
                    for member in members:
                        nursery.start_soon(collect, member, 1, received)
                        await trio.testing.wait_all_tasks_blocked()
                        if received:
                            nursery.cancel_scope.cancel()
                            break
                for member in members:
                    received.extend(member.receive_nowait() for _ in range(member.buffered))
            await settle(*nodes)
            for member in members:
                received.extend(member.receive_nowait() for _ in range(member.buffered))
            assert len(received) == 3 * per_node
            assert len({e.id for e in received}) == 3 * per_node
            assert members[2].statistics().received > 0  # (the other node's member works too)
            assert everything.buffered == 3 * per_node
            assert backplane(nodes[1]).statistics().skipped >= per_node  # node0's served


async def test_request_reply_and_no_responders_across_nodes(tmp_path: Path) -> None:
    """A request on one node is answered by a responder on another, a queue group of
    responders answers once, and a request nobody in the cluster takes raises NoResponders
    at once, on a client as on the bus."""
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with open_cluster(tmp_path) as (_, nodes), AsyncExitStack() as stack:
            responder = await stack.enter_async_context(open_client(nodes[1].url))
            await stack.enter_async_context(
                responder.serve("svc.echo", lambda e: {"echo": e.data, "by": "node1"})
            )
            for node in nodes[1:]:

                def answer(_: Event, name: str = node.broker.name) -> str:
                    return name

                await stack.enter_async_context(
                    node.broker.bus.serve("svc.work", answer, group="workers")
                )
            await settle(*nodes)
            requester = await stack.enter_async_context(open_client(nodes[0].url))
            reply = await requester.request("svc.echo", 7, timeout=5)
            assert reply.data == {"echo": 7, "by": "node1"}
            reply = await nodes[2].broker.bus.request("svc.echo", 8, timeout=5)
            assert reply.data == {"echo": 8, "by": "node1"}
            answers: Counter[str] = Counter()
            for i in range(20):
                answers[(await requester.request("svc.work", i, timeout=5)).data] += 1
            assert answers.total() == 20
            assert set(answers) <= {"node1", "node2"}
            with pytest.raises(NoResponders):
                await requester.request("svc.nobody", timeout=5)
            with pytest.raises(NoResponders):
                await nodes[1].broker.bus.request("svc.nobody", timeout=5)
            assert backplane(nodes[0]).statistics().no_responders == 1
            assert backplane(nodes[1]).statistics().no_responders == 1


async def wait_retained(node: RunningBroker, topic: str, data: object) -> None:
    """Wait until *node* holds *data* as the retained value of *topic* (None: holds none)."""
    link = backplane(node)

    def value() -> object:
        found = node.broker.bus.retained(topic)
        return found[0].data if found else None

    while value() != data:
        await link.wait_changed()


async def test_retained_values_are_shared(tmp_path: Path) -> None:
    """A retained value published on one node is delivered to new subscribers on the others
    and loaded by a node that starts later; clearing it clears it everywhere; updates from
    two nodes end with the same value on every node."""
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with open_cluster(tmp_path, 2) as (server, nodes):
            for node in nodes:
                while not backplane(node).statistics().retained_loaded:
                    await backplane(node).wait_changed()
            await nodes[0].broker.bus.publish("state.a", "first", retain=True)
            await nodes[0].broker.bus.publish("state.b", "other", retain=True)
            await wait_retained(nodes[1], "state.a", "first")
            async with (
                open_client(nodes[1].url) as client,
                client.subscribe("state.>") as sub,
            ):
                assert {(await sub.receive()).data for _ in range(2)} == {"first", "other"}
            cluster = ClusterOptions(servers=server.url, node="late", reconnect_wait=0.05)
            async with running_broker(cluster=cluster) as late:
                await connected(late)
                await wait_retained(late, "state.a", "first")
                assert nodes[1].broker.bus.clear_retained("state.b") is True
                await wait_retained(late, "state.b", None)
                await wait_retained(nodes[0], "state.b", None)
                for i in range(50):  # two writers on one topic
                    await nodes[0].broker.bus.publish("state.a", f"0-{i}", retain=True)
                    await nodes[1].broker.bus.publish("state.a", f"1-{i}", retain=True)
                for node in nodes:  # (stored, as JetStream acknowledged)
                    while backplane(node).statistics().retained_pending:
                        await backplane(node).wait_changed()
                async with open_nats(server.url, wait=True) as reader:  # the stream decides
                    js = reader.client.jetstream()
                    last = await reader.run(js.get_last_msg, "TR_RETAINED_TR", "trr.state.a")
                assert last.data is not None
                final = orjson.loads(last.data)["data"]
                assert final in ("0-49", "1-49")
                for node in (*nodes, late):
                    await wait_retained(node, "state.a", final)
                assert backplane(late).statistics().retained_updates >= 2


async def test_without_jetstream_retained_values_stay_local(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without JetStream the nodes say so (log, statistics) and keep retained values to
    themselves; events are shared all the same."""
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with open_cluster(tmp_path, 2, jetstream=False) as (_, nodes):
            for node in nodes:
                while backplane(node).statistics().retained_shared is None:
                    await backplane(node).wait_changed()
                assert backplane(node).statistics().retained_shared is False
            assert "JetStream is unavailable" in caplog.text
            async with nodes[1].broker.bus.subscribe("s.>") as sub:
                await settle(*nodes)
                await nodes[0].broker.bus.publish("s.x", 1, retain=True)
                assert (await sub.receive()).data == 1
            assert nodes[1].broker.bus.retained() == []
            assert [e.data for e in nodes[0].broker.bus.retained()] == [1]


async def test_outage_local_delivery_goes_on_and_the_cluster_heals(tmp_path: Path) -> None:
    """NATS stopped and started again: each node keeps delivering locally, says the cluster is
    down ($sys.cluster.down, not ready), queues what it publishes up to max_pending and counts
    the rest as not shared; once NATS is back, the queue goes out, the interest comes back,
    events cross again, and the counts add up."""
    queued = 50
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with (
            open_cluster(tmp_path, 2, max_pending=queued) as (server, nodes),
            nodes[0].broker.bus.subscribe("$sys.cluster.*") as sys_events,
            nodes[0].broker.bus.subscribe("o.>", max_buffer_size=math.inf) as local,
            nodes[1].broker.bus.subscribe("o.>", max_buffer_size=math.inf) as remote,
        ):
            await settle(*nodes)
            await nodes[0].broker.bus.publish("o.before", 0)
            assert (await remote.receive()).topic == "o.before"
            assert nodes[0].broker.ready
            await server.stop()
            for node in nodes:
                link = backplane(node)
                while link.connected:
                    await link.wait_changed()
                assert not node.broker.ready
            down = await sys_events.receive()
            assert down.topic == "$sys.cluster.down"
            assert down.data["node"] == "node0"
            during = 80
            for i in range(during):
                await nodes[0].broker.bus.publish("o.during", i)
            assert [local.receive_nowait().data for _ in range(during + 1)] == [
                0,
                *range(during),
            ]
            stats = backplane(nodes[0]).statistics()
            assert stats.not_shared == during - queued
            assert stats.pending == queued
            with pytest.raises(NoResponders):  # no local responder, nobody to ask
                await nodes[0].broker.bus.request("svc.x", timeout=5)
            await server.start()
            await connected(*nodes)
            up = await sys_events.receive()
            assert (up.topic, up.data["node"]) == ("$sys.cluster.up", "node0")
            assert nodes[0].broker.ready
            await nodes[0].broker.bus.publish("o.after", "a")
            await settle(*nodes)
            while True:
                event = await remote.receive()
                if event.topic == "o.after":
                    break
                assert event.topic == "o.during"  # what was queued, if node1 was back first
            stats = backplane(nodes[0]).statistics()
            assert stats.events_out + stats.not_shared == 1 + during + 1
            assert stats.pending == 0
            assert stats.disconnects == stats.reconnects == 1
            assert stats.interest == 2  # o.> and the bus's reply inbox, subscribed again


async def test_sys_events_statistics_and_metrics_name_the_node(tmp_path: Path) -> None:
    """A clustered broker's $sys events carry its node name, its statistics the backplane's
    figures, and its metrics the cluster families, each listed in the operations guide."""
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families
    from test_http import get, samples

    with trio.fail_after(CLUSTER_TIMEOUT):
        async with (
            open_cluster(tmp_path, 1) as (_, [node]),
            node.broker.bus.subscribe("$sys.>") as sys_events,
            trio.open_nursery() as nursery,
        ):
            async with open_client(node.url, name="watcher"):
                pass
            connect = await sys_events.receive()
            assert connect.topic == "$sys.connect"
            assert connect.data["node"] == "node0"
            stats = node.broker.statistics()
            assert stats.cluster is not None
            assert stats.cluster.node == "node0"
            assert stats.cluster.connected
            http = await nursery.start(node.broker.serve_http, "127.0.0.1", 0)
            from test_interop import in_thread

            status, _, text = await in_thread(lambda: get(f"{http.url}/metrics"))
            assert status == 200
            found = samples(text)
            assert found["trio_realtime_cluster_connected", (("node", "node0"),)] == 1
            assert ("trio_realtime_cluster_events_out_total", (("node", "node0"),)) in found
            assert (await in_thread(lambda: get(f"{http.url}/readyz")))[0] == 200
            nursery.cancel_scope.cancel()
    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
        if family.name.startswith("trio_realtime_cluster_")
    }
    doc = (Path(__file__).parents[1] / "docs" / "operations.rst").read_text(encoding="utf-8")
    documented = re.findall(r"^   \* - ``(trio_realtime_cluster_\w+)``$", doc, flags=re.MULTILINE)
    assert set(documented) == exposed  # (the operations guide lists every one)


async def test_hostile_messages_are_counted_not_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages on the cluster's subjects that are not valid events (bad JSON, a topic other
    than the subject's, a reserved topic or reply topic) are dropped and counted; the node
    goes on delivering valid ones."""
    caplog.set_level(logging.WARNING)
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with (
            open_cluster(tmp_path, 1) as (server, [node]),
            node.broker.bus.subscribe(">", max_buffer_size=math.inf) as sub,
            open_nats(server.url, wait=True) as rogue,
        ):
            await settle(node)
            for subject, data in (
                ("tr.h.a", b"not json"),
                ("tr.h.a", b'{"topic": "h.b"}'),
                ("tr.h.a", b'{"topic": "h.a", "seq": "x"}'),
                ("tr.h.a", b'{"topic": "h.a", "reply_to": "$sys.x"}'),
                ("tr.h.a", b'{"topic": "h.a", "reply_to": "bad..topic"}'),
                ("tr.h.a", b"[1, 2]"),
                ("tr.h.a", b'{"topic": "h.a", "data": ' + b"[" * 2000 + b"]" * 2000 + b"}"),
                ("tr.h.ok", b'{"topic": "h.ok", "data": 1}'),
            ):
                rogue.publish_nowait(subject, data)
            await rogue.flush()
            event = await sub.receive()
            assert (event.topic, event.data) == ("h.ok", 1)
            assert backplane(node).statistics().bad_messages == 7
            assert "Traceback" not in caplog.text


async def test_group_names_nats_cannot_take(tmp_path: Path) -> None:
    """A queue group whose name NATS would refuse as a queue name works across nodes."""
    group = "a group, with spaces"
    assert queue_name(group) != group
    assert queue_name("plain_name-1") == "plain_name-1"
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with (
            open_cluster(tmp_path, 2) as (_, nodes),
            nodes[0].broker.bus.subscribe("g", group=group, max_buffer_size=math.inf) as m0,
            nodes[1].broker.bus.subscribe("g", group=group, max_buffer_size=math.inf) as m1,
        ):
            await settle(*nodes)
            for i in range(20):
                await nodes[i % 2].broker.bus.publish("g", i)
            await settle(*nodes)
            assert m0.buffered + m1.buffered == 20


async def test_a_bus_with_a_backplane_of_its_own(tmp_path: Path) -> None:
    """open_backplane shares a plain bus (no broker) too; its subscriptions made before it
    was attached count; after the block the bus is alone again."""
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with (
            running_nats_server(tmp_path, jetstream=False) as server,
            open_bus() as a,
            open_bus() as b,
            b.subscribe("p.>") as sub,
        ):

            def options(node: str) -> ClusterOptions:
                return ClusterOptions(
                    servers=server.url, node=node, reconnect_wait=0.05, retained=False
                )

            async with (
                open_backplane(a, options("a")) as link_a,
                open_backplane(b, options("b")) as link_b,
            ):
                for link in (link_a, link_b):
                    while not link.connected:
                        await link.wait_changed()
                await link_b.wait_synced()
                await a.publish("p.q", 1)
                assert (await sub.receive()).data == 1
                assert link_a.statistics().retained_shared is False
                with pytest.raises(RuntimeError, match="attached"):
                    async with open_backplane(a, options("c")):
                        pass  # pragma: no cover
            await a.publish("p.q", 2)
            assert sub.buffered == 0


def test_cluster_options_are_checked() -> None:
    """Bad servers, node names, prefixes and limits are refused with what is wrong."""
    assert ClusterOptions(servers="nats://a:1, nats://b:2").servers == ("nats://a:1", "nats://b:2")
    assert ClusterOptions(servers=["tls://u:p@h"]).shown_servers() == "tls://h"
    assert ClusterOptions(servers="nats://h:4222", prefix="prod.tr").retained_stream == (
        "TR_RETAINED_PROD_TR"
    )
    for kwargs, message in (
        ({"servers": []}, "at least one NATS server"),
        ({"servers": "http://h:1"}, "expected nats://HOST"),
        ({"servers": "nats://h:99999"}, "expected nats://HOST"),
        ({"servers": "nats://h", "node": "two words"}, "node name"),
        ({"servers": "nats://h", "node": ""}, "node name"),
        ({"servers": "nats://h", "prefix": "a.*"}, "a.*"),
        ({"servers": "nats://h", "prefix": "$tr"}, "must not start"),
        ({"servers": "nats://h", "max_pending": 0}, "max_pending"),
        ({"servers": "nats://h", "reconnect_wait": 0}, "reconnect_wait"),
    ):
        with pytest.raises(ValueError, match=message.replace("*", r"\*")):
            ClusterOptions(**kwargs)
    with pytest.raises(TypeError, match="URLs"):
        ClusterOptions(servers=[4222])  # type: ignore[list-item]


async def test_a_cancelled_request_cancels_its_handler_on_another_node(tmp_path: Path) -> None:
    """A request given up on one node cancels the handler working on it on another: a
    client's (through both brokers and NATS) and a bus's; the handlers see Cancelled."""
    with trio.fail_after(CLUSTER_TIMEOUT):
        async with (
            open_cluster(tmp_path, 2, jetstream=False) as (_, nodes),
            AsyncExitStack() as stack,
        ):
            started = {"client": trio.Event(), "bus": trio.Event()}
            cancelled = {"client": trio.Event(), "bus": trio.Event()}

            def handler(kind: str) -> Any:
                async def work(_: Event) -> None:
                    started[kind].set()
                    try:
                        await trio.sleep_forever()
                    finally:
                        cancelled[kind].set()  # (only a cancel ends the sleep)

                return work

            responder = await stack.enter_async_context(open_client(nodes[1].url))
            await stack.enter_async_context(responder.serve("svc.slow", handler("client")))
            await stack.enter_async_context(nodes[1].broker.bus.serve("svc.slower", handler("bus")))
            await settle(*nodes)
            requester = await stack.enter_async_context(open_client(nodes[0].url))
            channels: list[tuple[str, str, EventChannel]] = [
                ("client", "svc.slow", requester),
                ("bus", "svc.slower", nodes[0].broker.bus),
            ]
            for kind, topic, channel in channels:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(channel.request, topic, timeout=600))
                    await started[kind].wait()
                    nursery.cancel_scope.cancel()  # the requester gives up
                await cancelled[kind].wait()
            assert backplane(nodes[0]).statistics().cancels_out == 2
            assert backplane(nodes[1]).statistics().cancels_in == 2
