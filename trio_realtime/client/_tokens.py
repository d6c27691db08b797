"""The client's credential: a fixed token, or a callable asked for a fresh one.

A callable token (``open_client(url, token=get_token)``) is asked at every connect, and again
shortly before the credential expires (``welcome.expires``): the connection sends it in a
``refresh`` frame, and never drops for an expired token while the callable gives good ones.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeAlias

import trio

from .._errors import ConnectionClosed
from ._state import RefreshOp

if TYPE_CHECKING:
    from ._state import Outbox

__all__ = ["TokenSource", "fetch_token", "keep_refreshed", "refresh_delay"]

logger = logging.getLogger("trio_realtime.client")

#: What ``open_client(token=...)`` takes: a token, a function returning one, an async
#: function returning one, or None.
TokenSource: TypeAlias = str | Callable[[], str | Awaitable[str]] | None

#: At most this many seconds before the credential expires, a fresh one is sent.
REFRESH_AHEAD: Final = 30.0
#: After a refresh failed (the callable raised, or the broker refused the token): wait this
#: share of the time left before trying again.
RETRY_SHARE: Final = 0.5
#: Never try again sooner than this many seconds.
MIN_RETRY: Final = 1.0


async def fetch_token(source: TokenSource) -> str | None:
    """The token to send: *source* itself, or what it returns when called (awaited, if it
    returns an awaitable).

    Raises:
        TypeError: if the callable returned something other than a str.
        Exception: whatever the callable raised.
    """
    if source is None or isinstance(source, str):
        return source
    token = source()
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str):
        raise TypeError(f"the token callable must return a str, not {type(token).__name__}")
    return token


def refresh_delay(expires_in: float) -> float:
    """Seconds from now until a credential that expires in *expires_in* seconds should be
    refreshed: a fifth of that, and at most :data:`REFRESH_AHEAD` seconds, before it
    expires."""
    expires_in = max(expires_in, 0.0)
    return expires_in - min(REFRESH_AHEAD, expires_in / 5)


async def keep_refreshed(
    outbox: Outbox,
    source: Callable[[], str | Awaitable[str]],
    expires_in: float,
    *,
    url: str,
    timeout: float,
    refreshed: Callable[[str, float | None], None],
) -> None:
    """Send a fresh token from *source* before each expiry of the connection's credential
    (*expires_in* seconds from now), until it no longer expires (or the connection ends:
    cancel this then).

    *refreshed* is told each new token and its ``expires_in``. A refresh that fails (the
    callable raised, or took more than *timeout* seconds; the broker refused the token) is
    logged and tried again after half the time left: the connection keeps its credential
    until it expires, and the broker then closes it (``auth_expired``), after which the
    client reconnects with a fresh token. Times are on the Trio clock: the broker tells
    durations, so the two clocks need not agree.
    """
    now = trio.current_time()
    deadline = now + expires_in
    wake = now + refresh_delay(expires_in)
    while True:
        await trio.sleep_until(wake)
        op: RefreshOp | None = None
        try:
            with trio.fail_after(timeout):
                token = await fetch_token(source)
            assert token is not None
            op = RefreshOp(token)
            outbox.append(op)
            answer = await op.wait()
        except (ConnectionClosed, trio.ClosedResourceError):
            return  # the connection, or the client, is ending: nothing to refresh
        except Exception as exc:  # noqa: BLE001 - the callable's failures too: try again later
            now = trio.current_time()
            left = deadline - now
            wake = now + max(MIN_RETRY, left * RETRY_SHARE)
            logger.warning(
                "could not refresh the credential for %s (%s); it expires in %.0f s, "
                "trying again in %.0f s",
                url,
                exc if not isinstance(exc, trio.TooSlowError) else "the token callable timed out",
                left,
                wake - now,
            )
            continue
        finally:
            if op is not None:
                op.abandoned = True  # (not to be sent on another connection)
        refreshed(token, answer.expires_in)
        if answer.expires_in is None:
            return
        now = trio.current_time()
        deadline = now + answer.expires_in
        wake = now + refresh_delay(answer.expires_in)
