"""A ``trio-realtime serve`` process for tests, and clients that talk to it from outside.

* :func:`open_broker_process` starts the command line's broker on 127.0.0.1, port 0, with extra
  ``serve`` options (and optionally a lowered descriptor limit), keeps everything it writes to
  stdout and stderr in memory as it comes, and stops it on exit (SIGTERM, then SIGKILL after
  :data:`STOP_TIMEOUT`). Leaving the block fails the test if the broker had exited by itself,
  unless the test said it expects that.
* :class:`Peer` is one independent ``websockets.sync.client`` connection speaking the protocol
  by hand (in a worker thread: see :func:`in_thread`), which records the size in bytes of every
  message it receives.
* :func:`neighbour_check` proves that the broker still serves others: a fresh connection says
  ``hello``, subscribes, publishes with a ``ref`` and gets both the ``ack`` and its own event.
* :class:`RoundTrips` measures a connected neighbour's round trips while something else goes
  on; :class:`PeakRss` samples the broker's resident memory meanwhile.
* :class:`RawWebSocket` (:func:`open_raw`) is a WebSocket client written by hand over a Trio
  socket, for what a library would refuse to send (a half request, invalid UTF-8, an abrupt
  reset) or to be a client that never reads.

Nothing here sleeps to synchronise: waiting on the process is polling with a bound.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final, TypeVar

import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

T = TypeVar("T")
Frame = dict[str, Any]

#: Seconds a broker process has to print its "listening on" line.
STARTUP_TIMEOUT: Final = 20.0
#: Seconds a broker process has to exit after SIGTERM before it is killed.
STOP_TIMEOUT: Final = 10.0
#: Seconds a client waits for one message before the test fails.
RECV_TIMEOUT: Final = 5.0
#: Seconds between two looks at the process while waiting for something it does.
POLL_INTERVAL: Final = 0.01
#: Seconds between two of a neighbour's measured round trips.
ROUND_TRIP_PACE: Final = 0.02
#: A message limit of the protocol: 1 MiB.
MiB: Final = 2**20

_LISTENING = re.compile(r"listening on (wss?://\S+)\r?\n")
#: A log record's first line, as ``trio-realtime --log-level …`` formats it.
_LOG_RECORD = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


# ---------------------------------------------------------------------------------------------
# The broker process


class BrokerProcess:
    """A running ``trio-realtime serve``; get one from :func:`open_broker_process`.

    Attributes:
        process: The child process (its pid is the broker's: there is no shell in between).
        url: The broker's ``ws://127.0.0.1:PORT`` URL ("" until it listens).
    """

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.url = ""
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._pumping = 2
        self._pumped = trio.Event()

    @property
    def pid(self) -> int:
        """The broker's process id."""
        return self.process.pid

    @property
    def port(self) -> int:
        """The port the broker listens on."""
        assert self.url, "the broker is not listening"
        return int(self.url.rsplit(":", 1)[1])

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def stdout(self) -> str:
        """Everything the broker wrote to stdout so far."""
        return self._stdout.decode(errors="replace")

    def stderr(self) -> str:
        """Everything the broker wrote to stderr so far (its log goes there)."""
        return self._stderr.decode(errors="replace")

    def output(self) -> str:
        """Everything the broker wrote so far: stdout, then stderr."""
        return self.stdout() + self.stderr()

    def log_records(self, pattern: str = "", *, level: str = "WARNING") -> list[str]:
        """First lines of log records at *level* or above whose line matches *pattern* (regex)."""
        levels = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
        wanted = set(levels[levels.index(level) :])
        found = []
        for line in self.output().splitlines():
            match = _LOG_RECORD.match(line)
            if match and match[1] in wanted and re.search(pattern, line, re.IGNORECASE):
                found.append(line)
        return found

    def assert_healthy(self) -> None:
        """The broker runs and has logged no traceback."""
        assert self.alive, f"the broker exited with {self.process.returncode}:\n{self.tail()}"
        assert "Traceback" not in self.output(), f"the broker logged a traceback:\n{self.tail()}"

    async def assert_survived(self, *, grace: float = 3.0) -> None:
        """After a client saw an error: fail saying so if the broker is dying, or dead.

        The broker gets *grace* seconds to finish exiting (a crash resets its clients before
        the process is gone); one that is still running passes, if it logged no traceback.
        """
        with trio.move_on_after(grace):
            await self.process.wait()
        if not self.alive:
            raise await self._exited("(it crashed)")
        self.assert_healthy()

    def tail(self, chars: int = 4000) -> str:
        """The end of the output, for assertion messages."""
        return self.output()[-chars:]

    def rss(self) -> int:
        """The broker's resident set size now, in bytes (Linux: ``/proc/PID/status``)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/PID/status")

    def open_fds(self) -> int:
        """How many descriptors the broker has open now (Linux: ``/proc/PID/fd``)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def wait_until(
        self, condition: Callable[[], bool], what: str, *, timeout: float = RECV_TIMEOUT
    ) -> None:
        """Poll *condition* until it holds; fail after *timeout* s or if the broker exits."""
        deadline = trio.current_time() + timeout
        while not condition():
            if not self.alive:
                raise await self._exited(f"before {what}")
            if trio.current_time() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}\n{self.tail()}")
            await trio.sleep(POLL_INTERVAL)

    async def wait_for_output(
        self, pattern: str, *, timeout: float = RECV_TIMEOUT
    ) -> re.Match[str]:
        """The first match of the regex *pattern* in the output, once it is there."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.output(), re.MULTILINE)
            if match:
                found.append(match)
            return match is not None

        await self.wait_until(seen, f"the output matches {pattern!r}", timeout=timeout)
        return found[0]

    async def wait_exit(self, *, timeout: float = STARTUP_TIMEOUT) -> int:
        """The exit status, once the process has exited (fails after *timeout* s)."""
        with trio.move_on_after(timeout):
            return await self.process.wait()
        raise AssertionError(f"the broker did not exit within {timeout} s:\n{self.tail()}")

    async def _pump(self, stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        async with stream:
            while chunk := await stream.receive_some():
                into += chunk
        self._pumping -= 1
        if not self._pumping:
            self._pumped.set()

    async def _exited(self, what: str) -> AssertionError:
        """The error to raise when the process exited unexpectedly, with all it wrote."""
        await self.process.wait()
        with trio.move_on_after(STOP_TIMEOUT):
            await self._pumped.wait()  # the end of its output (its pipes' EOF)
        return AssertionError(
            f"the broker exited with {self.process.returncode} {what}:\n{self.tail()}"
        )

    async def _wait_listening(self, timeout: float) -> None:
        deadline = trio.current_time() + timeout
        while not (match := _LISTENING.search(self.stdout())):
            if not self.alive:
                raise await self._exited("before listening")
            if trio.current_time() > deadline:
                raise AssertionError(
                    f"the broker did not listen within {timeout} s:\n{self.tail()}"
                )
            await trio.sleep(POLL_INTERVAL)
        self.url = match[1]

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT` seconds; wait until it is gone."""
        with trio.CancelScope(shield=True):
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_TIMEOUT):
                    await self.process.wait()
                if self.process.poll() is None:
                    self.process.kill()
            await self.process.wait()


