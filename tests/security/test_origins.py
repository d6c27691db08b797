"""Origin checks (issue 9, item 5): a web page the broker does not allow cannot connect.

A browser sends the page's ``Origin`` in the WebSocket handshake; the broker refuses one that
matches no allowed pattern with HTTP 403 before any frame, counts it and keeps serving the
others. Handshakes here are raw TCP (every byte of the answer is seen) or an independent
``websockets`` client with ``origin=``.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
from pathlib import Path
from typing import Final

import pytest
import trio
from _broker_process import open_broker_process
from conftest import TIMEOUT, running_broker
from test_interop import in_thread
from test_listener import read_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from trio_realtime import Broker, open_client
from trio_realtime._transport import LOCAL_ORIGINS, origin_pattern
from trio_realtime.security import Permissions, StaticUsers, User, token_sha256

EVIL: Final = "https://evil.example"


def handshake(origin: str | None) -> bytes:
    """A WebSocket upgrade request, with an ``Origin`` header unless *origin* is None."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET / HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def status_of(port: int, origin: str | None) -> bytes:
    """The broker's answer (its status line, without the reason) to a raw handshake from
    *origin*."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(handshake(origin))
        answer = await read_until(stream, b"\r\n\r\n")
    return answer.split(b"\r\n", 1)[0][:12]


def authenticated() -> StaticUsers:
    return StaticUsers(
        [
            User(
                name="alice",
                token_sha256=token_sha256("alice-token-0123456789"),
                permissions=Permissions.everything(),
            )
        ]
    )


async def test_a_cross_site_origin_is_refused_with_403_and_a_neighbour_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without auth, a page from https://evil.example gets HTTP 403 (counted, logged once),
    while a client already connected, and one that connects after, are served."""
    caplog.set_level(logging.DEBUG, logger="trio_realtime.broker")
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url) as neighbour,
            neighbour.subscribe("news") as sub,
        ):
            for _ in range(3):
                assert await status_of(served.port, EVIL) == b"HTTP/1.1 403"
            assert served.broker.statistics().errors["origin_refused"] == 3
            infos = [
                r for r in caplog.records if r.levelno == logging.INFO and "origin" in r.message
            ]
            assert len(infos) == 1
            assert "'https://evil.example'" in infos[0].message
            await neighbour.publish("news", 1)
            assert (await sub.receive()).data == 1
            async with open_client(served.url) as later:
                await later.publish("news", 2)
            assert (await sub.receive()).data == 2


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "http://localhost:3000",
        "http://localhost",
        "https://localhost:8443",
        "http://127.0.0.1:8000",
        "https://127.0.0.1",
        "http://[::1]:5173",
        "HTTP://LocalHost:3000",
    ],
)
async def test_without_auth_local_pages_and_programs_connect(origin: str | None) -> None:
    """The default without auth accepts pages from this machine, and handshakes without an
    Origin (programs, not browsers)."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as served:
            assert await status_of(served.port, origin) == b"HTTP/1.1 101"
            assert "origin_refused" not in served.broker.statistics().errors


@pytest.mark.parametrize(
    "origin",
    [
        EVIL,
        "null",
        "http://localhost.evil.example",
        "http://127.0.0.1.evil.example:80",
        "http://evil.example:3000/http://localhost",
        "file://",
    ],
)
async def test_without_auth_other_pages_are_refused(origin: str) -> None:
    """The default without auth refuses every other origin, including look-alikes."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as served:
            assert await status_of(served.port, origin) == b"HTTP/1.1 403"


async def test_with_auth_any_origin_connects() -> None:
    """With an authenticator (and no allowed_origins), any page may connect: the token
    decides."""
    with trio.fail_after(TIMEOUT):
        async with running_broker(auth=authenticated()) as served:
            assert served.broker.allowed_origins is None
            for origin in (EVIL, "null", "http://localhost:3000", None):
                assert await status_of(served.port, origin) == b"HTTP/1.1 101"


