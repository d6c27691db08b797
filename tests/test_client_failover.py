"""Client failover across the nodes of a cluster (issue 12, part 3).

``open_client`` takes several broker URLs and goes round them; a broker advertises the
cluster's other nodes (``welcome.nodes``, ``Broker(advertise_urls=…)``, ``serve --advertise``)
and the client adds them, checked and bounded. Real brokers on loopback; two in-process
brokers that share one bus share its store (one epoch), as the nodes of a cluster share one
event stream. A scripted server plays the hostile broker.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
import trio_websocket
from _broker_process import BrokerProcess, open_broker_process
from _scripted_server import Peer, scripted_server
from conftest import FAST, TIMEOUT, running_broker, start_broker

import trio_realtime.client._connector as connector_module
from trio_realtime import (
    Broker,
    ConnectionClosed,
    EpochChanged,
    HandshakeError,
    open_bus,
    open_client,
)
from trio_realtime._nodes import MAX_NODES, MAX_URL_LENGTH, Nodes, given_urls
from trio_realtime._transport_client import open_transport
from trio_realtime.cli._serve import serve_actions, serve_settings
from trio_realtime.client._client import Client, ClientState
from trio_realtime.protocol import AUTH_FAILED, CLOSE_POLICY, Error, Hello
from trio_realtime.security import load_config
from trio_realtime.store import MemoryStore


def dead_url() -> str:
    """The URL of a port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


async def refuse(peer: Peer) -> None:
    """A script: refuse every handshake (``auth_failed``, then 1008)."""
    await peer.receive()
    await peer.send(Error(code=AUTH_FAILED, message="not here"))
    await peer.close(CLOSE_POLICY, "auth failed")


def welcome_with(nodes: object) -> Callable[[Peer], Any]:
    """A script: answer ``hello`` with a ``welcome`` whose ``nodes`` is *nodes* (any JSON,
    written by hand), then idle."""

    async def script(peer: Peer) -> None:
        hello = await peer.receive()
        assert isinstance(hello, Hello)
        frame = {"type": "welcome", "session": "s", "broker": "hostile", "heartbeat": 30.0}
        await peer.transport.send(orjson.dumps({**frame, "nodes": nodes}).decode())
        await peer.idle()

    return script


# ---------------------------------------------------------------------------------------------
# The URLs given


@pytest.mark.parametrize(
    ("urls", "error", "match"),
    [
        ([], ValueError, "at least one broker URL"),
        (["ws://a", "wss://b"], ValueError, "mix ws:// and wss://"),
        (["ws://a", "http://b"], ValueError, "not a WebSocket URL"),
        (["ws://a", 8765], TypeError, "must be URL strings"),
    ],
)
async def test_open_client_refuses_bad_url_lists(
    urls: list[Any], error: type[Exception], match: str
) -> None:
    """An empty list, mixed schemes, a URL that is not ws:// and a non-string are refused
    before connecting."""
    with pytest.raises(error, match=match):
        async with open_client(urls):
            pytest.fail("must not connect")


def test_given_urls_keep_their_order_without_repeats() -> None:
    """A str is one URL; a list keeps its order, the first of two URLs for one node."""
    assert given_urls("ws://a:1") == ("ws://a:1",)
    assert given_urls(("ws://b:2", "ws://A:1/", "ws://a:1", "ws://c:3")) == (
        "ws://b:2",
        "ws://A:1/",
        "ws://c:3",
    )


async def test_the_first_connect_skips_a_dead_node() -> None:
    """The first connect tries the URLs in order: the first is dead, the second is used."""
    dead = dead_url()
    with trio.fail_after(TIMEOUT):
        async with running_broker() as served, open_client([dead, served.url]) as client:
            assert client.state is ClientState.CONNECTED
            assert client.url == served.url
            assert client.statistics().url == served.url
            assert client.urls == (dead, served.url)
            assert client.statistics().reconnects == 0


async def test_the_first_connect_skips_a_node_that_refuses() -> None:
    """A node that refuses the first handshake is passed over too."""
    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(refuse) as refusing,
            running_broker() as served,
            open_client([refusing.url, served.url], token="t") as client,
        ):
            assert client.url == served.url


