"""Issue 11: the ``trio-realtime`` command as scripts use it, each run as a real process.

Exit statuses, a closed stdout, interrupts, the default URL, data from stdin and files,
repeated publishes, ``reply``, ``bench``, ``stats``, reconnect messages, port checks and
global options anywhere. Every wait on a process has a timeout; nothing sleeps to
synchronise (a process says on stderr, at ``-v``, when it is subscribed).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
from test_cli import ServeProcess

from trio_realtime._logformat import JSONFormatter

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

#: Seconds any one process may take.
TIMEOUT = 30


def cli(
    *argv: str, stdin: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m trio_realtime ARGV`` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "trio_realtime", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def start(*argv: str) -> subprocess.Popen[str]:
    """Start ``python -m trio_realtime ARGV`` with its stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "trio_realtime", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_until(stream: object, needle: str) -> list[str]:
    """The lines of *stream* up to the first that holds *needle* (fails at end of file)."""
    lines: list[str] = []
    while True:
        line = stream.readline()  # type: ignore[attr-defined]
        assert line, f"ended before {needle!r}: {lines}"
        lines.append(line)
        if needle in line:
            return lines


def stop(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[int, str, str]:
    process.send_signal(sig)
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, err


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ServeProcess]:
    """A broker with an in-memory store."""
    server = ServeProcess("--store", "memory", cwd=tmp_path)
    yield server
    if server.process.poll() is None:
        server.stop()


def data_of(url: str, pattern: str) -> list[object]:
    done = cli("history", url, pattern)
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line)["data"] for line in done.stdout.splitlines()]


def test_version() -> None:
    """--version prints the package's version and exits 0."""
    import trio_realtime

    done = cli("--version")
    assert (done.returncode, done.stdout) == (0, f"trio-realtime {trio_realtime.__version__}\n")


def test_global_options_before_or_after_the_command(broker: ServeProcess) -> None:
    """--log-level (any case), -v/-q and --log-format work before or after the command."""
    for argv in (
        ["-v", "sub", broker.url, "a.b", "--count", "0"],
        ["sub", broker.url, "a.b", "--count", "0", "--log-level", "INFO"],
        ["--log-level", "Error", "sub", broker.url, "a.b", "--count", "0", "-vv"],
    ):
        done = cli(*argv)
        assert done.returncode == 0, (argv, done.stderr)
        assert "INFO trio_realtime.cli: subscribed to a.b" in done.stderr, argv
    quiet = cli("sub", broker.url, "a.b", "--count", "0", "-v", "-q")
    assert (quiet.returncode, quiet.stderr) == (0, "")

    done = cli("sub", broker.url, "a.b", "--count", "0", "-v", "--log-format", "json")
    records = [orjson.loads(line) for line in done.stderr.splitlines()]
    mine = [r for r in records if r["logger"] == "trio_realtime.cli"]
    assert mine[0]["message"].startswith("subscribed to a.b")
    assert mine[0]["level"] == "INFO"
    assert {"time", "level", "logger", "message"} <= set(mine[0])


def test_json_log_lines_carry_the_record_context() -> None:
    """--log-format json: the extras of a record (session, user, topic) are keys of its line."""
    record = logging.LogRecord(
        "trio_realtime.broker", logging.INFO, "x.py", 1, "hi %s", ("x",), None
    )
    record.session = "s1"
    record.user = "alice"
    record.topic = "orders.new"
    line = orjson.loads(JSONFormatter().format(record))
    assert line["message"] == "hi x"
    assert (line["session"], line["user"], line["topic"]) == ("s1", "alice", "orders.new")
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in orjson.loads(JSONFormatter().format(record))["exception"]


