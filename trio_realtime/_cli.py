"""The ``trio-realtime`` command: run a broker, or publish, subscribe and query one.

This is the only place in the package that calls :func:`trio.run`.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TextIO, TypeVar, cast

import orjson
import trio

from ._errors import RealtimeError, StoreError
from ._util import open_service_nursery
from .broker._broker import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_SUBSCRIPTIONS,
)
from .bus._retained import DEFAULT_MAX_RETAINED

if TYPE_CHECKING:
    from ._event import Event
    from .security import ServerConfig
    from .store import Store

__all__ = ["main"]

N = TypeVar("N", int, float)

logger = logging.getLogger("trio_realtime.cli")

#: Where ``trio-realtime serve`` keeps events unless told otherwise.
DEFAULT_STORE: Final = "sqlite:trio-realtime.db"

#: The ``serve`` options that have a default, used when neither the command line nor the
#: ``--config`` file's ``[server]`` table gives them (the others default to None).
SERVE_DEFAULTS: Final[Mapping[str, object]] = {
    "host": "127.0.0.1",
    "port": 8765,
    "store": DEFAULT_STORE,
    "synchronous": "normal",
    "name": "trio-realtime",
    "heartbeat": 30.0,
    "max_subscriptions": DEFAULT_MAX_SUBSCRIPTIONS,
    "max_retained": DEFAULT_MAX_RETAINED,
    "max_message_size": DEFAULT_MAX_MESSAGE_SIZE,
    "max_pending_bytes": DEFAULT_MAX_PENDING_BYTES,
    "slow_consumer": "drop",
    "handshake_timeout": 10.0,
    "publish_burst": 100,
    "allow_anonymous": False,
}


def _describe_rate(rate: float | None) -> str:
    return "none" if rate is None else f"{rate:g}/s"


class CommandError(Exception):
    """An error to print as one line before exiting with status 1."""


def _json_argument(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"the data is not valid JSON ({exc}): {text!r}") from None


def _headers(pairs: Sequence[str]) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"a header must look like NAME=VALUE, not {pair!r}")
        headers[key] = value
    return headers or None


def open_store(
    spec: str,
    *,
    synchronous: Literal["normal", "full"] = "normal",
    max_events: int | None = None,
    max_age: float | None = None,
    max_bytes: int | None = None,
) -> Store | None:
    """The store a ``--store`` option names: ``sqlite:PATH``, ``memory`` or ``none``.

    A ``memory`` store given no retention limit at all keeps at most
    :data:`~trio_realtime.store.DEFAULT_MEMORY_MAX_EVENTS` events and
    :data:`~trio_realtime.store.DEFAULT_MEMORY_MAX_BYTES` of them, so that a broker cannot
    fill its memory with stored events; any limit given replaces both. *max_bytes* is for a
    ``memory`` store only.
    """
    from .store import (
        DEFAULT_MEMORY_MAX_BYTES,
        DEFAULT_MEMORY_MAX_EVENTS,
        MemoryStore,
        SQLiteStore,
    )

    if spec == "memory":
        if max_events is None and max_age is None and max_bytes is None:
            max_events, max_bytes = DEFAULT_MEMORY_MAX_EVENTS, DEFAULT_MEMORY_MAX_BYTES
        return MemoryStore(max_events=max_events, max_age=max_age, max_bytes=max_bytes)
    if spec == "none":
        return None
    kind, sep, path = spec.partition(":")
    if kind == "sqlite" and sep and path:
        if max_bytes is not None:
            raise CommandError(
                "--max-bytes limits a memory store only: bound a sqlite store with "
                "--max-events or --max-age"
            )
        return SQLiteStore(path, synchronous=synchronous, max_events=max_events, max_age=max_age)
    raise CommandError(f"--store takes sqlite:PATH, memory or none, not {spec!r}")


def _print_event(event: Event, *, pretty: bool, out: TextIO) -> None:
    if pretty:
        seq = f" #{event.seq}" if event.seq is not None else ""
        data = orjson.dumps(event.to_dict()["data"], option=orjson.OPT_INDENT_2).decode()
        out.write(f"{event.time:%H:%M:%S} {event.topic}{seq} ({event.source})\n{data}\n")
    else:
        out.write(orjson.dumps(event.to_dict()).decode() + "\n")
    out.flush()


_SIZE_UNITS: Final = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _size(text: str) -> int:
    """A size in bytes: a whole number, optionally with K, M or G (KiB, MiB, GiB)."""
    number = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = number[-1:] if number[-1:] in ("k", "m", "g") else ""
    try:
        value = int(number[: len(number) - len(unit)]) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (write e.g. 1048576, 1024K, 16M or 1G)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive, not {text!r}")
    return value


def _positive(kind: Callable[[str], N], what: str) -> Callable[[str], N]:
    """An argparse type: *kind* of *text*, which must be positive (*what* names the kind)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
        return value

    return parse


