"""A JetStreamStore's link to its stream: the NATS connection, the stream, the requests.

:class:`StreamLink` holds the connection (given, or opened by the store: then held by a task
of its own from :meth:`StreamLink.connect` to :meth:`StreamLink.close`), the store's
:class:`~._jetstream_wire.Exchange` on it, and the stream: created or updated when the store
opens, and checked afterwards to still be the same stream (a stream deleted, or deleted and
created again, makes the link *stale*: every later operation raises StoreError). Every
request it makes waits for NATS, at most the store's timeout, and turns a NATS failure into
:exc:`~trio_realtime.StoreError`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio

from .._errors import NoResponders, StoreError
from .._nats import NatsConnection, open_nats
from ._jetstream_wire import Exchange, Page

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ["READ_PAGE_BYTES", "Stale", "StreamLink", "StreamOptions"]

logger = logging.getLogger("trio_realtime.store")

#: The bytes of one page read (as JetStream counts messages), at most.
READ_PAGE_BYTES: Final = 4 * 1024 * 1024

_SECOND_NS: Final = 1_000_000_000
# JetStream API error codes.
_STREAM_NOT_FOUND: Final = 10059
_STREAM_NAME_IN_USE: Final = 10058


class Stale(StoreError):
    """The stream was deleted, or replaced, while the store was open."""


class StreamOptions:
    """What the stream is to be (see :class:`~trio_realtime.store.JetStreamStore`)."""

    def __init__(
        self,
        *,
        prefix: str,
        replicas: int,
        duplicate_window: float,
        max_events: int | None,
        max_age: timedelta | None,
        max_bytes: int | None,
        storage: str,
    ) -> None:
        self.prefix = prefix
        self.replicas = replicas
        self.duplicate_window = duplicate_window
        self.max_events = max_events
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.storage = storage

    def config(self, name: str, existing: dict[str, Any] | None) -> dict[str, Any]:
        """The stream's configuration: *existing* (None: a new stream) with these options."""
        config = dict(existing or {})
        window = self.duplicate_window
        if self.max_age is not None:
            window = min(window, self.max_age.total_seconds())  # (JetStream requires it)
        config.update(
            name=name,
            subjects=config.get("subjects") or [f"{self.prefix}.>"],
            num_replicas=self.replicas,
            duplicate_window=int(window * _SECOND_NS),
            max_msgs=-1 if self.max_events is None else self.max_events,
            max_bytes=-1 if self.max_bytes is None else self.max_bytes,
            max_age=0 if self.max_age is None else int(self.max_age.total_seconds() * _SECOND_NS),
            allow_direct=True,
            allow_atomic=True,
        )
        if existing is None:
            config.update(storage=self.storage, retention="limits", discard="old")
        return config


