"""Crash tests: a broker process killed with SIGKILL loses no acknowledged event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trio_realtime import ConnectionClosed, Event
from trio_realtime.client._client import open_client
from trio_realtime.store import SQLiteStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


class BrokerProcess:
    """A ``trio-realtime serve`` child process on 127.0.0.1 with a SQLite store."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.process: trio.Process | None = None
        self.port = 0

    async def start(self) -> str:
        """Start the broker (on the same port as before, if it ran before); return its URL."""
        self.process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "trio_realtime",
                "serve",
                "--port",
                str(self.port),
                "--store",
                f"sqlite:{self.db}",
                "--heartbeat",
                "1",
            ],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stdout is not None
        output = b""
        while b"listening on " not in output or not output.endswith(b"\n"):
            chunk = await self.process.stdout.receive_some()
            assert chunk, f"the broker exited: {output!r}"
            output += chunk
        url = output.split(b"listening on ", 1)[1].split()[0].decode()
        self.port = int(url.rsplit(":", 1)[1])
        return url

    async def kill(self) -> None:
        """SIGKILL the broker and wait for it to be gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """Stop the broker the polite way (SIGTERM), as an operator would."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10) as scope:
                await self.process.wait()
            if scope.cancelled_caught:
                self.process.kill()
                await self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            await self.process.stdout.aclose()


async def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """Acked events survive SIGKILL with their id and seq; a resuming subscriber sees each once."""
    broker = BrokerProcess(tmp_path / "events.db")
    acked: list[Event] = []
    received: list[Event] = []
    with trio.fail_after(60):
        url = await broker.start()
        try:
            async with (
                open_client(url, name="subscriber", backoff_max=0.2) as sub_client,
                sub_client.subscribe("crash.>", since=0, max_buffer_size=100_000) as sub,
                trio.open_nursery() as nursery,
            ):
                target = 0
                caught_up = trio.Event()

                async def receive() -> None:
                    async for event in sub:
                        received.append(event)
                        if target and len(received) >= target:
                            caught_up.set()

                nursery.start_soon(receive)
                async with open_client(url, name="publisher", reconnect=False) as publisher:
                    killed = False
                    try:
                        for i in range(100_000):
                            acked.append(await publisher.publish(f"crash.{i % 3}", i, ack=True))
                            if i == 300:
                                await broker.kill()
                                killed = True
                    except ConnectionClosed:
                        assert killed
                assert len(acked) > 300
                url = await broker.start()
                # the subscriber reconnects by itself and resumes after the last seq it saw:
                # it gets what it missed and what comes next, each once
                async with open_client(url, name="publisher 2") as publisher:
                    for i in range(100):
                        acked.append(await publisher.publish("crash.after", i, ack=True))  # noqa: PERF401
                target = len(acked)
                if len(received) >= target:
                    caught_up.set()
                await caught_up.wait()
                nursery.cancel_scope.cancel()
        finally:
            await broker.stop()

    async with SQLiteStore(broker.db) as store:
        stored = await store.read("crash.>", after=0, limit=len(acked) + 100)
    stored_by_id = {e.id: e for e in stored}
    for event in acked:
        assert event.seq is not None
        assert stored_by_id[event.id].seq == event.seq
        assert stored_by_id[event.id].data == event.data
    seqs = [e.seq or 0 for e in received]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    received_ids = [e.id for e in received]
    assert [e.id for e in acked if e.id in received_ids] == [e.id for e in acked]
    assert received_ids[-100:] == [e.id for e in acked[-100:]]