_positive_int = _positive(int, "a whole number")
_positive_float = _positive(float, "a number")


def _describe_store(spec: str, store: Store | None) -> str:
    if store is None:
        return "none (events are not stored)"
    kept = [
        f"{value} {unit}"
        for value, unit in (
            (getattr(store, "max_events", None), "events"),
            (getattr(store, "max_bytes", None), "bytes"),
        )
        if value is not None
    ]
    max_age = getattr(store, "max_age", None)
    if max_age is not None:
        kept.append(f"{max_age.total_seconds():g} s")
    return f"{spec} (keeps {', '.join(kept) if kept else 'every event'})"


def _describe_origins(origins: tuple[str, ...] | None) -> str:
    """The ``origins:`` start line: which web pages may connect."""
    from ._transport import LOCAL_ORIGINS

    if origins is None:
        return "any web page"
    if origins == LOCAL_ORIGINS:
        return "web pages from this machine only (localhost, 127.0.0.1, [::1])"
    return ", ".join(origins) if origins else "no web page"


def server_ssl_context(
    cert: str | None, key: str | None, client_ca: str | None
) -> ssl.SSLContext | None:
    """The TLS context ``serve`` listens with (None: plain ``ws://``): the broker's
    certificate chain *cert* and its private *key*; with *client_ca*, mutual TLS (a client
    must present a certificate that CA signed).

    Raises:
        CommandError: if only one of *cert* and *key* is given, or a file cannot be used.
    """
    if cert is None and key is None:
        if client_ca is not None:
            raise CommandError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise CommandError("--tls-cert and --tls-key go together: give both, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CommandError(
            f"cannot use the TLS certificate {cert} with the key {key}: {_ssl_reason(exc)}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise CommandError(
                f"cannot use the client CA file {client_ca}: {_ssl_reason(exc)}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context of a client command: trusting the CA certificates in *ca_file*, or
    None (``wss://`` then trusts the system's CAs).

    Raises:
        CommandError: if *ca_file* cannot be used.
    """
    if ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CommandError(f"cannot use the CA file {ca_file}: {_ssl_reason(exc)}") from None


def _ssl_reason(exc: OSError) -> str:
    """What is wrong, in a few words (``No such file or directory``, ``PEM lib`` …)."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)


def _describe_tls(cert: str | None, client_ca: str | None) -> str:
    """The ``tls:`` start line."""
    if cert is None:
        return "off (plain ws://; see --tls-cert)"
    if client_ca is None:
        return f"certificate {cert}"
    return f"certificate {cert}; client certificates required, signed by {client_ca}"


def is_loopback(host: str) -> bool:
    """Whether *host* is a loopback address: ``localhost``, 127.0.0.0/8 or ``::1``.

    A host name other than ``localhost`` is not looked up: it counts as not loopback.
    """
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_exposure(host: str, config: ServerConfig | None, *, allow_anonymous: bool) -> str:
    """The start line's account of authentication; refuse an open broker on the network.

    Without authentication configured, every client has full access: that is allowed on a
    loopback *host* only, or with *allow_anonymous* (then a warning is logged). Raises
    :exc:`CommandError` (one line saying what to do) otherwise, and for *allow_anonymous*
    with authentication configured (it would mean nothing).
    """
    if config is not None and config.auth is not None:
        if allow_anonymous:
            raise CommandError(
                "--allow-anonymous (allow_anonymous in [server]) is for a broker without "
                f"authentication, and {config.path} configures some: to let connections "
                "without a token in, give them [anonymous.permissions] in the file"
            )
        return config.describe_auth()
    if is_loopback(host):
        return "none (anonymous, full access: loopback only)"
    if not allow_anonymous:
        raise CommandError(
            f"refusing to serve {host} without authentication (anyone who reaches it could "
            "read and publish everything): configure [[users]] or [auth.jwt] in a --config "
            "file, listen on 127.0.0.1, or pass --allow-anonymous to serve it open anyway"
        )
    logger.warning(
        "serving %s without authentication (--allow-anonymous): anyone who reaches it may "
        "read and publish everything",
        host,
    )
    return f"none (anonymous, full access on {host}: --allow-anonymous)"


def _file_value(config: ServerConfig, action: argparse.Action, value: object) -> object:
    """A ``[server]`` value, checked and converted as the command line does its flag."""
    from .security import ConfigError

    if action.choices is not None and value not in action.choices:
        raise ConfigError(
            config.path,
            f"server.{action.dest}: expected one of "
            f"{', '.join(map(repr, action.choices))}, not {value!r}",
        )
    if action.type is not None:
        convert = cast("Callable[[str], object]", action.type)
        try:
            value = convert(str(value))
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(config.path, f"server.{action.dest}: {exc}") from None
    if action.dest == "store" and isinstance(value, str) and value.startswith("sqlite:"):
        # A store file named in the config file is relative to the file's folder.
        value = "sqlite:" + str(config.path.parent / Path(value.removeprefix("sqlite:")))
    if action.dest in _TLS_FILES and isinstance(value, str):
        value = str(config.path.parent / Path(value))  # so are the TLS files
    return value


#: The ``serve`` options that name TLS files.
_TLS_FILES: Final = ("tls_cert", "tls_key", "tls_client_ca")


def serve_settings(args: argparse.Namespace, config: ServerConfig | None) -> argparse.Namespace:
    """Every ``serve`` option: the flag if given, else the config file's, else the default."""
    settings = argparse.Namespace()
    for dest, action in _serve_actions().items():
        value = getattr(args, dest, None)
        if value is None and config is not None and dest in config.server:
            value = _file_value(config, action, config.server[dest])
        if value is None:
            value = SERVE_DEFAULTS.get(dest)
        setattr(settings, dest, value)
    return settings


async def _serve(args: argparse.Namespace) -> None:
    from .broker._broker import Broker, descriptor_limit
    from .security import load_config

    config = load_config(args.config) if args.config is not None else None
    args = serve_settings(args, config)
    auth_line = check_exposure(args.host, config, allow_anonymous=args.allow_anonymous)
    if config is not None and config.certificate_users and args.tls_client_ca is None:
        raise CommandError(
            f"{config.path} gives users a certificate_subject, but without --tls-client-ca "
            "(tls_client_ca in [server]) no client certificate is asked for or verified: give "
            "the CA file that signs your clients' certificates (and --tls-cert, --tls-key)"
        )
    ssl_context = server_ssl_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    store = open_store(
        args.store,
        synchronous=args.synchronous,
        max_events=args.max_events,
        max_age=args.max_age,
        max_bytes=args.max_bytes,
    )
    try:
        broker = Broker(
            store=store,
            persist=args.persist or None,
            name=args.name,
            heartbeat=args.heartbeat,
            handshake_timeout=args.handshake_timeout,
            max_message_size=args.max_message_size,
            max_connections=args.max_connections,
            max_subscriptions=args.max_subscriptions,
            max_retained=args.max_retained,
            max_pending_bytes=args.max_pending_bytes,
            slow_consumer="drop_oldest" if args.slow_consumer == "drop" else "disconnect",
            auth=config.auth if config is not None else None,
            allowed_origins=args.allow_origin,
            publish_rate=args.publish_rate,
            user_publish_rate=args.user_publish_rate,
            publish_burst=args.publish_burst,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    async with open_service_nursery() as nursery:
        try:
            server = await nursery.start(
                partial(broker.serve, ssl_context=ssl_context), args.host, args.port
            )
        except StoreError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
        print(f"trio-realtime broker {args.name!r} listening on {server.url}", flush=True)
        print(f"store: {_describe_store(args.store, store)}", flush=True)
        descriptors = descriptor_limit()
        print(
            f"limits: max_connections={broker.max_connections} (file descriptors: "
            f"{descriptors if descriptors is not None else 'unlimited'}), "
            f"max_subscriptions={broker.max_subscriptions}, "
            f"max_retained={broker.bus.max_retained}, "
            f"max_message_size={broker.max_message_size}, "
            f"max_pending_bytes={broker.max_pending_bytes}, "
            f"slow_consumer={args.slow_consumer}, "
            f"handshake_timeout={broker.handshake_timeout:g}s, "
            f"publish_rate={_describe_rate(args.publish_rate)}, "
            f"user_publish_rate={_describe_rate(args.user_publish_rate)}, "
            f"publish_burst={args.publish_burst}",
            flush=True,
        )
        print(f"auth: {auth_line}", flush=True)
        print(f"origins: {_describe_origins(broker.allowed_origins)}", flush=True)
        print(f"tls: {_describe_tls(args.tls_cert, args.tls_client_ca)}", flush=True)
        await trio.sleep_forever()


async def _pub(args: argparse.Namespace) -> None:
    data = _json_argument(args.data)
    from .client._client import open_client

    async with open_client(
        args.url,
        name="trio-realtime pub",
        ssl_context=client_ssl_context(args.ca_file),
        reconnect=False,
    ) as client:
        event = await client.publish(
            args.topic, data, headers=_headers(args.header), retain=args.retain, ack=True
        )
    seq = f" seq {event.seq}" if event.seq is not None else ""
    print(f"published {event.id} on {event.topic}{seq}", flush=True)


async def _sub(args: argparse.Namespace) -> None:
    from .client._client import open_client

    async with (
        open_client(
            args.url, name="trio-realtime sub", ssl_context=client_ssl_context(args.ca_file)
        ) as client,
        client.subscribe(
            args.pattern,
            group=args.group,
            since=args.since,
            max_buffer_size=10_000,
            overflow="drop_oldest",
        ) as sub,
    ):
        count = 0
        async for event in sub:
            _print_event(event, pretty=args.pretty, out=sys.stdout)
            count += 1
            if args.count is not None and count >= args.count:
                return


async def _request(args: argparse.Namespace) -> None:
    data = _json_argument(args.data)
    from .client._client import open_client

    async with open_client(
        args.url,
        name="trio-realtime request",
        ssl_context=client_ssl_context(args.ca_file),
        reconnect=False,
    ) as client:
        reply = await client.request(
            args.topic, data, headers=_headers(args.header), timeout=args.timeout
        )
    print(orjson.dumps(reply.to_dict()["data"]).decode(), flush=True)


async def _history(args: argparse.Namespace) -> None:
    from .client._client import open_client

    async with open_client(
        args.url,
        name="trio-realtime history",
        ssl_context=client_ssl_context(args.ca_file),
        reconnect=False,
    ) as client:
        events = await client.history(args.pattern, since=args.since, limit=args.limit)
    for event in events:
        _print_event(event, pretty=args.pretty, out=sys.stdout)


async def _recover(args: argparse.Namespace) -> None:
    from .store import recover

    try:
        report = await trio.to_thread.run_sync(recover, args.file, args.output)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    print(
        f"recovered {report.recovered} events into {report.output} (last seq "
        f"{report.last_seq}); {report.unreadable} seqs could not be read",
        flush=True,
    )
    if not report.kept_epoch:
        print(
            "it has a new epoch: resuming clients are told that events may be missing",
            flush=True,
        )
    print(
        f"to use it: stop the broker, move {report.source} (with its -wal and -shm files) "
        f"aside, and rename {report.output} to {report.source}",
        flush=True,
    )


async def _token(args: argparse.Namespace) -> None:
    from .security._auth import check_user_name, new_token, token_sha256

    try:
        name = check_user_name(args.name, what="NAME", allow_anonymous=False)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    token = new_token()
    print(
        f"Line 1 is {name}'s token: give it to the client now (it is shown only this once and "
        f"stored nowhere). The lines after it go into the broker's config file.",
        file=sys.stderr,
        flush=True,
    )
    print(token)
    print(f'[[users]]\nname = "{name}"\ntoken_sha256 = "{token_sha256(token)}"', flush=True)


def _add_serve_options(serve: argparse.ArgumentParser) -> None:
    """The options of ``serve``, each one of :data:`SERVE_DEFAULTS` or without a default.

    None of them has an argparse default, so that a flag given on the command line can be
    told from one that was not, which the ``--config`` file's value then fills in.
    """
    serve.add_argument(
        "--host",
        help="address to listen on (127.0.0.1); any but a loopback address needs "
        "authentication or --allow-anonymous",
    )
    serve.add_argument("--port", type=int, help="port to listen on (8765)")
    serve.add_argument(
        "--store",
        help=f"sqlite:PATH, memory or none (default: {DEFAULT_STORE}, in this directory)",
    )
    serve.add_argument(
        "--synchronous",
        choices=["normal", "full"],
        help="SQLite durability: an acked event survives a crash of the broker (normal, the "
        "default) or a power loss too (full, slower)",
    )
    serve.add_argument(
        "--max-events", type=int, metavar="N", help="keep at most N stored events (oldest go)"
    )
    serve.add_argument(
        "--max-age", type=float, metavar="SECONDS", help="keep stored events this long at most"
    )
    serve.add_argument(
        "--persist",
        action="append",
        metavar="PATTERN",
        help="store only topics matching PATTERN (repeatable; default: every topic but $… "
        "and _inbox.…)",
    )
    serve.add_argument(
        "--max-bytes",
        type=_size,
        metavar="SIZE",
        help="keep at most this many bytes of stored events (memory store only; a memory "
        "store given no limit keeps 100,000 events and 256M)",
    )
    serve.add_argument("--name", help="the broker's name")
    serve.add_argument(
        "--heartbeat",
        type=_positive_float,
        metavar="SECONDS",
        help="ping a silent client after this long; close it if it stays silent as long again (30)",
    )
    limits = serve.add_argument_group(
        "limits", "what one client can make the broker hold (see the deployment guide)"
    )
    limits.add_argument(
        "--max-connections",
        type=_positive_int,
        metavar="N",
        help="clients at once; one more is refused with HTTP 503 (default: the file "
        "descriptor limit less 128, at most 65536)",
    )
    limits.add_argument(
        "--max-subscriptions",
        type=_positive_int,
        metavar="N",
        help=f"subscriptions per connection ({DEFAULT_MAX_SUBSCRIPTIONS})",
    )
    limits.add_argument(
        "--max-retained",
        type=_positive_int,
        metavar="N",
        help=f"retained values; one more evicts the oldest ({DEFAULT_MAX_RETAINED})",
    )
    limits.add_argument(
        "--max-message-size",
        type=_size,
        metavar="SIZE",
        help="largest message a client may send, and the broker sends (1M)",
    )
    limits.add_argument(
        "--max-pending-bytes",
        type=_size,
        metavar="SIZE",
        help="bytes queued for one client before it counts as slow (16M)",
    )
    limits.add_argument(
        "--slow-consumer",
        choices=["drop", "disconnect"],
        help="a client that reads too slowly loses its oldest events (drop, the default) or "
        "is disconnected",
    )
    limits.add_argument(
        "--publish-rate",
        type=_positive_float,
        metavar="PER_SECOND",
        help="publishes per second one connection may make (no limit by default)",
    )
    limits.add_argument(
        "--user-publish-rate",
        type=_positive_float,
        metavar="PER_SECOND",
        help="publishes per second all the connections of one user may make together",
    )
    limits.add_argument(
        "--publish-burst",
        type=int,
        metavar="N",
        help="publishes at once above the rate before it applies (100)",
    )
    limits.add_argument(
        "--handshake-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="for a new connection's WebSocket handshake, and then its hello (10)",
    )
    security = serve.add_argument_group("security", "who may connect (see the security guide)")
    security.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file: [server] options (the flags given here override them), [[users]], "
        "[anonymous] and [auth.jwt]",
    )
    security.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="serve a non-loopback --host without authentication: anyone who reaches it may "
        "read and publish everything (refused otherwise)",
    )
    security.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve wss:// with this certificate (PEM, the chain after the broker's own)",
    )
    security.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    security.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="mutual TLS: accept only clients with a certificate signed by a CA in FILE (PEM)",
    )
    security.add_argument(
        "--allow-origin",
        action="append",
        metavar="PATTERN",
        help="web pages allowed to connect, by their Origin (a glob such as "
        "'https://*.example.com'; repeatable; default: any with authentication, else only "
        "http(s)://localhost, 127.0.0.1 and [::1]); clients that send no Origin are not checked",
    )