class StreamLink:
    """The connection to NATS and the stream, for one store (see the module docstring)."""

    def __init__(
        self,
        nats: Sequence[str] | NatsConnection,
        stream: str,
        options: StreamOptions,
        *,
        timeout: float,
        owner: str,
        connect: dict[str, Any],
    ) -> None:
        self._given = nats if isinstance(nats, NatsConnection) else None
        self._servers = [] if isinstance(nats, NatsConnection) else list(nats)
        self.stream: Final = stream
        self.options = options
        self.timeout = timeout
        self._connect = connect  # open_nats's options, for a connection of the store's own
        self._owner = owner  # how errors name the store
        self._connection: NatsConnection | None = None
        self.exchange: Exchange | None = None
        #: The stream's creation time, as JetStream wrote it (set by :meth:`connect`).
        self.created = ""
        #: Why the link is stale, once it is.
        self.stale: Stale | None = None
        #: The NATS server's largest message.
        self.max_payload = 1024 * 1024
        self._release = trio.Event()
        self._held: trio.Event | None = None
        self._hold_error: BaseException | None = None

    # -- connecting ---------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Connect (or take the connection given), create or update the stream; its info.

        On failure nothing stays open.
        """
        try:
            connection = await self._open_connection()
            if await self.wait_connected(trio.current_time() + self.timeout) <= 0:
                self._unreachable()
            exchange = Exchange(connection.client)
            await self.run(exchange.start)
            self.exchange = exchange
            info = await self._ensure_stream()
            self.max_payload = int(connection.client.max_payload or self.max_payload)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close()
            raise
        self.created = str(info.get("created"))
        return info

    def _unreachable(self) -> None:
        raise StoreError(f"{self._owner}: NATS was not reachable within {self.timeout} s")

    async def _open_connection(self) -> NatsConnection:
        if self._given is not None:
            self._connection = self._given
            return self._given
        ready = trio.Event()
        self._release = trio.Event()
        self._held = trio.Event()
        self._hold_error = None
        # A system task holds the connection: it lives from the store's open() to its
        # aclose(), which need not be called from one block of one task (the block of a
        # nursery opened by open() could not be left by aclose()). close() ends it and waits.
        trio.lowlevel.spawn_system_task(self._hold_connection, ready)
        await ready.wait()
        if self._connection is None:
            error = self._hold_error
            raise StoreError(f"{self._owner}: could not connect to NATS: {error}") from error
        return self._connection

    async def _hold_connection(self, ready: trio.Event) -> None:
        assert self._held is not None
        held = self._held
        try:
            async with open_nats(
                self._servers, wait=True, connect_timeout=self.timeout, **self._connect
            ) as connection:
                self._connection = connection
                ready.set()
                await self._release.wait()
        except Exception as exc:  # noqa: BLE001 - connect() raises it
            self._hold_error = exc
        finally:
            self._connection = None
            ready.set()
            held.set()

    async def close(self) -> None:
        """Stop the exchange, and close the connection if the store opened it (idempotent)."""
        exchange, self.exchange = self.exchange, None
        connection = self._connection
        if exchange is not None and connection is not None:
            with trio.move_on_after(self.timeout):
                try:
                    await connection.run(exchange.stop)
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
        if self._given is None:
            self._release.set()
            if self._held is not None:
                await self._held.wait()
        self._connection = None

    @property
    def connection(self) -> NatsConnection:
        """The connection (StoreError once the store's own has ended).

        Raises:
            StoreError: if the connection the store opened has ended.
            trio.ClosedResourceError: if the link is closed.
        """
        connection = self._connection
        if connection is None:
            if self._given is None and self._hold_error is not None:
                raise StoreError(f"{self._owner}: its NATS connection ended: {self._hold_error}")
            raise trio.ClosedResourceError(f"{self._owner} is closed")
        return connection

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run *fn* on the connection's asyncio loop (a NATS failure as StoreError)."""
        connection = self.connection
        try:
            return await connection.run(fn, *args)
        except (trio.Cancelled, trio.ClosedResourceError, StoreError):
            raise
        except Exception as exc:
            raise StoreError(f"{self._owner}: NATS failed: {exc!r}") from exc

    async def wait_connected(self, deadline: float) -> float:
        """Wait until NATS is reachable, until *deadline* at most; the seconds left (0 or
        less: it was not)."""
        connection = self.connection
        with trio.move_on_at(deadline):
            await connection.wait_connected()
        return deadline - trio.current_time() if connection.connected else 0.0

    # -- the JetStream API --------------------------------------------------------------------

    async def api(self, subject: str, body: object = None) -> dict[str, Any]:
        """A JetStream API request and its JSON answer (an error answer is returned too)."""
        data = b"" if body is None else orjson.dumps(body)
        deadline = trio.current_time() + self.timeout
        while True:
            remaining = await self.wait_connected(deadline)
            if remaining <= 0:
                raise StoreError(f"{self._owner}: NATS did not answer within {self.timeout} s")
            try:
                reply = await self.connection.request(subject, data, timeout=remaining)
            except TimeoutError:
                continue  # (the deadline ends it)
            except NoResponders:
                raise StoreError(
                    f"{self._owner}: the NATS server answers no JetStream requests: is "
                    "JetStream enabled on it (nats-server -js)?"
                ) from None
            except (trio.Cancelled, trio.ClosedResourceError):
                raise
            except Exception as exc:
                raise StoreError(f"{self._owner}: NATS failed: {exc!r}") from exc
            try:
                answer = orjson.loads(reply.data)
            except orjson.JSONDecodeError:
                raise StoreError(
                    f"{self._owner}: JetStream answered {reply.data[:200]!r}"
                ) from None
            if not isinstance(answer, dict):
                raise StoreError(f"{self._owner}: JetStream answered {answer!r}")
            return answer

    def raise_error(self, answer: dict[str, Any], doing: str) -> None:
        """Raise StoreError if *answer* is an error."""
        error = answer.get("error")
        if error is not None:
            description = error.get("description", error) if isinstance(error, dict) else error
            raise StoreError(f"{self._owner}: JetStream refused {doing}: {description}")

    async def _ensure_stream(self) -> dict[str, Any]:
        """Create the stream, or update it to the options; its info."""
        stream = self.stream
        for _ in range(3):
            info = await self.api(f"$JS.API.STREAM.INFO.{stream}")
            error = info.get("error")
            if error is None:
                subjects = (info.get("config") or {}).get("subjects") or []
                if f"{self.options.prefix}.>" not in subjects:
                    raise StoreError(
                        f"{self._owner}: the stream {stream} exists, for the subjects "
                        f"{subjects}, not {self.options.prefix}.>: give the store another "
                        "stream, or the stream's prefix"
                    )
                wanted = self.options.config(stream, info.get("config"))
                if wanted != info.get("config"):
                    updated = await self.api(f"$JS.API.STREAM.UPDATE.{stream}", wanted)
                    self.raise_error(updated, "updating the stream")
                    logger.info("stream %s updated to the store's options", stream)
                    return updated
                return info
            if error.get("err_code") != _STREAM_NOT_FOUND:
                self.raise_error(info, "looking up the stream")
            config = self.options.config(stream, None)
            created = await self.api(f"$JS.API.STREAM.CREATE.{stream}", config)
            error = created.get("error")
            if error is None:
                return created
            if error.get("err_code") != _STREAM_NAME_IN_USE:  # (else another node was first)
                self.raise_error(created, "creating the stream")
        raise StoreError(f"{self._owner}: the stream kept changing while it was being opened")

    async def stream_info(self) -> dict[str, Any]:
        """The stream's info, checking that it is still the stream the store opened.

        Raises:
            Stale: if it was deleted, or replaced (the link is stale from now on).
            StoreError: if NATS failed.
        """
        if self.stale is not None:
            raise self.stale
        info = await self.api(f"$JS.API.STREAM.INFO.{self.stream}")
        error = info.get("error")
        if error is not None:
            if error.get("err_code") == _STREAM_NOT_FOUND:
                self._go_stale("was deleted")
            self.raise_error(info, "looking up the stream")
        if str(info.get("created")) != self.created:
            self._go_stale("was deleted and created again (a new epoch)")
        return info

    def _go_stale(self, what: str) -> None:
        self.stale = Stale(
            f"{self._owner}: the stream {what} while the store was open; its seqs are not "
            "this store's: close the store and open a new one"
        )
        raise self.stale

    async def get_page(
        self, subject: str, after: int, batch: int, min_last_seq: int
    ) -> tuple[list[tuple[int, Any]], bool]:
        """The stored messages after seq *after* on *subject* (a pattern), *batch* at most,
        each with its seq; and whether more follow.

        A direct get, answered only by a server whose stream has *min_last_seq* at least (a
        lagging replica passes it to the leader).
        """
        request: dict[str, Any] = {
            "seq": after + 1,
            "next_by_subj": subject,
            "batch": batch,
            "max_bytes": READ_PAGE_BYTES,
        }
        if min_last_seq:
            request["min_last_seq"] = min_last_seq
        body = orjson.dumps(request)
        api = f"$JS.API.DIRECT.GET.{self.stream}"
        deadline = trio.current_time() + self.timeout
        behind = 0
        while True:
            if self.stale is not None:
                raise self.stale
            remaining = await self.wait_connected(deadline)
            if remaining <= 0:
                raise StoreError(
                    f"{self._owner}: NATS did not answer a read within {self.timeout} s"
                )
            assert self.exchange is not None
            page: Page | None = await self.run(self.exchange.get_page, api, body, remaining)
            if page is None or page.status is None:
                continue  # (the deadline ends it)
            headers = page.status.headers or {}
            status = headers.get("Status")
            if status == "204":  # the end of the batch
                found = [(int((m.headers or {}).get("Nats-Sequence", 0)), m) for m in page.messages]
                return found, int(headers.get("Nats-Num-Pending", 0) or 0) > 0
            if status == "404":  # nothing after *after*
                return [], False
            if status in ("412", "503"):  # not min_last_seq yet (replaced?), or no stream
                behind += 1
                if status == "503" or behind >= 3:
                    await self.stream_info()  # (raises if the stream is gone or replaced)
                await trio.sleep(0.05)
                continue
            description = headers.get("Description", "")
            raise StoreError(
                f"{self._owner}: JetStream answered a read with {status} {description}"
            )