async def test_the_first_connect_fails_when_no_node_accepts() -> None:
    """If no URL accepts, the error names each URL and why; its kind, code and reason are the
    last failure's."""
    dead = dead_url()
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ConnectionClosed) as info:
            async with open_client([dead, dead_url()]):
                pytest.fail("must not connect")
        assert not isinstance(info.value, HandshakeError)
        assert "none of the 2 brokers accepted a connection" in str(info.value)
        assert f"could not connect to {dead}" in str(info.value)
        async with scripted_server(refuse) as refusing:
            with pytest.raises(HandshakeError) as refused:
                async with open_client([dead, refusing.url]):
                    pytest.fail("must not connect")
        assert refused.value.code == CLOSE_POLICY
        assert dead in str(refused.value)
        assert "auth_failed" in str(refused.value)


# ---------------------------------------------------------------------------------------------
# Failing over


async def test_a_node_stopped_mid_stream_the_client_resumes_on_the_next() -> None:
    """A node goes away while events stream: the client moves to the next node, resubscribes
    and resumes its persisted subscription there without loss or duplicate."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus(store=MemoryStore()) as bus,
            trio.open_nursery() as nursery,
        ):
            # Two nodes of one cluster: they route through, and store in, one bus.
            first = await start_broker(nursery, Broker(bus=bus, stats_interval=None))
            second = await start_broker(nursery, Broker(bus=bus, stats_interval=None))
            async with (
                open_client([first.url, second.url], **FAST) as client,
                client.subscribe("feed.>", since=0) as sub,
            ):
                epoch = client.epoch
                for i in range(1, 51):
                    await bus.publish("feed.x", i)
                seqs = [(await sub.receive()).seq for _ in range(20)]
                await first.stop()  # 30 events are on their way, or queued for the client
                for i in range(51, 101):
                    await bus.publish("feed.x", i)  # while the client moves
                seqs += [(await sub.receive()).seq for _ in range(80)]
                assert seqs == list(range(1, 101))
                await bus.publish("feed.x", 101)
                assert (await sub.receive()).seq == 101  # nothing seen twice in between
                assert sub.missed == 0
                assert client.url == second.url
                assert client.epoch == epoch
                assert client.statistics().reconnects == 1
            nursery.cancel_scope.cancel()


async def test_a_node_with_another_store_is_an_epoch_change() -> None:
    """Failing over to a node with a store of its own is reported as a new epoch, once, and
    the subscription goes on with that store from its start."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            first = await start_broker(nursery, store=MemoryStore())
            second = await start_broker(nursery, store=MemoryStore())
            async with (
                open_client([first.url, second.url], **FAST) as client,
                client.subscribe("feed.>", since=0) as sub,
            ):
                await first.broker.bus.publish("feed.x", "first store")
                assert (await sub.receive()).seq == 1
                old_epoch = client.epoch
                await second.broker.bus.publish("feed.x", "second store")
                await first.stop()
                with pytest.raises(EpochChanged) as info:
                    await sub.receive()
                assert (info.value.old_epoch, info.value.new_epoch) == (old_epoch, client.epoch)
                assert client.url == second.url
                got = await sub.receive()
                assert (got.seq, got.data) == (1, "second store")
            nursery.cancel_scope.cancel()


