"""The client's credential: a fixed token, or a callable asked for a fresh one.

A callable token (``open_client(url, token=get_token)``) is asked at every connect, and again
shortly before the credential expires (``welcome.expires``): the connection sends it in a
``refresh`` frame, and never drops for an expired token while the callable gives good ones.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeAlias

import trio

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


def refresh_delay(expires: float, lifetime: float, now: float) -> float:
    """Seconds from *now* until a credential that expires at *expires* (UNIX time) and was
    good for *lifetime* seconds when given should be refreshed: a fifth of its lifetime,
    and at most :data:`REFRESH_AHEAD` seconds, before it expires."""
    ahead = min(REFRESH_AHEAD, max(lifetime, 0.0) / 5)
    return max(0.0, expires - ahead - now)


async def keep_refreshed(
    outbox: Outbox,
    source: Callable[[], str | Awaitable[str]],
    expires: float,
    *,
    url: str,
    refreshed: Callable[[float | None], None],
) -> None:
    """Send a fresh token from *source* before each expiry of the connection's credential,
    until it no longer expires (or the connection ends: cancel this then).

    *refreshed* is told each new expiry. A refresh that fails (the callable raised, or the
    broker refused the token) is logged and tried again after half the time left: the
    connection keeps its credential until it expires, and the broker then closes it
    (``auth_expired``), after which the client reconnects with a fresh token.
    """
    lifetime = expires - time.time()
    delay = refresh_delay(expires, lifetime, time.time())
    while True:
        await trio.sleep(delay)
        op: RefreshOp | None = None
        try:
            token = await fetch_token(source)
            assert token is not None
            op = RefreshOp(token)
            outbox.append(op)
            answer = await op.wait()
        except Exception as exc:  # noqa: BLE001 - the callable's failures too: try again later
            left = expires - time.time()
            delay = max(MIN_RETRY, left * RETRY_SHARE)
            logger.warning(
                "could not refresh the credential for %s (%s); it expires in %.0f s, "
                "trying again in %.0f s",
                url,
                exc,
                left,
                delay,
            )
            continue
        finally:
            if op is not None:
                op.abandoned = True  # (not to be sent on another connection)
        refreshed(answer.expires)
        if answer.expires is None:
            return
        now = time.time()
        lifetime, expires = answer.expires - now, answer.expires
        delay = refresh_delay(expires, lifetime, now)
