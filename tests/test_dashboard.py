"""The live dashboard on the HTTP side port: its files over HTTP, and the page itself run in
a real headless Chromium, driven over the Chrome DevTools Protocol.

The browser is Debian's ``chromium`` (``.ci/run`` installs it); without it the browser tests
skip. The DevTools connection uses the `websockets` library's blocking client in a worker
thread: neither the browser nor its driver is code under test.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest
import trio
from conftest import TIMEOUT, running_broker
from test_http import get
from test_interop import in_thread
from websockets.sync.client import ClientConnection, connect

from trio_realtime import HttpServer, open_client
from trio_realtime.security import Permissions, StaticUsers, User, token_sha256

#: Hang guard (seconds) for a test that starts a browser: its start-up is slow on a busy machine.
BROWSER_TIMEOUT: Final = 60
#: Real seconds between two looks at the page (polling a browser, not ordering tasks).
POLL: Final = 0.05
#: What the page shows (nothing while it loads).
PAGE_TEXT: Final = "document.body ? document.body.innerText : ''"
#: Whether the page has drawn its chart of rates (one line for events in, one for out).
CHART_DRAWN: Final = "document.querySelectorAll('#chart polyline').length === 2"
TOKEN: Final = "dashboard-user-token-0123456789"


class DevTools:
    """One page of a browser, driven over its DevTools WebSocket (blocking calls)."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = 0
        self._session: str | None = None

    def call(self, method: str, **params: Any) -> Any:
        """Send one command (to the attached page, once attached) and return its result."""
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        while True:
            answer = json.loads(self._ws.recv(timeout=TIMEOUT))
            if answer.get("id") == self._ids:  # (events and other answers are skipped)
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def attach_to_page(self) -> None:
        """Drive the browser's first page from now on."""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        self._session = self.call("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript *expression* in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@asynccontextmanager
async def open_browser(tmp: Path) -> AsyncIterator[tuple[DevTools, trio.Nursery]]:
    """A headless Chromium on about:blank (its profile in *tmp*), and its page's DevTools, with
    a nursery for the test's servers; skips without Chromium."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("headless Chromium not installed: apt-get install chromium")
    stderr = tmp / "stderr"
    with stderr.open("wb") as err:
        # (stderr goes to a file, so that a browser that talks a lot never blocks on a pipe)
        process = await trio.lowlevel.open_process(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={tmp / 'profile'}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # (its helper processes too are ended at the end)
        )
    try:
        while not (
            found := re.search(
                r"DevTools listening on (ws://\S+)", stderr.read_text(errors="replace")
            )
        ):
            if process.poll() is not None:
                raise RuntimeError(f"chromium exited: {stderr.read_text(errors='replace')}")
            await trio.sleep(POLL)
        ws = await in_thread(functools.partial(connect, found[1], max_size=None))
        with ws:
            devtools = DevTools(ws)
            await in_thread(devtools.attach_to_page)
            async with trio.open_nursery() as nursery:
                yield devtools, nursery
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(5):
                await process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def page_text(devtools: DevTools) -> str:
    """What the page shows now (its body's rendered text)."""
    text: str = await in_thread(lambda: devtools.evaluate(PAGE_TEXT))
    return text


async def wait_for_text(devtools: DevTools, *wanted: str) -> str:
    """The page's text once it shows every one of *wanted* (polled)."""
    while True:
        text = await page_text(devtools)
        if all(w in text for w in wanted):
            return text
        await trio.sleep(POLL)


async def wait_until(devtools: DevTools, expression: str) -> None:
    """Return once the JavaScript *expression* is true in the page (polled)."""
    while True:
        if await in_thread(lambda: devtools.evaluate(expression)):
            return
        await trio.sleep(POLL)


async def start_tail(devtools: DevTools, pattern: str) -> None:
    """Type *pattern* in the live tail's box and submit it, as a viewer would."""
    script = (
        f"document.getElementById('tail-pattern').value = {json.dumps(pattern)};"
        "document.getElementById('tail-form').requestSubmit();"
    )
    await in_thread(lambda: devtools.evaluate(script))
    await wait_for_text(devtools, f"Tailing {pattern}")


async def test_dashboard_files_are_served_with_their_types() -> None:
    """/ is the dashboard's page, its script and style sheet come with their content types,
    and /config.json gives the page the broker's WebSocket URL."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as served, trio.open_nursery() as nursery:
            start = functools.partial(served.broker.serve_http, ws_url=served.url)
            http: HttpServer = await nursery.start(start, "127.0.0.1", 0)
            status, kind, page = await in_thread(lambda: get(f"{http.url}/"))
            assert (status, kind) == (200, "text/html; charset=utf-8")
            assert 'src="app.js"' in page
            assert 'href="style.css"' in page
            assert "http://" not in page.replace("http://www.w3.org", "")  # (nothing remote)
            status, kind, script = await in_thread(lambda: get(f"{http.url}/app.js"))
            assert (status, kind) == (200, "text/javascript; charset=utf-8")
            assert '"$sys.stats"' in script
            status, kind, _ = await in_thread(lambda: get(f"{http.url}/style.css"))
            assert (status, kind) == (200, "text/css; charset=utf-8")
            status, kind, config = await in_thread(lambda: get(f"{http.url}/config.json"))
            assert (status, kind) == (200, "application/json")
            assert json.loads(config) == {"ws": served.url}
            nursery.cancel_scope.cancel()


async def test_dashboard_shows_stats_and_tails_a_pattern_in_a_browser(tmp_path: Path) -> None:
    """In a real browser, the page connects to the broker, shows the connection count from
    $sys.stats, and tails the pattern typed in: matching events newest on top, with their
    data, counted by topic, and nothing else."""
    with trio.fail_after(BROWSER_TIMEOUT):
        async with (
            running_broker(stats_interval=0.2) as served,
            open_browser(tmp_path) as (devtools, nursery),
        ):
            start = functools.partial(served.broker.serve_http, ws_url=served.url)
            http: HttpServer = await nursery.start(start, "127.0.0.1", 0)
            await in_thread(lambda: devtools.call("Page.navigate", url=f"{http.url}/"))
            await wait_for_text(devtools, "connected to")
            await start_tail(devtools, "dash.>")
            async with open_client(served.url) as client:
                await client.publish("dash.one", {"n": 1})
                await client.publish("other.topic", {"n": 0})
                await client.publish("dash.two", {"n": 2})
                await client.publish("dash.two", "second")
                text = await wait_for_text(devtools, '"second"', '{"n":1}')
                while not re.search(r"^Connections\s+2$", text, re.MULTILINE):
                    await trio.sleep(POLL)
                    text = await page_text(devtools)
            assert "other.topic" not in text
            assert re.search(r"\d dash\.two \{\"n\":2\}$", text, re.MULTILINE)  # (time first)
            await wait_until(devtools, CHART_DRAWN)
            tail = text[text.index("Tailing dash.>") : text.index("Busiest topics")]
            assert tail.index('"second"') < tail.index('{"n":2}') < tail.index('{"n":1}')
            busiest = text[text.index("Busiest topics") :]
            assert re.search(r"dash\.two\s+2\s+dash\.one\s+1", busiest)


async def test_dashboard_sends_the_token_to_a_broker_that_authenticates(
    tmp_path: Path,
) -> None:
    """With ?token= and ?ws=, the page authenticates and shows the broker's user for it."""
    auth = StaticUsers([User("alice", token_sha256(TOKEN), Permissions.everything())])
    with trio.fail_after(BROWSER_TIMEOUT):
        async with (
            running_broker(auth=auth, stats_interval=0.2) as served,
            open_browser(tmp_path) as (devtools, nursery),
        ):
            http: HttpServer = await nursery.start(served.broker.serve_http, "127.0.0.1", 0)
            url = f"{http.url}/?ws={served.url}&token={TOKEN}"
            await in_thread(lambda: devtools.call("Page.navigate", url=url))
            text = await wait_for_text(devtools, "user alice")
            assert "connected to" in text