async def test_rounds_go_on_from_the_next_node_and_back_off_between_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a loss the client tries the next node, then the others at once; it backs off
    only before the first attempt and after each whole round, longer each time."""
    steps: list[tuple[str, object]] = []
    enough = trio.Event()

    def dial(url: str, **options: Any) -> AbstractAsyncContextManager[Any]:
        steps.append(("dial", url))
        if len(steps) >= 12:
            enough.set()
        return open_transport(url, **options)

    def backoff(self: Client, attempt: int) -> float:
        steps.append(("wait", attempt))
        return 0.001

    monkeypatch.setattr(connector_module, "open_transport", dial)
    monkeypatch.setattr(Client, "_backoff", backoff)
    one, two = dead_url(), dead_url()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            served = await start_broker(nursery)
            async with open_client([served.url, one, two]) as client:
                await served.stop()
                await enough.wait()
                assert client.state is not ClientState.CLOSED
    node = served.url
    assert steps[:12] == [
        ("dial", node),
        ("wait", 0),  # the loss: a short wait, then the next node
        ("dial", one),
        ("dial", two),
        ("dial", node),
        ("wait", 1),  # a whole round failed
        ("dial", one),
        ("dial", two),
        ("dial", node),
        ("wait", 2),
        ("dial", one),
        ("dial", two),
    ]


async def test_a_node_that_refuses_a_reconnect_is_passed_over() -> None:
    """A node refusing the handshake for good on a reconnect is skipped for the next one."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            first = await start_broker(nursery)
            last = await start_broker(nursery)
            async with (
                scripted_server(refuse) as refusing,
                open_client([first.url, refusing.url, last.url], token="t", **FAST) as client,
                client.subscribe("x.>") as sub,
            ):
                await first.stop()
                await refusing.wait_connections(1)
                await client.wait_connected()
                assert client.url == last.url
                # (through the client: the broker has its subscription before this)
                await client.publish("x.y", "on the last node", ack=True)
                assert (await sub.receive()).data == "on the last node"
            nursery.cancel_scope.cancel()


async def test_the_client_gives_up_when_every_node_of_a_round_refuses() -> None:
    """Once every node refused the handshake for good in one round, the client closes."""

    async def once(peer: Peer) -> None:
        if peer.index == 1:
            await peer.welcome()
            await peer.close(1001, "going away")
        else:
            await refuse(peer)

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(once) as first,
            scripted_server(refuse) as second,
            open_client([first.url, second.url], token="t", **FAST) as client,
        ):
            state = client.state
            while state is not ClientState.CLOSED:
                state = await client.wait_state_change(state)
            assert (first.connections, second.connections) == (2, 1)
            with pytest.raises(HandshakeError) as info:
                await client.publish("x.y", 1)
            assert info.value.code == CLOSE_POLICY


async def test_a_policy_close_is_not_evaded_on_another_node() -> None:
    """A broker that closes the connection with 1008 ends the client, other nodes or not."""

    async def close_by_policy(peer: Peer) -> None:
        await peer.welcome()
        await peer.close(CLOSE_POLICY, "banned")

    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as other,
            scripted_server(close_by_policy) as server,
            open_client([server.url, other.url], **FAST) as client,
        ):
            state = client.state
            while state is not ClientState.CLOSED:
                state = await client.wait_state_change(state)
            assert other.broker.statistics().connections_total == 0


# ---------------------------------------------------------------------------------------------
# Advertised nodes


