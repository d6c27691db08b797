"""What keeps a client connected: the connection loop, and the state that outlives each
connection.

:class:`Connector` is the base of :class:`~trio_realtime.Client`, which puts the
:class:`~trio_realtime.EventChannel` API on it. It connects (a token, the transport, the
``hello``/``welcome`` handshake), runs one :class:`~trio_realtime.client._link.Link` at a
time and, when that is lost, goes round the brokers (see :mod:`trio_realtime._nodes`) with
exponential backoff, re-creating every subscription on the new connection and requeueing what
the old one had in flight, until it closes for good. What outlives each connection is kept
here: the subscriptions to re-create, the outbox, the requests waiting for their replies.
"""

from __future__ import annotations

import logging
import math
import secrets
import ssl
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, Final, TypeVar

import trio

from .._errors import ConnectionClosed, EpochChanged
from .._nodes import MAX_NODES, MAX_URL_LENGTH, Nodes
from .._transport import CLOSE_TIMEOUT
from .._transport_client import open_transport
from ..bus._requests import Answering, ReplyInbox
from ..protocol import AUTH_EXPIRED, Publish, Welcome
from ._link import ClientCounters, Link, LinkContext, handshake, refused_as_too_big
from ._oversized import Prober, skip_oversized
from ._state import (
    ClientState,
    HistoryQuery,
    Outbox,
    Pending,
    PublishAck,
    RemoteSub,
    RequestPending,
    backoff_delay,
    is_fatal,
)
from ._tokens import TokenSource, fetch_token, keep_refreshed

__all__ = ["Connector"]

logger = logging.getLogger("trio_realtime.client")

T = TypeVar("T")

#: Seconds leaving a subscription's block waits for the broker's ``unsubscribed``.
UNSUBSCRIBE_TIMEOUT: Final = 5.0
#: The default ``source`` of the events a client publishes, when it has no name.
DEFAULT_SOURCE: Final = "trio-realtime"