def serve_command(
    *serve_args: str, nofile: int | None = None, log_level: str = "warning"
) -> list[str]:
    """The command line of ``trio-realtime serve`` on 127.0.0.1, port 0, with *serve_args*.

    With *nofile*, the soft ``RLIMIT_NOFILE`` is lowered to it before the broker starts. This is
    done by the child interpreter itself (``-c``) rather than with ``preexec_fn``: a Python
    callback between fork and exec is not safe in a parent that runs threads, as these tests do.
    """
    argv = ["--log-level", log_level, "serve", "--host", "127.0.0.1", "--port", "0", *serve_args]
    if nofile is None:
        return [sys.executable, "-m", "trio_realtime", *argv]
    code = (
        "import resource, runpy, sys\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, hard))\n"
        f"sys.argv = ['trio-realtime', *{argv!r}]\n"
        "runpy.run_module('trio_realtime', run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", code]


def _only_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_broker_process(
    *serve_args: str,
    nofile: int | None = None,
    log_level: str = "warning",
    expect_exit: bool = False,
    wait_listening: bool = True,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> AsyncIterator[BrokerProcess]:
    """Run ``trio-realtime serve`` (see :func:`serve_command`) for the ``async with`` block.

    Yields once the broker listens (its :attr:`~BrokerProcess.url` is set), or at once without
    *wait_listening*. On exit the broker is stopped; if it had exited by itself before, the
    test fails, unless *expect_exit*.
    """
    process = await trio.lowlevel.open_process(
        serve_command(*serve_args, nofile=nofile, log_level=log_level),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    broker = BrokerProcess(process)
    exited_by_itself = False
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None
            assert process.stderr is not None
            nursery.start_soon(broker._pump, process.stdout, broker._stdout)
            nursery.start_soon(broker._pump, process.stderr, broker._stderr)
            try:
                if wait_listening:
                    await broker._wait_listening(startup_timeout)
                yield broker
                exited_by_itself = not broker.alive
            finally:
                await broker.stop()
    except BaseExceptionGroup as group:
        # The pumps never fail: what comes out is the block's own exception; raise it bare.
        raise _only_leaf(group) from None
    if exited_by_itself and not expect_exit:
        raise AssertionError(
            f"the broker exited by itself with {process.returncode}:\n{broker.tail()}"
        )


# ---------------------------------------------------------------------------------------------
# Clients in worker threads (websockets)


async def in_thread(fn: Callable[[], T]) -> T:
    """Run the blocking client code *fn* in a worker thread (abandoned if the test times out)."""
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


class Peer:
    """One ``websockets`` connection speaking the protocol by hand; batches are unpacked.

    Attributes:
        ws: The connection.
        sizes: The size in bytes of every message received, in order.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sizes: list[int] = []
        self._frames: deque[Frame] = deque()

    def send(self, message: Frame | list[Any]) -> None:
        """Send one frame, or a list of frames as a batch."""
        self.ws.send(json.dumps(message))

    def send_text(self, text: str) -> None:
        """Send a raw text message."""
        self.ws.send(text)

    def receive(self, timeout: float = RECV_TIMEOUT) -> Frame:
        """The next frame from the broker (one of a batch, or a message of its own)."""
        if not self._frames:
            message = self.ws.recv(timeout=timeout, decode=False)
            assert isinstance(message, bytes)
            self.sizes.append(len(message))
            parsed = json.loads(message)
            frames = parsed if isinstance(parsed, list) else [parsed]
            assert frames, "the broker sent an empty batch"
            for frame in frames:
                assert isinstance(frame, dict), f"the broker sent a non-object frame: {frame!r}"
            self._frames.extend(frames)
        return self._frames.popleft()

    def expect(self, frame_type: str, timeout: float = RECV_TIMEOUT) -> Frame:
        """The next frame, which must be of *frame_type*."""
        frame = self.receive(timeout)
        assert frame["type"] == frame_type, f"expected {frame_type!r}, got {_short(frame)}"
        return frame

    def until(self, done: Callable[[Frame], bool], timeout: float = RECV_TIMEOUT) -> list[Frame]:
        """Frames up to and including the first one for which *done* is true."""
        frames = [self.receive(timeout)]
        while not done(frames[-1]):
            frames.append(self.receive(timeout))
        return frames

    def answer(self, ref: int, timeout: float = RECV_TIMEOUT) -> tuple[list[Frame], Frame]:
        """The frames before the ``ack``, ``error`` or ``history_result`` of *ref*, and it."""
        frames = self.until(
            lambda f: f["type"] in ("ack", "error", "history_result") and f.get("ref") == ref,
            timeout,
        )
        return frames[:-1], frames[-1]

    def ping(self, timeout: float = RECV_TIMEOUT) -> list[Frame]:
        """Send ``ping``; the frames that arrived before its ``pong``."""
        self.send({"type": "ping"})
        return self.until(lambda f: f["type"] == "pong", timeout)[:-1]

    def publish(self, ref: int, *, retain: bool = False, **event: Any) -> Frame:
        """Publish *event* with *ref*; its ``ack`` or ``error`` (events before it are skipped)."""
        self.send({"type": "publish", "ref": ref, "event": event, "retain": retain})
        return self.answer(ref)[1]

    def subscribe(self, sub_id: int, pattern: str, **options: Any) -> Frame:
        """Subscribe; the ``subscribed`` or ``error`` answer."""
        self.send({"type": "subscribe", "id": sub_id, "pattern": pattern, **options})
        return self.until(
            lambda f: f["type"] == "subscribed" or (f["type"] == "error" and f.get("ref") == sub_id)
        )[-1]

    def say_hello(self, token: str | None, client: str) -> tuple[Frame, int | None]:
        """Send ``hello`` with *token*: the broker's answer, and its close code if it refused
        (None when it answered ``welcome``)."""
        frame: Frame = {"type": "hello", "protocol": 1, "client": client}
        if token is not None:
            frame["token"] = token
        self.send(frame)
        answer = self.receive()
        if answer["type"] == "welcome":
            return answer, None
        return answer, self.close_code()

    def close_code(self, timeout: float = RECV_TIMEOUT) -> int:
        """Read until the broker closes the connection; the close code it sent."""
        while True:
            try:
                self.receive(timeout)
            except ConnectionClosed as exc:
                closed = exc
                break
        assert closed.rcvd is not None, f"closed without a close frame: {closed!r}"
        return closed.rcvd.code


def _short(frame: Frame) -> str:
    text = repr(frame)
    return text if len(text) < 300 else text[:300] + "…"


@contextmanager
def open_peer(
    url: str, *, hello: bool = True, instance: str | None = None, max_size: int = MiB
) -> Iterator[Peer]:
    """A connected ``websockets`` client; with *hello*, past the handshake.

    *max_size* is the largest message it accepts, in bytes (a larger one closes it with 1009).
    """
    with connect(
        url,
        open_timeout=RECV_TIMEOUT,
        close_timeout=RECV_TIMEOUT,
        ping_interval=None,
        compression=None,
        proxy=None,
        max_size=max_size,
    ) as ws:
        peer = Peer(ws)
        if hello:
            frame: Frame = {"type": "hello", "protocol": 1, "client": "hardening"}
            if instance is not None:
                frame["instance"] = instance
            peer.send(frame)
            peer.expect("welcome")
        yield peer


class Neighbour:
    """A well-behaved client: it publishes on a topic of its own and must get its event back."""

    _topics = itertools.count(1)

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.topic = f"neighbour.n{next(self._topics)}x{secrets.token_hex(4)}"
        self._refs = itertools.count(1)
        subscribed = peer.subscribe(1, self.topic)
        assert subscribed["type"] == "subscribed", subscribed

    def round_trip(self, timeout: float = RECV_TIMEOUT) -> float:
        """Publish with a ``ref``; seconds until both the ``ack`` and the event are back."""
        ref = next(self._refs)
        start = time.monotonic()
        self.peer.send({"type": "publish", "ref": ref, "event": {"topic": self.topic, "data": ref}})
        acked = delivered = False
        while not (acked and delivered):
            frame = self.peer.receive(timeout)
            if frame["type"] == "ack" and frame["ref"] == ref:
                acked = True
            elif frame["type"] == "event" and frame["event"]["data"] == ref:
                delivered = True
            else:
                assert frame["type"] in ("event", "ping"), f"neighbour got {_short(frame)}"
                if frame["type"] == "ping":
                    self.peer.send({"type": "pong"})
        return time.monotonic() - start


@contextmanager
def open_neighbour(url: str) -> Iterator[Neighbour]:
    """A connected :class:`Neighbour` (blocking: use it in a worker thread)."""
    with open_peer(url) as peer:
        yield Neighbour(peer)


async def neighbour_check(url: str) -> float:
    """A fresh connection is served: hello, subscribe, publish; ack and event come back.

    Returns the publish's round trip in seconds.
    """

    def run() -> float:
        with open_neighbour(url) as neighbour:
            return neighbour.round_trip()

    return await in_thread(run)


class PeakRss:
    """Samples a broker's RSS every :data:`POLL_INTERVAL` seconds until stopped; keeps the peak.

    ``async with trio.open_nursery() as n: n.start_soon(watch.run); …; watch.stop()``
    """

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.baseline = broker.rss()
        self.peak = self.baseline
        self._done = trio.Event()

    @property
    def growth(self) -> int:
        """The peak over the baseline, in bytes."""
        return self.peak - self.baseline

    def sample(self) -> int:
        """The RSS now (and the peak updated)."""
        rss = self.broker.rss()
        self.peak = max(self.peak, rss)
        return rss

    async def run(self) -> None:
        """Sample until :meth:`stop`."""
        while not self._done.is_set():
            self.sample()
            with trio.move_on_after(POLL_INTERVAL):
                await self._done.wait()

    def stop(self) -> None:
        """End the sampling (after one last sample)."""
        self.sample()
        self._done.set()


class RoundTrips:
    """Measures a connected neighbour's round trips in a worker thread until stopped.

    A round trip may take *timeout* seconds (long: a stall is to be measured, not to fail).

    The first round trip starts at once, each next one :data:`ROUND_TRIP_PACE` seconds after
    the last one ended; there is at least one.

    ``async with trio.open_nursery() as n: n.start_soon(trips.run); …; trips.stop()``
    """

    def __init__(self, neighbour: Neighbour, *, timeout: float = 30.0) -> None:
        self.neighbour = neighbour
        self.timeout = timeout
        self.times: list[float] = []
        self._stop = threading.Event()

    def _loop(self) -> None:
        # The first at once; then paced, so as not to compete with the broker for the CPU.
        while True:
            self.times.append(self.neighbour.round_trip(self.timeout))
            if self._stop.wait(ROUND_TRIP_PACE):
                return

    async def run(self) -> None:
        """Measure until :meth:`stop`."""
        await in_thread(self._loop)

    def stop(self) -> None:
        """End the measurement after the round trip in progress."""
        self._stop.set()


# ---------------------------------------------------------------------------------------------
# A WebSocket client by hand (Trio sockets)

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA


def upgrade_request(port: int) -> bytes:
    """A valid WebSocket upgrade request for ``ws://127.0.0.1:port/``."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    return (
        "GET / HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One WebSocket frame from a client: masked, as RFC 6455 requires."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 2**16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = secrets.token_bytes(4)
    repeated = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return head + mask + masked


class RawWebSocket:
    """A WebSocket client written by hand over a Trio TCP stream."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, port: int, *, receive_buffer: int | None = None) -> RawWebSocket:
        """A TCP connection to 127.0.0.1:*port*, nothing sent yet.

        *receive_buffer* sets ``SO_RCVBUF`` before connecting: a small one makes a client that
        does not read push back on the broker sooner.
        """
        if receive_buffer is None:
            return cls(await trio.open_tcp_stream("127.0.0.1", port), port)
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock), port)

    async def send_bytes(self, data: bytes) -> None:
        """Send *data* as it is."""
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(64 * 1024)
        if not chunk:
            raise EOFError("the broker closed the TCP connection")
        self._buffer += chunk

    async def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            await self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read_http_head(self) -> list[str]:
        """The lines of the HTTP answer's head (status line first)."""
        while b"\r\n\r\n" not in self._buffer:
            await self._fill()
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer[:] = rest
        return head.decode("latin-1").split("\r\n")

    async def upgrade(self) -> str:
        """Send an upgrade request; the answer's status line (``HTTP/1.1 101 …`` when open)."""
        await self.send_bytes(upgrade_request(self.port))
        return (await self.read_http_head())[0]

    async def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """Send one masked frame."""
        await self.send_bytes(client_frame(opcode, payload, fin=fin))

    async def send_json(self, message: Any) -> None:
        """Send *message* as JSON in a text message."""
        await self.send_frame(OP_TEXT, json.dumps(message).encode())

    async def receive_frame(self) -> tuple[int, bytes]:
        """The next whole message from the broker: ``(opcode, payload)`` (fragments joined)."""
        opcode = None
        payload = b""
        while True:
            first, second = await self._read_exactly(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self._read_exactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self._read_exactly(8))
            assert not second & 0x80, "the broker masked a frame"
            data = await self._read_exactly(n)
            if first & 0x0F >= OP_CLOSE:  # control frames may come between fragments
                return first & 0x0F, data
            if opcode is None:
                opcode = first & 0x0F
            payload += data
            if first & 0x80:
                return opcode, payload

    async def receive_json(self) -> Any:
        """The next text message, parsed."""
        opcode, payload = await self.receive_frame()
        assert opcode == OP_TEXT, f"expected a text message, got opcode {opcode}: {payload[:200]!r}"
        return json.loads(payload)

    async def hello(self) -> Frame:
        """Upgrade, send ``hello``; the ``welcome``."""
        status = await self.upgrade()
        assert status.startswith("HTTP/1.1 101"), status
        await self.send_json({"type": "hello", "protocol": 1, "client": "raw"})
        welcome: Frame = await self.receive_json()
        assert welcome["type"] == "welcome", welcome
        return welcome

    async def close_code(self) -> int:
        """Read until the broker's close frame; its close code (1005 when it has none)."""
        while True:
            try:
                opcode, payload = await self.receive_frame()
            except EOFError:
                raise AssertionError(
                    "the broker closed the TCP connection without a close frame"
                ) from None
            if opcode == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    async def aclose(self) -> None:
        """Close the TCP connection (a FIN, no WebSocket close handshake)."""
        await self.stream.aclose()

    async def abort(self) -> None:
        """Reset the TCP connection (SO_LINGER 0: an RST, no FIN, no close handshake)."""
        self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()


@asynccontextmanager
async def open_raw(port: int, *, receive_buffer: int | None = None) -> AsyncIterator[RawWebSocket]:
    """A :class:`RawWebSocket` to 127.0.0.1:*port* for the block; its socket closed on exit."""
    raw = await RawWebSocket.connect(port, receive_buffer=receive_buffer)
    try:
        yield raw
    finally:
        await raw.aclose()