async def test_advertised_nodes_are_learned_and_used_when_the_given_one_dies() -> None:
    """welcome.nodes adds the cluster's other nodes after the URL given; when that node
    goes, the client moves to one of them and resumes there."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus(store=MemoryStore()) as bus,
            trio.open_nursery() as nursery,
        ):
            dead = dead_url()  # a node that is down: passed over
            second = await start_broker(nursery, Broker(bus=bus, stats_interval=None))
            first = await start_broker(
                nursery, Broker(bus=bus, stats_interval=None, advertise_urls=[dead, second.url])
            )
            async with (
                open_client(first.url, **FAST) as client,
                client.subscribe("feed.>", since=0) as sub,
            ):
                assert client.urls == (first.url, dead, second.url)
                await bus.publish("feed.x", 1)
                assert (await sub.receive()).seq == 1
                await first.stop()
                await bus.publish("feed.x", 2)
                assert (await sub.receive()).seq == 2
                assert client.url == second.url
                # the second node advertises none: what the client learned stays
                assert client.urls == (first.url, dead, second.url)
            nursery.cancel_scope.cancel()


async def test_discover_false_keeps_to_the_urls_given(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """With discover=False the client ignores welcome.nodes, and never dials them."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            other = await start_broker(nursery)
            first = await start_broker(nursery, advertise_urls=[other.url])
            async with open_client(first.url, discover=False, **FAST) as client:
                assert client.urls == (first.url,)
                await first.stop()
                await trio.sleep(1)  # many a round, on the virtual clock
                assert client.state is not ClientState.CONNECTED
            assert other.broker.statistics().connections_total == 0
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("nodes", "advertised", "invalid", "excess"),
    [
        # thousands: only the first 32 are read
        ([f"ws://127.0.0.1:1/{i}" for i in range(5000)], 32, 0, 5000 - 32),
        (["ws://x"] * 100_000, 1, 0, 100_000 - 32),
        # what is not fit to dial
        (
            [
                "not a url",
                "http://127.0.0.1:1",
                "wss://127.0.0.1:1",  # another scheme than the client's
                "ws://127.0.0.1:1/a b",
                "ws://127.0.0.1:1/\x00",
                "ws://" + "x" * MAX_URL_LENGTH,
                "ws://127.0.0.1:bad",
                "ws://127.0.0.1:2/ok",
            ],
            1,
            7,
            0,
        ),
    ],
    ids=["5000 urls", "100000 repeats", "bad urls"],
)
async def test_hostile_nodes_are_bounded_and_checked(
    nodes: list[str], advertised: int, invalid: int, excess: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker advertising thousands of URLs, or URLs unfit to dial, gets at most 32 of the
    good ones taken; the rest is logged and counted once, and the client carries on."""
    caplog.set_level(logging.WARNING, logger="trio_realtime.client")
    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(welcome_with(nodes)) as server,
            open_client(server.url) as client,
        ):
            assert client.state is ClientState.CONNECTED
            assert len(client.urls) == 1 + advertised
            assert client.urls[0] == server.url
            assert all(url.startswith("ws://127.0.0.1:") or url == "ws://x" for url in client.urls)
            assert client.statistics().errors == 1
    (record,) = [r for r in caplog.records if "advertised node URLs" in r.getMessage()]
    assert f"{invalid} not ws:// URLs" in record.getMessage()
    assert f"and {excess} beyond the first {MAX_NODES}" in record.getMessage()


@pytest.mark.parametrize(
    "nodes", ["ws://127.0.0.1:1", {"url": "ws://127.0.0.1:1"}, [1, 2, 3], None, [None]]
)
async def test_a_welcome_whose_nodes_is_not_a_list_of_strings_is_refused(nodes: object) -> None:
    """nodes that is not an array of strings breaks the protocol: that broker's handshake
    fails, and the client goes on to the next URL."""
    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(welcome_with(nodes)) as hostile,
            running_broker() as served,
        ):
            with pytest.raises(HandshakeError, match="field 'nodes"):
                async with open_client(hostile.url):
                    pytest.fail("must not connect")
            async with open_client([hostile.url, served.url]) as client:
                assert client.url == served.url
                assert client.urls == (hostile.url, served.url)


async def test_the_broker_advertises_nodes_only_when_told() -> None:
    """welcome carries nodes from advertise_urls, and leaves the field out without them."""

    async def welcome(url: str) -> dict[str, Any]:
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message('{"type": "hello"}')
            message: dict[str, Any] = orjson.loads(await ws.get_message())
            return message

    nodes = ["ws://node-2.example:8765", "ws://node-3.example:8765"]
    with trio.fail_after(TIMEOUT):
        async with running_broker(advertise_urls=nodes) as served:
            assert (await welcome(served.url))["nodes"] == nodes
        async with running_broker() as served:
            assert "nodes" not in await welcome(served.url)


@pytest.mark.parametrize(
    ("urls", "match"),
    [
        ("ws://a:1", "not the string"),
        (["ws://a:1", "wss://b:1"], "mix ws:// and wss://"),
        (["tcp://a:1"], "not a WebSocket URL"),
        ([f"ws://a:{i}" for i in range(1, MAX_NODES + 2)], "a client takes 32 at most"),
    ],
)
def test_the_broker_checks_the_urls_it_advertises(urls: object, match: str) -> None:
    """A string, mixed schemes, a URL that is not ws:// and more than 32 are refused."""
    with pytest.raises(ValueError, match=match):
        Broker(advertise_urls=urls)  # type: ignore[arg-type]


def test_nodes_rotate_after_the_current_one_and_keep_the_given_first() -> None:
    """The next node follows the current one, round the list; advertised ones come after
    the given ones, replace those advertised before, and an empty list changes nothing."""
    nodes = Nodes(("ws://a", "ws://b"))
    assert nodes.learn(["ws://c", "ws://A/", "ws://d", "ws://c"]).kept == 2
    assert list(nodes.urls) == ["ws://a", "ws://b", "ws://c", "ws://d"]
    assert [nodes.after(u) for u in nodes.urls] == ["ws://b", "ws://c", "ws://d", "ws://a"]
    assert nodes.learn([]).kept == 0
    assert list(nodes.urls) == ["ws://a", "ws://b", "ws://c", "ws://d"]
    nodes.learn(["ws://e"])
    assert list(nodes.urls) == ["ws://a", "ws://b", "ws://e"]
    assert nodes.after("ws://d") == "ws://a"  # no longer advertised: start again
    secure = Nodes(("wss://a",))
    learned = secure.learn(["ws://b", "wss://c"])
    assert (learned.kept, learned.invalid) == (1, 1)
    assert secure.urls == ("wss://a", "wss://c")
    assert repr(secure) == "<Nodes given=['wss://a'] advertised=['wss://c']>"
    with pytest.raises(ValueError, match="at least one"):
        Nodes(())


# ---------------------------------------------------------------------------------------------
# serve --advertise, and the config file


def test_advertise_is_a_serve_option_and_a_config_key(tmp_path: Path) -> None:
    """``advertise = [...]`` in [server] sets serve's --advertise; the flag replaces it."""
    config_file = tmp_path / "broker.toml"
    config_file.write_text('[server]\nadvertise = ["ws://node-2:8765", "ws://node-3:8765"]\n')
    config = load_config(config_file)
    args = argparse.Namespace(**dict.fromkeys(serve_actions()))
    assert serve_settings(args, config).advertise == ["ws://node-2:8765", "ws://node-3:8765"]
    args.advertise = ["ws://node-4:8765"]
    assert serve_settings(args, config).advertise == ["ws://node-4:8765"]
    config_file.write_text('[server]\nadvertise = "ws://node-2:8765"\n')
    with pytest.raises(ValueError, match=r"server\.advertise: expected an array of URLs"):
        load_config(config_file)


@pytest.fixture
async def node_pair() -> AsyncIterator[tuple[BrokerProcess, BrokerProcess]]:
    """Two ``trio-realtime serve`` processes, each with its own memory store; the first
    advertises the second."""
    async with (
        open_broker_process("--store", "memory", "--name", "node-2") as second,
        open_broker_process(
            "--store", "memory", "--name", "node-1", "--advertise", second.url, expect_exit=True
        ) as first,
    ):
        yield first, second


async def test_a_client_fails_over_from_a_killed_serve_process(
    node_pair: tuple[BrokerProcess, BrokerProcess],
) -> None:
    """``serve --advertise`` tells clients of the other node; the first node SIGKILLed, the
    client moves there on its own, and reports the other store's epoch."""
    first, second = node_pair
    with trio.fail_after(30):
        await first.wait_for_output(r"^advertised nodes: ")
        assert f"advertised nodes: {second.url}\n" in first.stdout()
        async with (
            open_client(first.url, **FAST) as client,
            client.subscribe("feed.>", since=0) as sub,
        ):
            assert client.urls == (first.url, second.url)
            assert client.broker == "node-1"
            await client.publish("feed.x", "on node 1", ack=True)
            assert (await sub.receive()).data == "on node 1"
            os.kill(first.pid, signal.SIGKILL)
            with pytest.raises(EpochChanged):
                await sub.receive()
            assert (client.url, client.broker) == (second.url, "node-2")
            await client.publish("feed.x", "on node 2", ack=True)
            assert (await sub.receive()).data == "on node 2"