@pytest.mark.parametrize("auth", [None, authenticated()], ids=["no-auth", "auth"])
async def test_an_explicit_list_replaces_the_default(auth: StaticUsers | None) -> None:
    """allowed_origins=["https://*.example.com"] accepts only those pages (not localhost, nor
    another port), with auth or without; programs still connect."""
    with trio.fail_after(TIMEOUT):
        async with running_broker(auth=auth, allowed_origins=["https://*.example.com"]) as served:
            for origin in ("https://app.example.com", "https://A.B.EXAMPLE.COM", None):
                assert await status_of(served.port, origin) == b"HTTP/1.1 101", origin
            for origin in (
                "https://example.com",
                "https://app.example.com:8443",  # the port is part of the origin
                "http://app.example.com",
                "http://localhost:3000",
                EVIL,
            ):
                assert await status_of(served.port, origin) == b"HTTP/1.1 403", origin
            assert served.broker.statistics().errors["origin_refused"] == 5


async def test_an_empty_list_refuses_every_page() -> None:
    """allowed_origins=[]: no web page may connect; programs may."""
    with trio.fail_after(TIMEOUT):
        async with running_broker(allowed_origins=[]) as served:
            assert await status_of(served.port, "http://localhost:3000") == b"HTTP/1.1 403"
            assert await status_of(served.port, None) == b"HTTP/1.1 101"


async def test_an_independent_client_sees_the_refusal() -> None:
    """A `websockets` client with origin= is refused with 403 from evil.example, and welcomed
    from localhost."""

    def from_origin(url: str, origin: str) -> str:
        try:
            with connect(url, origin=Origin(origin), open_timeout=TIMEOUT) as ws:
                ws.send('{"type":"hello","protocol":1,"client":"origins"}')
                return str(ws.recv(timeout=TIMEOUT))
        except InvalidStatus as exc:
            return f"HTTP {exc.response.status_code}"

    with trio.fail_after(TIMEOUT):
        async with running_broker() as served:
            assert await in_thread(lambda: from_origin(served.url, EVIL)) == "HTTP 403"
            answer = await in_thread(lambda: from_origin(served.url, "http://localhost:3000"))
            assert '"welcome"' in answer


def test_patterns_are_globs_with_literal_brackets() -> None:
    """``*`` and ``?`` are the only wildcards (``[::1]`` is literal); case does not count."""
    pattern = origin_pattern(LOCAL_ORIGINS)
    assert pattern.fullmatch("http://[::1]:8080")
    assert not pattern.fullmatch("http://:")
    assert origin_pattern(["https://app?.example.com"]).fullmatch("HTTPS://APP1.EXAMPLE.COM")
    assert not origin_pattern(["https://app?.example.com"]).fullmatch("https://app12.example.com")


@pytest.mark.parametrize("bad", ["https://*.example.com", [""]])
def test_a_bad_list_is_refused(bad: object) -> None:
    """A string instead of a list, or an empty pattern, is a ValueError."""
    with pytest.raises(ValueError, match="origin"):
        Broker(allowed_origins=bad)  # type: ignore[arg-type]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_serve_takes_allow_origin_from_flags_and_the_config_file(tmp_path: Path) -> None:
    """``serve --allow-origin`` (repeatable) and ``allow_origin = [...]`` in [server] set the
    allowed pages, a flag over the file; the start line says which."""
    config = tmp_path / "broker.toml"
    config.write_text('[server]\nstore = "memory"\nallow_origin = ["https://*.example.com"]\n')
    with trio.fail_after(30):
        async with open_broker_process("--config", str(config)) as broker:
            await broker.wait_for_output(r"^origins: ")
            assert "origins: https://*.example.com\n" in broker.stdout()
            assert await status_of(broker.port, "https://app.example.com") == b"HTTP/1.1 101"
            assert await status_of(broker.port, "http://localhost:3000") == b"HTTP/1.1 403"
        async with open_broker_process(
            "--config",
            str(config),
            "--allow-origin",
            "http://localhost:*",
            "--allow-origin",
            "https://app.test",
        ) as broker:
            await broker.wait_for_output(r"^origins: ")
            assert "origins: http://localhost:*, https://app.test\n" in broker.stdout()
            assert await status_of(broker.port, "http://localhost:3000") == b"HTTP/1.1 101"
            assert await status_of(broker.port, "https://app.example.com") == b"HTTP/1.1 403"
        async with open_broker_process("--store", "memory") as broker:
            await broker.wait_for_output(r"^origins: ")
            assert "origins: web pages from this machine only" in broker.stdout()