def test_usage_errors_exit_2(broker: ServeProcess) -> None:
    """A usage error is argparse's message and status 2."""
    for argv in (
        ["pub"],
        ["pub", "a", "b", "c"],
        ["sub", broker.url, "a", "--count", "-1"],
        ["reply", broker.url, "svc.x"],
        ["reply", broker.url, "svc.x", "--echo", "cat"],
        ["serve", "--port", "70000"],
        ["serve", "--port", "-1"],
        ["nonsense"],
    ):
        done = cli(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert "usage:" in done.stderr


def test_the_url_defaults_to_the_environment(broker: ServeProcess, tmp_path: Path) -> None:
    """Without a URL, client commands use $TRIO_REALTIME_URL (else ws://127.0.0.1:8765)."""
    env = {"TRIO_REALTIME_URL": broker.url}
    assert cli("pub", "env.x", "hello", env=env).returncode == 0
    assert cli("pub", "env.x", "--count", "2", "7", env=env).returncode == 0
    assert data_of(broker.url, "env.x") == ["hello", 7, 7]
    unset = {k: v for k, v in os.environ.items() if k != "TRIO_REALTIME_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "trio_realtime", "history", "env.x"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=unset,
        cwd=tmp_path,
    )
    if done.returncode:  # no broker on the default port, as is usual here
        assert "127.0.0.1:8765" in done.stderr


def test_pub_data_plain_json_stdin_and_file(broker: ServeProcess, tmp_path: Path) -> None:
    """pub: a string unless it is JSON (--json insists, --string declines), stdin, --file."""
    url = broker.url
    assert cli("pub", url, "d.x", "hello").returncode == 0
    assert cli("pub", url, "d.x", '{"a": 1}').returncode == 0
    assert cli("pub", url, "d.x", "42", "--string").returncode == 0
    assert cli("pub", url, "d.x", "-", stdin="line from stdin\n").returncode == 0
    assert cli("pub", url, "d.x", "-", "--json", stdin='{"b": 2}\n').returncode == 0
    (tmp_path / "data.json").write_text("[1, 2]")
    assert cli("pub", url, "d.x", "--file", str(tmp_path / "data.json")).returncode == 0
    assert data_of(url, "d.x") == ["hello", {"a": 1}, "42", "line from stdin", {"b": 2}, [1, 2]]

    bad = cli("pub", url, "d.x", "hello", "--json")
    assert bad.returncode == 1
    assert "not valid JSON" in bad.stderr
    missing = cli("pub", url, "d.x", "--file", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr


def test_pub_count_and_interval(broker: ServeProcess) -> None:
    """--count N publishes N events (one line each); --interval spaces them."""
    done = cli("pub", broker.url, "c.x", "1", "--count", "3", "--interval", "0.01")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3
    assert data_of(broker.url, "c.x") == [1, 1, 1]


def test_a_closed_stdout_ends_quietly_with_0(broker: ServeProcess) -> None:
    """Issue 11: `sub … | head -1` exits 0 and prints no error (not 'Broken pipe', status 1)."""
    assert cli("pub", broker.url, "p.x", "y" * 1000, "--count", "200").returncode == 0
    process = start("sub", broker.url, "p.x", "--since", "0")
    assert process.stdout is not None
    assert process.stdout.readline().startswith("{")
    process.stdout.close()  # the reader goes away, with 200 KB still to write
    assert process.wait(TIMEOUT) == 0
    assert process.stderr is not None
    with process.stderr:
        assert process.stderr.read() == ""


def test_sub_count_0_prints_nothing(broker: ServeProcess) -> None:
    """sub --count 0 subscribes, prints nothing and exits 0, even with stored events."""
    assert cli("pub", broker.url, "z.x", "1").returncode == 0
    done = cli("sub", broker.url, "z.x", "--since", "0", "--count", "0")
    assert (done.returncode, done.stdout) == (0, "")


@pytest.mark.parametrize("command", ["sub", "reply"])
def test_ctrl_c_exits_130(broker: ServeProcess, command: str) -> None:
    """Issue 11: an interrupted sub or reply exits 130 (not 0), promptly."""
    argv = [command, broker.url, "i.x", "-v", *(["--echo"] if command == "reply" else [])]
    process = start(*argv)
    read_until(process.stderr, "i.x")
    code, _, err = stop(process, signal.SIGINT)
    assert code == 130, err


def test_sub_says_when_it_loses_and_regains_the_broker(tmp_path: Path) -> None:
    """Issue 11: sub says on stderr that it lost the broker, and that it has it back."""
    first = ServeProcess("--store", "memory", cwd=tmp_path)
    port = first.url.rsplit(":", 1)[1]
    process = start("sub", first.url, "r.x", "-v")
    try:
        read_until(process.stderr, "subscribed to r.x")
        assert first.stop()[0] == 0
        read_until(process.stderr, f"lost the connection to {first.url}; reconnecting")
        second = ServeProcess("--store", "memory", "--port", port, cwd=tmp_path)
        try:
            read_until(process.stderr, f"connected to {first.url} again")
            assert cli("pub", second.url, "r.x", "back").returncode == 0
            assert process.stdout is not None
            assert orjson.loads(process.stdout.readline())["data"] == "back"
        finally:
            second.stop()
    finally:
        if process.poll() is None:
            stop(process)


def test_reply_echo_and_command(broker: ServeProcess) -> None:
    """reply --echo answers with the data; reply COMMAND with what it prints; a failing
    command fails the request with its stderr; --group shares the requests."""
    echo = start("reply", broker.url, "svc.echo", "--echo", "--group", "g", "-v")
    upper = start("reply", broker.url, "svc.upper", "-v", "--", "tr", "a-z", "A-Z")
    fail = start("reply", broker.url, "svc.fail", "-v", "--", "sh", "-c", "echo nope >&2; exit 3")
    try:
        for process, pattern in ((echo, "svc.echo"), (upper, "svc.upper"), (fail, "svc.fail")):
            read_until(process.stderr, f"answering requests on {pattern}")
        done = cli("request", broker.url, "svc.echo", '{"a": 1}')
        assert (done.returncode, done.stdout) == (0, '{"a":1}\n')
        done = cli("request", broker.url, "svc.upper", "hello", "--raw")
        assert (done.returncode, done.stdout) == (0, "HELLO\n")
        done = cli("request", broker.url, "svc.upper", "-", stdin="[1]")
        assert (done.returncode, done.stdout) == (0, "[1]\n")
        done = cli("request", broker.url, "svc.fail", "x")
        assert done.returncode == 1
        assert "nope (exit status 3)" in done.stderr
    finally:
        for process in (echo, upper, fail):
            assert stop(process)[0] == 130


def test_bench_prints_rates_and_latency_percentiles(broker: ServeProcess) -> None:
    """bench: publishers, subscribers, size and count, ack on or off; rates and latencies."""
    done = cli("bench", broker.url, "--pub", "2", "--sub", "2", "--msgs", "200", "--size", "64")
    assert done.returncode == 0, done.stderr
    assert "pub stats:" in done.stdout
    assert "sub stats:" in done.stdout
    assert "latency (publish to delivery): min" in done.stdout
    assert "p99" in done.stdout
    assert "lost" not in done.stdout
    assert done.stderr == ""  # no progress bar: stderr is not a terminal

    done = cli("bench", broker.url, "--msgs", "50", "--sub", "1", "--ack", "--json")
    figures = orjson.loads(done.stdout.splitlines()[-1])
    assert figures["pub"]["msgs"] == figures["sub"]["msgs"] == 50
    assert set(figures["ack_latency"]) == {"min", "p50", "p90", "p99", "p99.9", "max"}


@pytest.fixture
def fast_stats_broker() -> Iterator[str]:
    """A broker (in a thread) that publishes $sys.stats every 50 ms; yields its URL."""
    import trio

    from trio_realtime import Broker

    url: list[str] = []
    ready = threading.Event()
    stop_event = threading.Event()

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(Broker(stats_interval=0.05).serve, "127.0.0.1", 0)
            url.append(server.url)
            ready.set()
            await trio.to_thread.run_sync(stop_event.wait)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(serve,))
    thread.start()
    try:
        assert ready.wait(TIMEOUT)
        yield url[0]
    finally:
        stop_event.set()
        thread.join(TIMEOUT)


def test_stats_shows_the_brokers_figures(fast_stats_broker: str) -> None:
    """stats --json prints one object per $sys.stats update, with rates from the second on;
    without --json (not a terminal), a block of figures per update."""
    done = cli("stats", fast_stats_broker, "--json", "--count", "2")
    assert done.returncode == 0, done.stderr
    first, second = (orjson.loads(line) for line in done.stdout.splitlines())
    assert first["connections"] >= 1
    assert first["per_second"] == {}
    assert set(second["per_second"]) >= {"events_in", "events_out"}
    done = cli("stats", fast_stats_broker, "--count", "1")
    assert done.returncode == 0, done.stderr
    assert "connections" in done.stdout
    assert "events out" in done.stdout


def test_a_port_in_use_leaves_no_database_behind(tmp_path: Path) -> None:
    """Issue 11: serve on a port in use fails with one line, before creating the store file."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("serve", "--port", str(port), cwd=tmp_path)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_usage_shows_in_the_generated_reference() -> None:
    """The docs' CLI reference renders every command's --help (see docs/conf.py)."""
    from trio_realtime.cli._main import command_parsers, parser

    names: Sequence[str] = list(command_parsers(parser()))
    assert {"serve", "pub", "sub", "request", "reply", "history", "bench", "stats"} <= set(names)
