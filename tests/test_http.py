"""The broker's HTTP side port: /metrics, /healthz and /readyz, read over real HTTP.

The reader is the standard library's urllib (in a worker thread), and the exposition is
parsed with prometheus-client's own text parser: neither is the code under test.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

import prometheus_client
import pytest
import trio
from conftest import TIMEOUT, running_broker, start_broker
from prometheus_client.parser import text_string_to_metric_families
from test_interop import in_thread

from trio_realtime import Broker, open_bus, open_client
from trio_realtime.security import Permissions, StaticUsers, User, token_sha256
from trio_realtime.store import MemoryStore, SQLiteStore

TOKEN: Final = "metrics-user-token-0123456789"


def get(url: str, method: str = "GET") -> tuple[int, str, str]:
    """``(status, content type, body)`` of one HTTP request (any status)."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition's samples, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_follow_the_broker_s_statistics() -> None:
    """/metrics is the Prometheus text format of statistics() and the store's, read at scrape
    time: the figures move when events flow and equal the snapshot's."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus(store=MemoryStore()) as bus,
            running_broker(bus=bus) as served,
            trio.open_nursery() as nursery,
        ):
            http = await nursery.start(served.broker.serve_http, "127.0.0.1", 0)
            status, kind, before = await in_thread(lambda: get(f"{http.url}/metrics"))
            assert status == 200
            assert kind == prometheus_client.CONTENT_TYPE_LATEST  # (the text format)
            async with open_client(served.url) as client, client.subscribe("m.>") as sub:
                for n in range(5):
                    await client.publish("m.x", n, ack=True)
                for _ in range(5):
                    await sub.receive()
                await client.publish("$sys.nope", 1)  # forbidden: an error counted
                _, _, after = await in_thread(lambda: get(f"{http.url}/metrics"))
                stats = served.broker.statistics()
            nursery.cancel_scope.cancel()
    was, now = samples(before), samples(after)
    assert now[("trio_realtime_events_in_total", ())] == stats.events_in == 6
    assert now[("trio_realtime_received_bytes_total", ())] == stats.bytes_in > 6 * 30
    assert now[("trio_realtime_sent_bytes_total", ())] == stats.bytes_out > 5 * 30
    assert now[("trio_realtime_events_out_total", ())] == stats.events_out >= 5
    assert now[("trio_realtime_events_stored_total", ())] == stats.stored >= 5
    assert now[("trio_realtime_connections", ())] == stats.connections == 1
    assert now[("trio_realtime_connections_total", ())] == stats.connections_total == 1
    assert now[("trio_realtime_subscriptions", ())] == stats.subscriptions
    assert now[("trio_realtime_errors_total", (("code", "forbidden"),))] == 1
    assert now[("trio_realtime_store_events", ())] >= 5
    assert now[("trio_realtime_ready", ())] == 1
    assert was[("trio_realtime_events_in_total", ())] == 0


async def test_user_connections_are_counted_by_user() -> None:
    """With authentication, the connections of each user are a labelled gauge."""
    auth = StaticUsers([User("alice", token_sha256(TOKEN), Permissions.everything())])
    with trio.fail_after(TIMEOUT):
        async with running_broker(auth=auth) as served, trio.open_nursery() as nursery:
            http = await nursery.start(served.broker.serve_http, "127.0.0.1", 0)
            async with open_client(served.url, token=TOKEN), open_client(served.url, token=TOKEN):
                _, _, text = await in_thread(lambda: get(f"{http.url}/metrics"))
            nursery.cancel_scope.cancel()
    assert samples(text)[("trio_realtime_user_connections", (("user", "alice"),))] == 2


async def test_health_and_unknown_paths() -> None:
    """/healthz is 200; another path 404; another method 405."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as served, trio.open_nursery() as nursery:
            http = await nursery.start(served.broker.serve_http, "127.0.0.1", 0)
            assert (await in_thread(lambda: get(f"{http.url}/healthz")))[::2] == (200, "ok\n")
            assert (await in_thread(lambda: get(f"{http.url}/nope")))[0] == 404
            assert (await in_thread(lambda: get(f"{http.url}/metrics", "POST")))[0] == 405
            nursery.cancel_scope.cancel()


async def test_readiness_follows_start_and_drain() -> None:
    """/readyz answers 503 before the broker listens, 200 while it serves, and 503 again
    while it drains its clients at shutdown (here held up by a client that does not answer
    the close)."""
    broker = Broker(stats_interval=None, shutdown_timeout=TIMEOUT)
    with trio.fail_after(TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            http = await nursery.start(broker.serve_http, "127.0.0.1", 0)

            def readyz() -> int:
                return get(f"{http.url}/readyz")[0]

            assert await in_thread(readyz) == 503
            async with trio.open_nursery() as serving:
                served = await start_broker(serving, broker)
                assert await in_thread(readyz) == 200
                # A client that never reads: the broker's close waits for it.
                stream = await trio.open_tcp_stream("127.0.0.1", served.port)
                await stream.send_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                assert b" 101 " in await stream.receive_some()
                hello = b'{"type":"hello"}'  # one masked text frame (a zero mask)
                await stream.send_all(b"\x81" + bytes([0x80 | len(hello)]) + bytes(4) + hello)
                assert b"welcome" in await stream.receive_some()
                served.stop_nowait()
                while broker.ready:
                    await trio.lowlevel.checkpoint()
                assert await in_thread(readyz) == 503
                await stream.aclose()
            assert await in_thread(readyz) == 503
            nursery.cancel_scope.cancel()


def test_metric_names_follow_prometheus_conventions() -> None:
    """Counters end in _total, every name starts with trio_realtime_, help is given."""
    from trio_realtime.broker._http import metrics_text

    broker = Broker(stats_interval=None)
    families = list(text_string_to_metric_families(metrics_text(broker).decode()))
    assert families
    for family in families:
        assert family.name.startswith("trio_realtime_"), family.name
        assert family.documentation
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
async def test_head_requests_are_answered(path: str) -> None:
    """HEAD gets the status of GET (monitoring tools use it)."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as served, trio.open_nursery() as nursery:
            http = await nursery.start(served.broker.serve_http, "127.0.0.1", 0)
            assert (await in_thread(lambda: get(f"{http.url}{path}", "HEAD")))[0] == 200
            nursery.cancel_scope.cancel()


async def test_the_operations_guide_lists_every_metric(tmp_path: Path) -> None:
    """docs/operations.rst's table names exactly the metrics a broker with an SQLite store
    exposes."""
    import re

    from trio_realtime.broker._http import metrics_text

    doc = (Path(__file__).parents[1] / "docs" / "operations.rst").read_text(encoding="utf-8")
    documented = set(re.findall(r"^   \* - ``(trio_realtime_\w+)``$", doc, flags=re.MULTILINE))
    # (a clustered broker's: tests/test_cluster.py)
    documented = {name for name in documented if not name.startswith("trio_realtime_cluster_")}
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus(store=SQLiteStore(tmp_path / "events.db")) as bus,
            running_broker(bus=bus) as served,
        ):
            await bus.publish("stored.x", 1, ack=True)
            text = metrics_text(served.broker).decode()
    store_samples = samples(text)
    assert store_samples[("trio_realtime_store_size_bytes", ())] > 0
    assert store_samples[("trio_realtime_store_commit_seconds_total", ())] > 0
    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
    }
    assert documented == exposed
