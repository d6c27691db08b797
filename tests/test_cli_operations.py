"""``trio-realtime serve`` for operators: the HTTP side port and the broker's logs as events."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import pytest
import trio
from conftest import TIMEOUT
from test_cli import ServeProcess

from trio_realtime import open_client
from trio_realtime.security import ConfigError, load_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def line_starting(server: ServeProcess, prefix: str) -> str:
    """Read the broker's start-up lines up to the one starting with *prefix*."""
    assert server.process.stdout is not None
    seen = []
    for _ in range(20):
        line = server.process.stdout.readline()
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no {prefix!r} line in {seen}")


def http_url(server: ServeProcess) -> str:
    return line_starting(server, "http: ").split()[1]


def test_serve_http_port_answers_metrics_and_readiness(tmp_path: Path) -> None:
    """--http-port 0 serves /metrics, /healthz and /readyz, and says where."""
    server = ServeProcess("--store", "memory", "--http-port", "0", cwd=tmp_path)
    try:
        url = http_url(server)
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/readyz", timeout=TIMEOUT) as response:
            assert (response.status, response.read()) == (200, b"ready\n")
        with urllib.request.urlopen(f"{url}/metrics", timeout=TIMEOUT) as response:
            assert b"trio_realtime_connections " in response.read()
        with urllib.request.urlopen(f"{url}/config.json", timeout=TIMEOUT) as response:
            assert server.url in response.read().decode()  # (the dashboard's broker)
    finally:
        assert server.stop()[0] == 0


def test_the_http_port_from_the_config_file(tmp_path: Path) -> None:
    """[http] port = 0 in the config file is --http-port 0; [server] http_port is the same
    and giving both is an error naming the key."""
    config = tmp_path / "broker.toml"
    config.write_text('[http]\nport = 0\nhost = "127.0.0.1"\n')
    server = ServeProcess("--store", "none", "--config", str(config), cwd=tmp_path)
    try:
        assert http_url(server).startswith("http://127.0.0.1:")
    finally:
        server.stop()
    config.write_text("[server]\nhttp_port = 1\n[http]\nport = 0\n")
    with pytest.raises(ConfigError, match=r"http\.port: given twice"):
        load_config(config)


async def test_log_events_publishes_the_broker_s_log(tmp_path: Path) -> None:
    """--log-events publishes the broker's own log records: a client connecting is an INFO
    line, which a subscriber to log.> receives as an event."""
    server = ServeProcess("--store", "none", "--log-events", "-v", cwd=tmp_path)
    try:
        line_starting(server, "log events: ")
        with trio.fail_after(TIMEOUT):
            async with (
                open_client(server.url, name="watcher") as watcher,
                watcher.subscribe("log.>") as logs,
            ):
                async with open_client(server.url, name="newcomer"):
                    pass
                while True:
                    event = await logs.receive()
                    if (
                        "newcomer" in event.data["message"]
                        and "connected" in (event.data["message"])
                    ):
                        break
                assert event.topic == "log.info.trio_realtime.broker"
                assert event.data["logger"] == "trio_realtime.broker"
    finally:
        server.stop()


async def test_json_logs_carry_the_connection_s_context(tmp_path: Path) -> None:
    """With --log-format json, the broker's connection lines are JSON objects whose fields
    name the session, the client and its address (the records' extras)."""
    import json

    from test_interop import in_thread

    server = ServeProcess("--store", "none", "--log-format", "json", "-v", cwd=tmp_path)
    try:
        with trio.fail_after(TIMEOUT):
            async with open_client(server.url, name="jsonclient"):
                pass

            def connected_line() -> dict[str, object]:
                assert server.process.stderr is not None
                while True:
                    line = server.process.stderr.readline()
                    assert line, "the broker's log ended without the line"
                    record = json.loads(line)
                    if "connected from" in record["message"]:
                        return record  # type: ignore[no-any-return]

            record = await in_thread(connected_line)
        assert record["client"] == "jsonclient"
        assert record["logger"] == "trio_realtime.broker"
        assert isinstance(record["session"], str)
        assert record["session"]
        assert str(record["address"]).startswith("127.0.0.1:")
        assert "user" in record
    finally:
        server.stop()
