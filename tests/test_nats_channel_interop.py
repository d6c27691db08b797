"""The NATS EventChannel and a plain NATS program exchange events and requests both ways.

The other side is a nats-py program on plain asyncio, in a process of its own, that knows
nothing of trio_realtime: it publishes and requests with plain payloads (as ``nats pub`` and
``nats request`` do), answers requests with ``msg.respond``, and reports what it receives as
JSON lines on its stdout. The channel must read its messages as events, and it must read the
channel's events as the documented mapping says (``ce-`` headers, JSON payload).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
import trio
from _nats_server import running_nats_server
from conftest import TIMEOUT

from trio_realtime import Event, NoResponders, RequestFailed
from trio_realtime.natschannel import open_nats_channel

pytest.importorskip("nats")
pytest.importorskip("trio_asyncio")

#: The plain NATS program: commands on stdin, one JSON line per thing it saw on stdout.
PROGRAM: Final = r"""
import asyncio, json, sys
import nats

async def main(url):
    nc = await nats.connect(url)
    loop = asyncio.get_running_loop()
    lines = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline()))

    def say(**fields):
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    async def received(msg):
        say(kind="event", subject=msg.subject, headers=dict(msg.headers or {}),
            data=msg.data.decode())

    async def double(msg):
        await msg.respond(json.dumps({"doubled": json.loads(msg.data) * 2}).encode())

    await nc.subscribe("tr.interop.to_py", cb=received)
    await nc.subscribe("tr.interop.rpc.py", cb=double)
    await nc.flush()
    say(kind="ready")
    while True:
        command = (await lines.get()).strip()
        if command == "publish":
            await nc.publish("tr.interop.from_py", b'{"n": 1}')
            await nc.publish("tr.interop.from_py", b"plain text", headers={"X-Trace": "t-1"})
            await nc.flush()
            say(kind="published")
        elif command == "request":
            reply = await nc.request("tr.interop.rpc.trio", b"21", timeout=5)
            say(kind="reply", headers=dict(reply.headers or {}), data=reply.data.decode())
        elif command == "request-failing":
            reply = await nc.request("tr.interop.rpc.fails", b"1", timeout=5)
            say(kind="reply", headers=dict(reply.headers or {}), data=reply.data.decode())
        else:
            break
    await nc.close()

asyncio.run(main(sys.argv[1]))
"""


class PlainPeer:
    """The plain NATS program, driven line by line."""

    def __init__(self, process: trio.Process) -> None:
        self._process = process
        self._buffer = b""

    async def send(self, command: str) -> None:
        assert self._process.stdin is not None
        await self._process.stdin.send_all(command.encode() + b"\n")

    async def next(self) -> dict[str, Any]:
        """The next JSON line it wrote."""
        assert self._process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self._process.stdout.receive_some()
            if not chunk:
                raise EOFError("the plain NATS program exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        result: dict[str, Any] = orjson.loads(line)
        return result


@asynccontextmanager
async def plain_peer(url: str) -> AsyncIterator[PlainPeer]:
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-c", PROGRAM, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        peer = PlainPeer(process)
        try:
            assert (await peer.next())["kind"] == "ready"
            yield peer
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(TIMEOUT):
                await peer.send("quit")
                await process.wait()
            process.kill()


async def test_events_and_requests_both_ways(tmp_path: Path) -> None:
    """Plain NATS messages arrive as events, ours reach plain subscribers with the ce-
    headers and the JSON data, and requests go both ways (no responders, failures too)."""
    with trio.fail_after(TIMEOUT * 2):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats_channel(server.url, name="trio-side") as channel,
            plain_peer(server.url) as peer,
        ):
            # Theirs to ours: a plain publish is an event whose data is the payload.
            async with channel.subscribe("interop.from_py") as sub:
                await peer.send("publish")
                assert (await peer.next())["kind"] == "published"
                first, second = await sub.receive(), await sub.receive()
            assert (first.topic, first.type, first.source) == ("interop.from_py",) * 2 + ("nats",)
            assert first.data == {"n": 1}
            assert first.headers == {}
            assert second.data == "plain text"
            assert second.headers == {"X-Trace": "t-1"}

            # Ours to theirs: the documented mapping.
            sent = await channel.publish(
                "interop.to_py", {"order": 7}, headers={"trace": "t-2"}, ack=True
            )
            seen = await peer.next()
            assert seen["kind"] == "event"
            assert seen["subject"] == "tr.interop.to_py"
            assert orjson.loads(seen["data"]) == {"order": 7}
            headers = seen["headers"]
            assert headers["ce-specversion"] == "1.0"
            assert headers["ce-id"] == sent.id
            assert headers["ce-source"] == "trio-side"
            assert headers["ce-type"] == "interop.to_py"
            assert headers["ce-datacontenttype"] == "application/json"
            assert headers["ce-trace"] == "t-2"
            assert (
                Event.from_cloudevent(
                    {k[3:]: v for k, v in headers.items()} | {"data": {"order": 7}},
                    default_topic="x",
                ).time
                == sent.time
            )

            # Our request, their responder.
            reply = await channel.request("interop.rpc.py", 21)
            assert reply.data == {"doubled": 42}
            with pytest.raises(NoResponders):
                await channel.request("interop.rpc.nobody", 1)

            # Their request, our responder.
            def fails(event: Event) -> Any:
                raise ValueError("no such order")

            async with (
                channel.serve("interop.rpc.trio", lambda event: {"doubled": event.data * 2}),
                channel.serve("interop.rpc.fails", fails),
            ):
                await peer.send("request")
                answer = await peer.next()
                assert answer["kind"] == "reply"
                assert orjson.loads(answer["data"]) == {"doubled": 42}
                assert answer["headers"]["ce-source"] == "trio-side"
                await peer.send("request-failing")
                answer = await peer.next()
                assert answer["headers"]["ce-error"] == "no%20such%20order"
                assert answer["data"] == ""
            with pytest.raises(RequestFailed, match="no such order"):
                async with channel.serve("interop.rpc.again", fails):
                    await channel.request("interop.rpc.again", 1)