class Connector:
    """A client's connection loop and the state that outlives each connection (see the
    module's docstring). Made only as a :class:`~trio_realtime.Client`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        urls: Sequence[str],
        *,
        discover: bool,
        token: TokenSource,
        name: str | None,
        reconnect: bool,
        connect_timeout: float,
        max_outbox: int,
        backoff_initial: float,
        backoff_max: float,
        max_message_size: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._nursery = nursery
        self._nodes = Nodes(urls)
        self._discover = discover
        self.url: str = self._nodes.given[0]
        self.name: Final = name
        self.instance: Final = secrets.token_hex(16)
        self._token = token
        #: The token sent on the last connect.
        self._last_token: str | None = token if isinstance(token, str) else None
        self._source = name or DEFAULT_SOURCE
        self._reconnect = reconnect
        self._connect_timeout = connect_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_message_size = max_message_size
        self._ssl_context = ssl_context
        self.session: str | None = None
        self.epoch: str | None = None
        self.user: str | None = None
        self.expires: float | None = None
        self.broker: str | None = None
        self._state = ClientState.CONNECTING
        self._state_changed = trio.Event()
        self._closed_reason: ConnectionClosed | None = None
        self._run_scope = trio.CancelScope()  # the connection loop's, for aclose()
        self._run_done = trio.Event()
        self._link: Link | None = None
        self._outbox = Outbox(max_outbox)
        #: Every live subscription (and the inbox), in the order they were made.
        self._subs: dict[RemoteSub, None] = {}
        self._inbox: RemoteSub | None = None
        self._replies: ReplyInbox[RequestPending] = ReplyInbox()
        self._answering = Answering()  # what the serve blocks handle, for cancels
        self._unyielded = 0
        self._reconnects = 0
        self._published = 0
        self._oversized = 0
        #: What links count (events received, errors, catch-ups).
        self._counters = ClientCounters()

    # -- the client's state ---------------------------------------------------------------

    def _set_state(self, state: ClientState) -> None:
        if state is not self._state:
            self._state = state
            changed, self._state_changed = self._state_changed, trio.Event()
            changed.set()

    def _check_open(self) -> None:
        if self._state is ClientState.CLOSED:
            raise self._closed_error()

    def _closed_error(self) -> ConnectionClosed | trio.ClosedResourceError:
        """A fresh exception saying why the client is closed.

        As a bus does, a client closed by its owner (its block exited) raises
        :exc:`trio.ClosedResourceError`; :exc:`ConnectionClosed` means the connection was
        lost for good, which the owner did not ask for.
        """
        reason = self._closed_reason
        if reason is None:
            return trio.ClosedResourceError(f"the client of {self.url} is closed")
        return type(reason)(str(reason), code=reason.code, reason=reason.reason)

    # -- the outbox and the subscriptions, across connections -----------------------------

    async def _wait_room(self) -> None:
        """Wait until the outbox has room; raise if the client closes meanwhile."""
        outbox = self._outbox
        while outbox.full():
            await outbox.wait_room()
            self._check_open()

    async def _submit(self, pending: Pending[T]) -> T:
        """Queue *pending* (waiting for room) and wait for its answer."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        await self._wait_room()
        self._outbox.append(pending)
        if isinstance(pending, (PublishAck, RequestPending)):
            self._published += 1
        return await pending.wait()

    async def _start(self, rs: RemoteSub) -> None:
        """Subscribe *rs* on the broker and wait for the answer."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        self._add(rs)
        try:
            await rs.settled.wait()
        except BaseException:
            self._forget(rs)
            raise
        if rs.error is not None:
            raise rs.error

    def _add(self, rs: RemoteSub) -> None:
        self._subs[rs] = None
        link = self._link
        if link is not None:
            self._outbox.append(link.subscribe(rs))

    def _forget(self, rs: RemoteSub) -> None:
        """Drop *rs*, unsubscribing on the broker without waiting."""
        if rs not in self._subs:
            return
        del self._subs[rs]
        link = self._link
        if link is not None:
            link.unsubscribe(rs)
        rs.id = None

    async def _stop(self, rs: RemoteSub) -> None:
        """Drop *rs* and wait (shielded, bounded) until the broker confirms."""
        if rs not in self._subs:
            return
        del self._subs[rs]
        link = self._link
        done = link.unsubscribe(rs) if link is not None else None
        rs.id = None
        if done is not None and not _being_cancelled():
            # (A block left because it is cancelled does not wait: when the cancellation
            # takes the client with it, nothing would send the unsubscribe anyway.)
            with trio.move_on_after(UNSUBSCRIBE_TIMEOUT, shield=True):
                await done.wait()

    def _refused(self, rs: RemoteSub, error: Exception) -> None:
        """The broker refused to (re-)create *rs*."""
        self._subs.pop(rs, None)
        if rs is self._inbox:
            self._inbox = None
        if not rs.settled.is_set():
            rs.settle(error)
        elif rs.sub is not None:
            logger.warning("the broker refused or ended the subscription %r: %s", rs.pattern, error)
            rs.sub.fail(error)

    def _cancel_request(self, pending: RequestPending) -> None:
        """*pending* was given up on before its reply came: send its ``cancel``, if it was
        sent on this connection (one sent on a connection since lost cannot be cancelled:
        its ``reply_to`` is not in this connection's inbox; its deadline still ends it)."""
        reply_to = pending.event.reply_to
        if (
            pending.sent
            and self._state is ClientState.CONNECTED
            and reply_to is not None
            and self._replies.current(reply_to) == reply_to
        ):
            self._outbox.append(pending.cancel())

    async def _ensure_inbox(self) -> None:
        rs = self._inbox
        if rs is None:
            self._check_open()
            rs = self._inbox = RemoteSub(self._replies.pattern)
            self._add(rs)
        await rs.settled.wait()
        if rs.error is not None:
            raise rs.error

    # -- the connection's life ------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt *attempt* (0, 1, …)."""
        return backoff_delay(attempt, self._backoff_initial, self._backoff_max)

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The connection loop, in a scope that :meth:`aclose` cancels."""
        try:
            with self._run_scope:
                await self._keep_connected(task_status=task_status)
        finally:
            self._run_done.set()

    async def _keep_connected(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Connect, then keep connected (reconnecting as allowed) until cancelled or closed.

        The first connection is made before ``task_status.started()``: each given URL is
        tried once, in order, and if none accepts, this raises (no retry). Afterwards the
        client goes round its URLs (:attr:`urls`), starting after the node it lost: an
        attempt that fails moves on to the next node at once, and only a whole round of
        failures backs off (as a loss does, so that a node's clients do not all come back at
        once). A node that refuses the handshake for good (:func:`is_fatal`) is passed over;
        when every node of a round does, the client gives up.
        """
        first = True
        failures: list[ConnectionClosed] = []  # the first connect's, one per URL
        attempt = 0  # rounds (and losses) since the last connection: the backoff's exponent
        tried = refused = 0  # nodes tried in this round, and of them, refusals for good
        stuck = 0  # connections in a row that ended on a message too large, nothing changed
        while True:
            self._set_state(ClientState.CONNECTING)
            link: Link | None = None
            changed = False  # since the last connection ended on a message too large
            try:
                token = await self._fetch_token(first)
                async with open_transport(
                    self.url,
                    max_message_size=self._max_message_size,
                    connect_timeout=self._connect_timeout,
                    ssl_context=self._ssl_context,
                ) as transport:
                    conn, welcome = await handshake(
                        transport,
                        url=self.url,
                        token=token,
                        name=self.name,
                        timeout=self._connect_timeout,
                        instance=self.instance,
                    )
                    if not first:
                        self._reconnects += 1
                    link = self._connected(
                        Link(self._link_context(), transport, conn, welcome), first
                    )
                    if first:
                        first = False
                        task_status.started()
                    attempt = tried = refused = 0
                    received = self._counters.received
                    reason = await self._run_link(link)
                    changed = self._counters.received > received
                    if link.close_code is not None:
                        await transport.aclose(link.close_code, str(reason), timeout=0.5)
            except ConnectionClosed as exc:
                if first:
                    failures.append(exc)
                    if len(failures) < len(self._nodes.given):
                        self.url = self._nodes.after(self.url)
                        continue
                    if len(failures) == 1:
                        raise
                    raise _none_accepted(failures) from exc
                reason = exc
            oversized = refused_as_too_big(reason, self._max_message_size) or (
                link is not None and link.oversized
            )
            if link is not None:
                changed = self._disconnected(link, oversized=oversized) or changed
            if self._state is ClientState.CLOSED:
                return
            fatal = is_fatal(reason) and not self._renewable(link)
            if link is None:
                tried += 1
                refused += fatal
            round_over = link is None and tried >= len(self._nodes.urls)
            if (
                not self._reconnect
                or (fatal and link is not None)  # (a policy close: not to be evaded elsewhere)
                or (round_over and refused == tried)
            ):
                logger.warning("%s", reason)
                self._close(reason)
                return
            url = self._nodes.after(self.url)
            if link is not None or round_over or oversized:
                self._set_state(ClientState.DISCONNECTED)
            if oversized:
                # Back off longer each time a connection ended so with nothing changed (no
                # event received, read or skipped): the same message may well come again.
                changed = await self._skip_oversized() or changed
                stuck = 0 if changed else stuck + 1
            else:
                stuck = 0
            if link is not None or round_over:
                tried = refused = 0
                delay = self._backoff(max(attempt, stuck))
                attempt += 1
                logger.info("%s; reconnecting to %s in %.2f s", reason, url, delay)
                await trio.sleep(delay)
            else:
                logger.info("%s; trying %s", reason, url)
            self.url = url

    async def _fetch_token(self, first: bool) -> str | None:
        """The token for the next connect. A token callable that fails is the first connect's
        failure (it propagates), or a failed reconnect attempt (backed off); one that takes
        longer than the connect timeout fails with ConnectionClosed."""
        timeout = self._connect_timeout
        try:
            with trio.fail_after(timeout):
                token = await fetch_token(self._token)
        except trio.TooSlowError:
            raise ConnectionClosed(
                f"the token callable gave no token within {timeout:g} s (connect_timeout) "
                f"to connect to {self.url}"
            ) from None
        except Exception as exc:
            if first:
                raise
            raise ConnectionClosed(
                f"could not get a token to connect to {self.url}: {exc}"
            ) from exc
        self._last_token = token
        return token

    def _renewable(self, link: Link | None) -> bool:
        """Whether *link* ended because its credential expired, and a token callable may give
        a fresh one to reconnect with."""
        return (
            callable(self._token)
            and link is not None
            and link.last_error is not None
            and link.last_error.code == AUTH_EXPIRED
        )

    async def _run_link(self, link: Link) -> ConnectionClosed:
        """Run *link*; with a token callable and a credential that expires, refresh it in
        time."""
        source = self._token
        welcome = link.conn.welcome
        expires_in = None if welcome is None else welcome.expires_in
        if not callable(source) or expires_in is None:
            return await link.run()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    keep_refreshed,
                    self._outbox,
                    source,
                    expires_in,
                    url=self.url,
                    timeout=self._connect_timeout,
                    refreshed=self._refreshed,
                )
            )
            reason = await link.run()
            nursery.cancel_scope.cancel()
        return reason

    def _refreshed(self, token: str, expires_in: float | None) -> None:
        self._last_token = token  # (for the side connections of an oversized catch-up)
        self.expires = None if expires_in is None else time.time() + expires_in

    def _link_context(self) -> LinkContext:
        """What a link of this client gets: the narrow view of the client it works with."""
        return LinkContext(
            url=self.url,
            max_message_size=self._max_message_size,
            outbox=self._outbox,
            replies=self._replies,
            answering=self._answering,
            counters=self._counters,
            refused=self._refused,
        )

    def _connected(self, link: Link, first: bool) -> Link:
        """Make *link* the current connection: re-create every subscription on it."""
        welcome = link.conn.welcome
        assert welcome is not None
        if not first and welcome.epoch != self.epoch:
            # Another store: our seqs mean nothing there. Every subscription that was resuming
            # from the store replays the new one from its start; one that had received stored
            # events or asked for a since is told (once, after what it has received).
            for rs in self._subs:
                if rs.last_seq is None and rs.since is None and rs.resume_seq is None:
                    continue
                by_seq = rs.last_seq is not None or rs.since is not None
                rs.last_seq = None
                rs.resume_seq = None
                rs.since = 0 if welcome.epoch is not None else None
                rs.since_time = None
                if by_seq and rs.sub is not None:
                    rs.sub._notify(EpochChanged(rs.pattern, self.epoch, welcome.epoch))
        self.session = welcome.session
        self.epoch = welcome.epoch
        self.user = welcome.user
        self.expires = None if welcome.expires_in is None else time.time() + welcome.expires_in
        self.broker = welcome.broker
        if self._discover:
            self._learn_nodes(welcome)
        if welcome.inbox is not None:
            # This connection's own inbox: replies come there (the broker may refuse a
            # reply_to elsewhere). Requests sent again take it as their reply_to.
            self._replies.rebase(welcome.inbox)
            if self._inbox is not None:
                self._inbox.pattern = self._replies.pattern
        self._link = link
        self._outbox.push_front([link.subscribe(rs) for rs in self._subs])
        self._set_state(ClientState.CONNECTED)
        return link

    def _learn_nodes(self, welcome: Welcome) -> None:
        """Add the nodes the broker advertised to the rotation (what it advertised before
        goes); what is not fit to dial is logged and counted as bad input."""
        learned = self._nodes.learn(welcome.nodes)
        if learned.invalid or learned.excess:
            self._counters.errors += 1
            logger.warning(
                "the broker at %s advertised node URLs this client does not take "
                "(welcome.nodes): %d not %s URLs of at most %d printable characters, and %d "
                "beyond the first %d",
                self.url,
                learned.invalid,
                "wss://" if self._nodes.tls else "ws://",
                MAX_URL_LENGTH,
                learned.excess,
                MAX_NODES,
            )

    def _disconnected(self, link: Link, *, oversized: bool = False) -> bool:
        """*link* ended: requeue what it had in flight; its ids mean nothing any more.

        *oversized*: it ended on a message too large, which may have been the answer to a
        history read in flight: those are sent again asking for fewer events (or fail, asking
        for one). Returns whether there were any.
        """
        changed = False
        self._link = None
        for rs in self._subs:
            rs.id = None
        for done in link.unsubscribing.values():
            done.set()
        link.unsubscribing.clear()
        requeue: list[Pending[Any]] = []
        for pending in link.conn.forget_pending():
            pending.ref = None
            if oversized and isinstance(pending, HistoryQuery) and not pending.abandoned:
                pending.shrink(self._max_message_size)
                changed = True
            if not pending.done.is_set() and not pending.abandoned:
                requeue.append(pending)
        self._outbox.drop_control()
        self._outbox.push_front(requeue)
        self._outbox.notify_drained()
        return changed

    async def _skip_oversized(self) -> bool:
        """The connection ended on a message too large to receive: count it, and catch up
        the subscriptions that resubscribing would replay it to (see
        ``_oversized.skip_oversized``). Whether that read or skipped anything."""
        self._oversized += 1
        prober = Prober(
            self.url,
            token=self._last_token,
            name=self.name,
            max_message_size=self._max_message_size,
            timeout=self._connect_timeout,
            ssl_context=self._ssl_context,
        )
        try:
            delivered, skipped = await skip_oversized(list(self._subs), prober)
        finally:
            await prober.aclose()
        self._counters.received += delivered
        return bool(delivered or skipped)

    def _close(self, reason: ConnectionClosed | None) -> None:
        """Close for good: end subscriptions (failing them with *reason*, if any) and fail
        every operation still waiting."""
        if self._state is ClientState.CLOSED:
            return
        self._closed_reason = reason
        self._set_state(ClientState.CLOSED)
        subs = list(self._subs)
        self._subs.clear()
        self._inbox = None
        for rs in subs:
            rs.settle(self._closed_error())
            if rs.sub is not None:
                if reason is None:
                    rs.sub.end()
                else:
                    rs.sub.fail(self._closed_error())
        link = self._link
        waiting: list[Any] = self._outbox.close()
        if link is not None:
            waiting += link.conn.forget_pending()
            for done in link.unsubscribing.values():
                done.set()
        waiting += self._replies.waiters()
        for item in waiting:
            if isinstance(item, Pending):
                item.fail(self._closed_error())
        dropped = sum(1 for item in waiting if type(item) is Publish)
        if dropped:
            logger.warning("%d published events were not sent: the client closed", dropped)

    async def _shutdown(self) -> None:
        """Leave gracefully: send what waits (bounded), then close. Cancelled, it closes at
        once: its writer, in the client's nursery, is cancelled too."""
        if _being_cancelled():
            self._close(None)
            return
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            while True:
                link = self._link
                if link is None or not (self._outbox.items or link.writing):
                    break
                await self._outbox.wait_drained()
        self._close(None)


def _none_accepted(failures: list[ConnectionClosed]) -> ConnectionClosed:
    """The first connect's failure when none of several brokers accepted: the last one's
    kind, close code and reason, with every broker's failure in its message."""
    last = failures[-1]
    message = f"none of the {len(failures)} brokers accepted a connection: " + "; ".join(
        str(exc) for exc in failures
    )
    return type(last)(message, code=last.code, reason=last.reason)


def _being_cancelled() -> bool:
    """Whether the current task is being cancelled (its effective deadline has passed)."""
    return trio.current_effective_deadline() == -math.inf
