"""open_channel: one entry point, the implementation picked by the URL's scheme; the same
application code runs unchanged over memory://, ws:// and nats://."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from _nats_server import running_nats_server
from conftest import TIMEOUT, running_broker

from trio_realtime import (
    Bus,
    Client,
    Event,
    EventChannel,
    NoResponders,
    StoreUnavailable,
    event_type,
    open_channel,
)
from trio_realtime.natschannel import NatsChannel
from trio_realtime.store import MemoryStore


@event_type("test_open_channel.order", topic="app.orders.new")
@attrs.frozen
class Order:
    """A typed payload."""

    order_id: int
    total: float


async def application(url: str, **options: Any) -> list[Any]:
    """An application written against EventChannel only: it names a URL, nothing else. It
    answers requests, keeps a retained status, takes typed orders in a queue group and follows
    them with a plain subscription too, and returns what it saw."""
    seen: list[Any] = []
    async with open_channel(url, **options) as channel:
        await channel.publish("app.status", {"up": True}, retain=True)

        async def price(event: Event) -> Any:
            return {"total": event.data["qty"] * 2.5}

        async with (
            channel.serve("app.price", price, group="pricing"),
            channel.subscribe("app.status") as status,
            channel.subscribe(Order, group="workers") as orders,
            channel.subscribe("app.orders.*") as plain,
        ):
            seen.append((await status.receive()).data)
            quote = await channel.request("app.price", {"qty": 4})
            seen.append(quote.data)
            for i in range(3):
                await channel.publish(Order(order_id=i, total=quote.data["total"]))
            seen.append([(await orders.receive()).data for _ in range(3)])
            seen.append([(await plain.receive()).type for _ in range(3)])
            try:
                await channel.request("app.nobody", None)
            except NoResponders:
                seen.append("no responders")
            try:
                await channel.history("app.>")
            except StoreUnavailable:
                seen.append("no store")
    return seen


EXPECTED = [
    {"up": True},
    {"total": 10.0},
    [Order(0, 10.0), Order(1, 10.0), Order(2, 10.0)],
    ["test_open_channel.order"] * 3,
    "no responders",
    "no store",
]


async def test_the_same_code_runs_over_memory_ws_and_nats(tmp_path: Path) -> None:
    """The application gives the same results in process, through a broker and over NATS."""
    with trio.fail_after(TIMEOUT * 3):
        assert await application("memory://") == EXPECTED
        async with running_broker() as broker:
            assert await application(broker.url, name="app") == EXPECTED
        async with running_nats_server(tmp_path) as server:
            assert await application(server.url, name="app") == EXPECTED


@pytest.mark.parametrize("kind", ["memory", "ws", "nats"])
async def test_the_scheme_picks_the_implementation(tmp_path: Path, kind: str) -> None:
    """memory:// is a Bus, ws:// a Client, nats:// a NatsChannel, each an EventChannel,
    with the options given passed on; leaving the block closes it."""

    @asynccontextmanager
    async def url() -> AsyncIterator[str]:
        if kind == "memory":
            yield "memory://"
        elif kind == "ws":
            async with running_broker() as broker:
                yield broker.url
        else:
            async with running_nats_server(tmp_path) as server:
                yield server.url

    expected: type[Any] = {"memory": Bus, "ws": Client, "nats": NatsChannel}[kind]
    options = {"source": "picked"} if kind == "memory" else {"name": "picked"}
    with trio.fail_after(TIMEOUT):
        async with url() as where, open_channel(where, **options) as channel:
            assert isinstance(channel, EventChannel)
            assert type(channel) is expected
            assert (await channel.publish("a.b", 1)).source == "picked"
        with pytest.raises(trio.ClosedResourceError):
            await channel.publish("a.b", 1)


async def test_a_store_is_an_option_like_any_other() -> None:
    """memory:// takes open_bus's options: a store gives it history."""
    with trio.fail_after(TIMEOUT):
        async with open_channel("memory://", store=MemoryStore()) as channel:
            stored = await channel.publish("a.b", 1)
            assert [e.id for e in await channel.history("a.>")] == [stored.id]


async def test_several_nats_urls_are_several_servers(tmp_path: Path) -> None:
    """A list of URLs (or comma-separated ones) names the servers to fail over between."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path) as server:
            for url in ([server.url, server.url], f"{server.url}, {server.url}"):
                async with open_channel(url) as channel:
                    assert isinstance(channel, NatsChannel)
                    assert channel.connected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://127.0.0.1:8765", "unknown URL scheme"),
        ("127.0.0.1:4222", "unknown URL scheme"),
        ("memory://shared", "nothing more"),
        (["nats://a:4222", "ws://b:8765"], "one scheme"),
        ([], "a URL"),
    ],
)
async def test_a_url_it_cannot_open_is_refused(url: Any, fragment: str) -> None:
    """An unknown scheme, a memory:// URL with more in it, or mixed schemes: ValueError."""
    with pytest.raises(ValueError, match=fragment):
        async with open_channel(url):
            pass  # pragma: no cover


async def test_an_option_the_implementation_lacks_is_a_type_error() -> None:
    """Options go to the opening function as they are: one it does not take is a TypeError."""
    with pytest.raises(TypeError, match="token"):
        async with open_channel("memory://", token="secret"):
            pass  # pragma: no cover