def _serve_actions() -> dict[str, argparse.Action]:
    """The ``serve`` options (but ``--config``), by name: what ``[server]`` may set."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_serve_options(parser)
    return {action.dest: action for action in parser._actions if action.dest != "config"}


def _add_ca_file(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--ca-file",
        metavar="FILE",
        help="for a wss:// URL: trust the CA certificates in FILE (PEM) instead of the system's",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-realtime",
        description="Run a trio_realtime broker, or publish, subscribe and query one.",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="how much to log to stderr (default: warning)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run a broker until Ctrl-C or SIGTERM",
        description="Run a broker until Ctrl-C or SIGTERM. Each option can also be set in "
        "the [server] table of a --config file (its name with _ for -); options given here "
        "override the file's.",
    )
    _add_serve_options(serve)
    serve.set_defaults(run=_serve)

    pub = commands.add_parser("pub", help="publish one event and wait for the broker's ack")
    pub.add_argument("url", help="the broker, e.g. ws://127.0.0.1:8765")
    pub.add_argument("topic")
    pub.add_argument("data", nargs="?", help="the event's data, as JSON (default: null)")
    pub.add_argument("--retain", action="store_true", help="keep it as the topic's last value")
    pub.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    _add_ca_file(pub)
    pub.set_defaults(run=_pub)

    sub = commands.add_parser("sub", help="print matching events, one JSON object per line")
    sub.add_argument("url")
    sub.add_argument("pattern")
    sub.add_argument("--pretty", action="store_true", help="a readable form for people")
    sub.add_argument("--group", help="join a queue group")
    sub.add_argument("--since", type=int, help="replay stored events after this seq first")
    sub.add_argument("--count", type=int, help="exit after this many events")
    _add_ca_file(sub)
    sub.set_defaults(run=_sub)

    request = commands.add_parser("request", help="send a request and print the reply's data")
    request.add_argument("url")
    request.add_argument("topic")
    request.add_argument("data", nargs="?", help="the request's data, as JSON")
    request.add_argument("--timeout", type=float, default=10.0, help="seconds (10)")
    request.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    _add_ca_file(request)
    request.set_defaults(run=_request)

    history = commands.add_parser("history", help="print stored events matching a pattern")
    history.add_argument("url")
    history.add_argument("pattern")
    history.add_argument("--since", type=int, help="only events after this seq")
    history.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    history.add_argument("--pretty", action="store_true", help="a readable form for people")
    _add_ca_file(history)
    history.set_defaults(run=_history)

    recover = commands.add_parser(
        "recover", help="copy what is readable of a damaged SQLite store into a new file"
    )
    recover.add_argument("file", help="the damaged store file (no broker may have it open)")
    recover.add_argument("--output", help="the new file (default: FILE.recovered)")
    recover.set_defaults(run=_recover)

    token = commands.add_parser(
        "token",
        help="print a new random token for user NAME (line 1), then the [[users]] lines of "
        "the config file that let it in (which hold only its SHA-256)",
    )
    token.add_argument("name", metavar="NAME", help="the user name: letters, digits, _ and -")
    token.set_defaults(run=_token)
    return parser


async def _until_signalled(command: Callable[[], Awaitable[None]]) -> None:
    """Run *command*; SIGINT or SIGTERM cancels it (and so ends it gracefully)."""
    with trio.CancelScope() as scope:

        async def watch(task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for _ in signals:
                    scope.cancel()
                    return

        async with open_service_nursery() as nursery:
            await nursery.start(watch)
            await command()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``trio-realtime`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        trio.run(_until_signalled, lambda: args.run(args))
    except KeyboardInterrupt:
        pass
    except (CommandError, RealtimeError, OSError, ValueError, trio.TooSlowError) as exc:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, trio.TooSlowError):
            message = "no reply within the timeout"
        print(f"trio-realtime {args.command}: error: {message}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # pragma: no cover - the reader of our output went away
        sys.exit(0)
    sys.exit(0)
