"""The ``trio-realtime`` command: serve, pub, sub, request, history."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from trio_realtime import Event
from trio_realtime._cli import main, open_store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class ServeProcess:
    """``python -m trio_realtime serve`` as a child process on 127.0.0.1, port 0."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trio_realtime", "serve", "--port", "0", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            text=True,
        )
        assert self.process.stdout is not None
        self.banner = [self.process.stdout.readline(), self.process.stdout.readline()]
        assert "listening on" in self.banner[0], self.banner
        self.url = self.banner[0].split("listening on ", 1)[1].strip()

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Send *sig* and return the exit status and what it wrote to stderr."""
        self.process.send_signal(sig)
        _, err = self.process.communicate(timeout=20)
        return self.process.returncode, err


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ServeProcess]:
    """A broker with an in-memory store."""
    server = ServeProcess("--store", "memory", cwd=tmp_path)
    yield server
    if server.process.poll() is None:
        server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in process; return its exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_serve_defaults_to_a_sqlite_file_here_and_exits_0_on_ctrl_c(tmp_path: Path) -> None:
    """serve stores in ./trio-realtime.db by default, says so, and exits 0 on SIGINT."""
    server = ServeProcess(cwd=tmp_path)
    assert "store: sqlite:trio-realtime.db" in server.banner[1]
    assert server.url.startswith("ws://127.0.0.1:")
    code, err = server.stop(signal.SIGINT)
    assert code == 0, err
    assert (tmp_path / "trio-realtime.db").exists()


def test_serve_exits_0_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM stops the broker cleanly too."""
    server = ServeProcess("--store", "none", cwd=tmp_path)
    assert "not stored" in server.banner[1]
    assert server.stop(signal.SIGTERM)[0] == 0


def test_serve_store_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """serve accepts --synchronous and retention options and stores with them."""
    server = ServeProcess(
        "--store", "sqlite:full.db", "--synchronous", "full", "--max-events", "2", cwd=tmp_path
    )
    try:
        assert run(capsys, "pub", server.url, "r.x", "1")[0] == 0
    finally:
        assert server.stop()[0] == 0


async def test_open_store_applies_the_options(tmp_path: Path) -> None:
    """--store specs build the right store, with retention and durability options."""
    assert open_store("none") is None
    memory = open_store("memory", max_events=2)
    sqlite = open_store(f"sqlite:{tmp_path / 'x.db'}", synchronous="full", max_events=2)
    for store in (memory, sqlite):
        assert store is not None
        async with store:
            await store.append([Event(topic="r.x", data=i) for i in range(3)])
            await store.apply_retention()
            assert [e.data for e in await store.read("r.x")] == [1, 2]


