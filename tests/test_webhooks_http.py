"""Webhooks over real HTTP: a receiver on 127.0.0.1 (hypercorn's Trio worker) that checks
each request with the Standard Webhooks reference library, an in-process broker posting
with httpx's own transport, and a ``trio-realtime serve`` process configured with
``[[webhooks]]`` that is killed with SIGKILL and resumes from its cursor."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import hypercorn
import hypercorn.trio
import pytest
import standardwebhooks
import trio
from _broker_process import open_broker_process
from conftest import TIMEOUT, running_broker

from trio_realtime import Broker, open_client
from trio_realtime.integrations import new_webhook_secret
from trio_realtime.store import MemoryStore

SECRET: Final = new_webhook_secret()

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Receiver:
    """An HTTP endpoint on 127.0.0.1: ``/ok`` answers 204 (503 while not :attr:`accepting`),
    ``/moved`` 302 to ``/ok``, ``/hang`` never answers. Every request's signature is checked;
    one that fails the check is answered 400 and kept in :attr:`refused`."""

    def __init__(self) -> None:
        self.url = ""
        self.accepting = True
        #: (path, webhook-id) of each request whose signature was right, in order.
        self.requests: list[tuple[str, str]] = []
        #: webhook-ids of the requests answered 2xx.
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.verifier = standardwebhooks.Webhook(SECRET)
        self._changed = trio.Event()

    def ids(self, path: str) -> list[str]:
        return [webhook_id for p, webhook_id in self.requests if p == path]

    async def wait_until(self, done: Callable[[], bool]) -> None:
        while not done():
            await self._changed.wait()

    async def app(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # (the sender went away mid-request: killed)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            self.verifier.verify(body, headers)
        except standardwebhooks.webhooks.WebhookVerificationError as exc:
            self.refused.append(str(exc))
            status, extra = 400, list[tuple[bytes, bytes]]()
        else:
            path = scope["path"]
            self.requests.append((path, headers["webhook-id"]))
            answers: dict[str, tuple[int, list[tuple[bytes, bytes]]]] = {
                "/ok": (204 if self.accepting else 503, []),
                "/moved": (302, [(b"location", f"{self.url}/ok".encode())]),
            }
            status, extra = answers.get(path, (404, []))
            if path == "/hang":
                self._wake()
                await trio.sleep_forever()
            if status == 204:
                self.accepted.append(headers["webhook-id"])
            assert json.loads(body)["specversion"] == "1.0"
        self._wake()
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b""})

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def serving_receiver() -> AsyncIterator[Receiver]:
    """A :class:`Receiver` listening on 127.0.0.1 (a free port) for the block."""
    receiver = Receiver()
    config = hypercorn.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn.trio.serve, receiver.app, config)
        receiver.url = f"http://127.0.0.1:{int(binds[0].rsplit(':', 1)[1])}"
        yield receiver
        nursery.cancel_scope.cancel()


async def test_real_http_signed_redirect_refused_and_a_hanging_endpoint_cut_off() -> None:
    """Over real HTTP: events arrive signed (the reference library checks them); a redirect
    is not followed; an endpoint that hangs is cut off at its timeout, while the others are
    served at once."""
    with trio.fail_after(TIMEOUT):
        async with serving_receiver() as receiver:
            broker = Broker(store=MemoryStore(), stats_interval=None)
            broker.webhook("fine", f"{receiver.url}/ok", "fine.>", secret=SECRET)
            broker.webhook("moved", f"{receiver.url}/moved", "moved.>", secret=SECRET)
            broker.webhook(
                "stuck", f"{receiver.url}/hang", "stuck.>", secret=SECRET, timeout=0.5, backoff=0.1
            )
            async with running_broker(broker) as served:
                bus = served.broker.bus
                stuck = await bus.publish("stuck.x", 0)
                await receiver.wait_until(lambda: receiver.ids("/hang") == [stuck.id])
                fine = [await bus.publish("fine.x", n) for n in range(20)]
                async with bus.subscribe("$sys.webhook.failed") as failures:
                    moved = await bus.publish("moved.x", 1)
                    failed = await failures.receive()
                await receiver.wait_until(lambda: len(receiver.accepted) == 20)
                await receiver.wait_until(lambda: receiver.ids("/moved") == [moved.id])
                # The hanging attempt is cut at its timeout, then retried:
                await receiver.wait_until(lambda: len(receiver.ids("/hang")) == 2)
                stats = broker.statistics().webhooks
    assert sorted(receiver.accepted) == sorted(event.id for event in fine)
    assert receiver.ids("/ok") == receiver.accepted  # (the redirect was not followed)
    assert receiver.refused == []
    assert failed.data["reason"] == "HTTP 302 (a redirect: not followed)"
    assert (stats["moved"].failed, stats["moved"].attempts) == (1, 1)
    assert stats["stuck"].failed_attempts >= 1
    assert stats["fine"].delivered == 20


def _cursor(path: Path) -> int | None:
    """The webhook's cursor in the store file, read beside the broker that writes it."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'cursor:webhook:audit'").fetchone()
    return None if row is None else int(row[0])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
async def test_a_broker_killed_with_sigkill_resumes_delivery_from_its_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``serve`` process with ``[[webhooks]]`` in its config file: killed with SIGKILL
    while events wait for the endpoint, the next process posts each of them (nothing lost),
    and not again those the first had delivered (it resumes from the cursor it saved)."""
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    store = tmp_path / "events.db"
    config = tmp_path / "broker.toml"
    with trio.fail_after(60):
        async with serving_receiver() as receiver:
            config.write_text(
                "[[webhooks]]\n"
                'name = "audit"\n'
                f'url = "{receiver.url}/ok"\n'
                'patterns = ["orders.>"]\n'
                'secret_env = "TEST_WEBHOOK_SECRET"\n'
                "backoff = 0.2\n"
                "max_backoff = 0.5\n",
                encoding="utf-8",
            )
            serve = ("--store", f"sqlite:{store}", "--config", str(config))
            async with open_broker_process(*serve, expect_exit=True) as broker:
                assert f"webhooks: audit ({receiver.url})" in broker.stdout()
                async with open_client(broker.url, reconnect=False) as client:
                    first = [await client.publish("orders.created", n, ack=True) for n in range(10)]
                    await receiver.wait_until(lambda: len(receiver.accepted) == 10)
                    await broker.wait_until(
                        lambda: _cursor(store) == first[-1].seq, "the cursor is saved"
                    )
                    receiver.accepting = False
                    second = [
                        await client.publish("orders.created", n, ack=True) for n in range(10, 20)
                    ]
                    await receiver.wait_until(lambda: len(receiver.ids("/ok")) >= 20)
                broker.process.send_signal(signal.SIGKILL)
                await broker.process.wait()
            assert set(receiver.accepted) == {event.id for event in first}
            receiver.accepting = True
            async with open_broker_process(*serve) as broker:
                wanted = {event.id for event in first + second}
                await receiver.wait_until(lambda: set(receiver.accepted) == wanted)
                broker.assert_healthy()
    assert sorted(receiver.accepted[:10]) == sorted(event.id for event in first)
    assert sorted(receiver.accepted[10:]) == sorted(event.id for event in second)
    assert receiver.refused == []