def test_serve_refuses_a_corrupt_database_with_one_line(tmp_path: Path) -> None:
    """A corrupt database file fails the start with one clear line naming the file."""
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    done = subprocess.run(
        [sys.executable, "-m", "trio_realtime", "serve", "--port", "0", "--store", f"sqlite:{bad}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(bad) in lines[0]
    assert "not a SQLite database" in lines[0]


def test_pub_sub_history_and_request(
    broker: ServeProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """pub acks with a seq, history prints stored events, sub replays them as JSON lines."""
    code, out, _ = run(capsys, "pub", broker.url, "orders.created", '{"id": 1}')
    assert code == 0
    assert "on orders.created seq 1" in out
    code, out, _ = run(capsys, "pub", broker.url, "orders.created", "2", "--header", "k=v")
    assert code == 0

    code, out, _ = run(capsys, "history", broker.url, "orders.>")
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [(e["seq"], e["data"]) for e in lines] == [(1, {"id": 1}), (2, 2)]
    assert lines[1]["headers"] == {"k": "v"}
    code, out, _ = run(capsys, "history", broker.url, "orders.>", "--since", "1", "--pretty")
    assert "orders.created #2" in out

    code, out, _ = run(capsys, "sub", broker.url, "orders.*", "--since", "0", "--count", "2")
    assert code == 0
    assert [orjson.loads(line)["data"] for line in out.splitlines()] == [{"id": 1}, 2]
    code, out, _ = run(
        capsys, "sub", broker.url, "orders.*", "--since", "1", "--count", "1", "--pretty"
    )
    assert "orders.created #2" in out

    code, _, err = run(capsys, "request", broker.url, "svc.nobody", "1")
    assert code == 1
    assert err.count("\n") == 1
    assert "no responders" in err


def test_request_gets_the_reply(broker: ServeProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """request prints the reply's data; a silent responder times out with one line."""
    import trio

    from trio_realtime.client._client import open_client

    ready = threading.Event()
    stop = threading.Event()

    async def responder() -> None:
        async with (
            open_client(broker.url, name="responder") as client,
            client.serve("svc.double", lambda e: e.data * 2),
            client.subscribe("svc.silent"),
        ):
            ready.set()
            while not stop.is_set():
                await trio.to_thread.run_sync(stop.wait, 0.5)

    thread = threading.Thread(target=trio.run, args=(responder,))
    thread.start()
    try:
        assert ready.wait(20)
        code, out, _ = run(capsys, "request", broker.url, "svc.double", "21")
        assert (code, out) == (0, "42\n")
        code, _, err = run(capsys, "request", broker.url, "svc.silent", "--timeout", "0.2")
        assert code == 1
        assert "no reply within the timeout" in err
    finally:
        stop.set()
        thread.join(20)


def test_bad_input_is_one_line_and_status_1(
    broker: ServeProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad JSON, bad topics, bad headers, unreachable brokers: one line, exit status 1."""
    for argv, expected in [
        (("pub", broker.url, "a.b", "{bad", "--json"), "not valid JSON"),
        (("pub", broker.url, "a..b", "1"), "invalid topic"),
        (("pub", broker.url, "a.b", "1", "--header", "novalue"), "NAME=VALUE"),
        (("pub", "ws://127.0.0.1:1", "a.b"), "127.0.0.1:1"),
        (("history", broker.url, "a.>.b"), "invalid topic"),
    ]:
        code, _, err = run(capsys, *argv)
        assert code == 1, argv
        assert err.count("\n") == 1, err
        assert expected in err, (argv, err)


def test_bad_store_option(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --store value is refused with one line."""
    code, _, err = run(capsys, "serve", "--port", "0", "--store", "postgres:x")
    assert code == 1
    assert "sqlite:PATH, memory, jetstream[:STREAM] or none" in err


def test_serve_prints_its_limits_from_the_options(tmp_path: Path) -> None:
    """Issue 7: serve takes the limit options and prints the limits in force at start."""
    server = ServeProcess(
        "--store",
        "memory",
        "--max-connections",
        "7",
        "--max-subscriptions",
        "5",
        "--max-retained",
        "9",
        "--max-message-size",
        "64K",
        "--max-pending-bytes",
        "2M",
        "--slow-consumer",
        "disconnect",
        "--handshake-timeout",
        "2.5",
        cwd=tmp_path,
    )
    try:
        assert server.banner[1].startswith("store: memory (keeps 100000 events, 268435456 bytes)")
        assert server.process.stdout is not None
        limits = server.process.stdout.readline()
    finally:
        assert server.stop()[0] == 0
    assert limits.startswith("limits: max_connections=7 (file descriptors: ")
    for shown in (
        "max_subscriptions=5",
        "max_retained=9",
        f"max_message_size={64 * 1024}",
        f"max_pending_bytes={2 * 1024 * 1024}",
        "slow_consumer=disconnect",
        "handshake_timeout=2.5s",
    ):
        assert shown in limits


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--max-connections", "0"], "must be positive"),
        (["--max-pending-bytes", "lots"], "not a size"),
        (["--heartbeat", "-1"], "must be positive"),
        (["--max-message-size", "100"], "max_message_size must be at least 512"),
        (["--max-message-size", "32M"], "max_pending_bytes"),
    ],
)
def test_serve_refuses_bad_limits(
    capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    """A bad limit is one line on stderr and a non-zero status, before anything starts."""
    code, _, err = run(capsys, "serve", "--store", "none", "--port", "0", *argv)
    assert code != 0
    assert complaint in err
