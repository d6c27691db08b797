"""``trio-realtime serve``: run a broker, with options from the command line and a config file.

The options come from the command line, else the ``--config`` file's ``[server]`` table,
else :data:`SERVE_DEFAULTS`. The port is bound before the store is opened: a port in use
leaves no new database file behind.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import ssl
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, cast

import trio

from .._errors import StoreError
from .._util import open_service_nursery
from ..broker._core import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_SUBSCRIPTIONS,
    descriptor_limit,
)
from ..bus._retained import DEFAULT_MAX_RETAINED
from ._asyncapi import import_apps
from ._common import (
    CommandError,
    listen_port,
    positive_float,
    positive_int,
    size,
    ssl_reason,
    write,
)

if TYPE_CHECKING:
    from ..cluster import ClusterOptions
    from ..security import ServerConfig
    from ..store import Store

__all__ = [
    "DEFAULT_STORE",
    "SERVE_DEFAULTS",
    "add_serve_options",
    "check_exposure",
    "cluster_options",
    "is_loopback",
    "open_store",
    "serve",
    "serve_actions",
    "serve_settings",
    "server_ssl_context",
]

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
    "http_host": "127.0.0.1",
    "log_events": False,
}


def _describe_rate(rate: float | None) -> str:
    return "none" if rate is None else f"{rate:g}/s"


def open_store(
    spec: str,
    *,
    synchronous: Literal["normal", "full"] = "normal",
    max_events: int | None = None,
    max_age: float | None = None,
    max_bytes: int | None = None,
    cluster: ClusterOptions | None = None,
) -> Store | None:
    """The store a ``--store`` option names: ``sqlite:PATH``, ``memory``, ``none``, or
    ``jetstream[:STREAM]`` (with *cluster*: the stream on the cluster's NATS).

    A ``memory`` store given no retention limit at all keeps at most
    :data:`~trio_realtime.store.DEFAULT_MEMORY_MAX_EVENTS` events and
    :data:`~trio_realtime.store.DEFAULT_MEMORY_MAX_BYTES` of them, so that a broker cannot
    fill its memory with stored events; any limit given replaces both. *max_bytes* is for a
    ``memory`` or ``jetstream`` store only.
    """
    from ..store import (
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
                "--max-bytes limits a memory store only (or a jetstream one): bound a sqlite "
                "store with --max-events or --max-age"
            )
        return SQLiteStore(path, synchronous=synchronous, max_events=max_events, max_age=max_age)
    if kind == "jetstream" and (path or not sep):
        return _jetstream_store(path, cluster, max_events, max_age, max_bytes)
    raise CommandError(
        f"--store takes sqlite:PATH, memory, jetstream[:STREAM] or none, not {spec!r}"
    )


def jetstream_stream(prefix: str) -> str:
    """The stream ``--store jetstream`` uses on a cluster of subject prefix *prefix*:
    ``TRIO_REALTIME``, or ``TRIO_REALTIME_<PREFIX>`` for a prefix other than the default."""
    from ..cluster import DEFAULT_PREFIX
    from ..store._jetstream import DEFAULT_STREAM

    if prefix == DEFAULT_PREFIX:
        return DEFAULT_STREAM
    return f"{DEFAULT_STREAM}_{prefix.upper().replace('.', '_')}"


def _jetstream_store(
    stream: str,
    cluster: ClusterOptions | None,
    max_events: int | None,
    max_age: float | None,
    max_bytes: int | None,
) -> Store:
    """The JetStreamStore of ``--store jetstream[:STREAM]``: on the cluster's NATS (its
    credentials and TLS too), the subjects ``<cluster prefix>s.<topic>``."""
    if cluster is None:
        raise CommandError(
            "--store jetstream keeps the events in the cluster's NATS: give its URL with --cluster"
        )
    from ..store import JetStreamStore

    try:
        return JetStreamStore(
            list(cluster.servers),
            stream or jetstream_stream(cluster.prefix),
            subject_prefix=f"{cluster.prefix}s",
            max_events=max_events,
            max_age=max_age,
            max_bytes=max_bytes,
            name=f"trio-realtime {cluster.node} store",
            tls=cluster.tls,
            user=cluster.user,
            password=cluster.password,
            token=cluster.token,
        )
    except ValueError as exc:
        raise CommandError(f"--store {stream or 'jetstream'}: {exc}") from None


def _describe_store(spec: str, store: Store | None) -> str:
    if store is None:
        return "none (events are not stored)"
    stream = getattr(store, "stream", None)
    if stream is not None:  # (a JetStreamStore)
        spec = f"jetstream, stream {stream} (subjects {getattr(store, 'subject_prefix', '')}.>)"
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
    from .._transport import LOCAL_ORIGINS

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
            f"cannot use the TLS certificate {cert} with the key {key}: {ssl_reason(exc)}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise CommandError(
                f"cannot use the client CA file {client_ca}: {ssl_reason(exc)}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


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
    from ..security import ConfigError

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
_TLS_FILES: Final = (
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "cluster_tls_ca",
    "cluster_tls_cert",
    "cluster_tls_key",
)
#: The ``serve`` options of a cluster (but ``--cluster`` itself).
_CLUSTER_OPTIONS: Final = (
    "node",
    "cluster_prefix",
    "cluster_tls_ca",
    "cluster_tls_cert",
    "cluster_tls_key",
)


def cluster_options(args: argparse.Namespace) -> ClusterOptions | None:
    """The :class:`~trio_realtime.cluster.ClusterOptions` of ``--cluster`` and its companion
    options (None without ``--cluster``).

    Raises:
        CommandError: for a companion option without ``--cluster``, a bad URL, node name or
            prefix, an unusable TLS file, or without the ``nats`` extra.
    """
    if not args.cluster:
        given = [name for name in _CLUSTER_OPTIONS if getattr(args, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise CommandError(f"{flag} is for a cluster: give the NATS URL with --cluster")
        return None
    import importlib.util

    if importlib.util.find_spec("nats") is None or importlib.util.find_spec("trio_asyncio") is None:
        raise CommandError("--cluster needs the nats extra: pip install 'trio-realtime[nats]'")
    from ..cluster import DEFAULT_PREFIX, ClusterOptions
    from ..cluster._options import default_node_name

    tls = None
    if (args.cluster_tls_cert is None) != (args.cluster_tls_key is None):
        raise CommandError(
            "--cluster-tls-cert and --cluster-tls-key go together: give both, or neither"
        )
    if args.cluster_tls_ca is not None or args.cluster_tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        try:
            if args.cluster_tls_ca is not None:
                tls.load_verify_locations(cafile=args.cluster_tls_ca)
            if args.cluster_tls_cert is not None:
                tls.load_cert_chain(args.cluster_tls_cert, args.cluster_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise CommandError(f"cannot use the cluster's TLS files: {ssl_reason(exc)}") from None
    try:
        return ClusterOptions(
            servers=args.cluster,
            node=args.node if args.node is not None else default_node_name(),
            prefix=args.cluster_prefix if args.cluster_prefix is not None else DEFAULT_PREFIX,
            tls=tls,
        )
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def serve_settings(args: argparse.Namespace, config: ServerConfig | None) -> argparse.Namespace:
    """Every ``serve`` option: the flag if given, else the config file's, else the default."""
    settings = argparse.Namespace()
    for dest, action in serve_actions().items():
        value = getattr(args, dest, None)
        if value is None and config is not None and dest in config.server:
            value = _file_value(config, action, config.server[dest])
        if value is None:
            value = SERVE_DEFAULTS.get(dest)
        setattr(settings, dest, value)
    return settings


async def _check_can_listen(host: str, port: int) -> None:
    """Bind *host*:*port* and let it go again, so that a port in use fails the start before
    the store is opened (and leaves no new database file behind). Port 0 always binds."""
    if port == 0:
        return
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc}") from None
    for listener in listeners:
        await listener.aclose()


async def serve(args: argparse.Namespace) -> None:
    """Run the broker the options describe until cancelled."""
    from ..broker._broker import Broker
    from ..security import load_config

    config = load_config(args.config) if args.config is not None else None
    args = serve_settings(args, config)
    import_apps(args.app or [])
    auth_line = check_exposure(args.host, config, allow_anonymous=args.allow_anonymous)
    if config is not None and config.certificate_users and args.tls_client_ca is None:
        raise CommandError(
            f"{config.path} gives users a certificate_subject, but without --tls-client-ca "
            "(tls_client_ca in [server]) no client certificate is asked for or verified: give "
            "the CA file that signs your clients' certificates (and --tls-cert, --tls-key)"
        )
    ssl_context = server_ssl_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    if args.http_port is not None:  # (the broker binds its own port before its store)
        await _check_can_listen(args.http_host, args.http_port)
    cluster = cluster_options(args)
    store = open_store(
        args.store,
        synchronous=args.synchronous,
        max_events=args.max_events,
        max_age=args.max_age,
        max_bytes=args.max_bytes,
        cluster=cluster,
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
            advertise_urls=args.advertise or (),
            cluster=cluster,
        )
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    for hook in config.webhooks if config is not None else ():
        try:
            broker.webhook(**hook.arguments())
        except ImportError as exc:
            raise CommandError(f"[[webhooks]] are configured, but {exc}") from None
    async with open_service_nursery() as nursery:
        try:
            server = await nursery.start(
                partial(broker.serve, ssl_context=ssl_context), args.host, args.port
            )
        except StoreError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
        write(f"trio-realtime broker {args.name!r} listening on {server.url}\n")
        write(f"store: {_describe_store(args.store, store)}\n")
        descriptors = descriptor_limit()
        write(
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
            f"publish_burst={args.publish_burst}\n"
        )
        write(f"auth: {auth_line}\n")
        write(f"origins: {_describe_origins(broker.allowed_origins)}\n")
        write(f"tls: {_describe_tls(args.tls_cert, args.tls_client_ca)}\n")
        if cluster is not None:
            write(
                f"cluster: node {cluster.node!r} through NATS at {cluster.shown_servers()} "
                f"(subjects {cluster.prefix}.>)\n"
            )
        if config is not None and config.webhooks:
            hooks = ", ".join(f"{hook.name} ({hook.origin})" for hook in config.webhooks)
            write(f"webhooks: {hooks}\n")
        if broker.advertise_urls:
            write(f"advertised nodes: {', '.join(broker.advertise_urls)}\n")
        if args.http_port is not None:
            try:
                http = await nursery.start(
                    partial(broker.serve_http, ws_url=server.url), args.http_host, args.http_port
                )
            except ImportError as exc:
                raise CommandError(str(exc)) from None
            except OSError as exc:
                where = f"{args.http_host}:{args.http_port}"
                raise CommandError(f"cannot listen on {where}: {exc}") from None
            write(f"http: {http.url} (the dashboard at /; /metrics, /healthz, /readyz)\n")
        if args.log_events:
            from ..logging import open_event_log_handler

            write("log events: the broker's log records are published on log.<level>.<logger>\n")
            async with open_event_log_handler(broker.bus, attach_to="trio_realtime"):
                await trio.sleep_forever()
        await trio.sleep_forever()


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    """The options of ``serve``, each one of :data:`SERVE_DEFAULTS` or without a default.

    None of them has an argparse default, so that a flag given on the command line can be
    told from one that was not, which the ``--config`` file's value then fills in.
    """
    serve.add_argument(
        "--host",
        help="address to listen on (127.0.0.1); any but a loopback address needs "
        "authentication or --allow-anonymous",
    )
    serve.add_argument(
        "--port", type=listen_port, help="port to listen on, 1-65535, or 0 for any free one (8765)"
    )
    serve.add_argument(
        "--store",
        help=f"sqlite:PATH, memory, jetstream[:STREAM] (in the --cluster's NATS) or none "
        f"(default: {DEFAULT_STORE}, in this directory)",
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
        type=size,
        metavar="SIZE",
        help="keep at most this many bytes of stored events (memory or jetstream store only; a "
        "memory store given no limit keeps 100,000 events and 256M)",
    )
    serve.add_argument("--name", help="the broker's name")
    serve.add_argument(
        "--heartbeat",
        type=positive_float,
        metavar="SECONDS",
        help="ping a silent client after this long; close it if it stays silent as long again (30)",
    )
    serve.add_argument(
        "--advertise",
        action="append",
        metavar="URL",
        help="the ws:// (or wss://) URL of another node of this broker's cluster, as clients "
        "reach it: clients are told (welcome.nodes) and fail over to it (repeatable, at most 32)",
    )
    limits = serve.add_argument_group(
        "limits", "what one client can make the broker hold (see the deployment guide)"
    )
    limits.add_argument(
        "--max-connections",
        type=positive_int,
        metavar="N",
        help="clients at once; one more is refused with HTTP 503 (default: the file "
        "descriptor limit less 128, at most 65536)",
    )
    limits.add_argument(
        "--max-subscriptions",
        type=positive_int,
        metavar="N",
        help=f"subscriptions per connection ({DEFAULT_MAX_SUBSCRIPTIONS})",
    )
    limits.add_argument(
        "--max-retained",
        type=positive_int,
        metavar="N",
        help=f"retained values; one more evicts the oldest ({DEFAULT_MAX_RETAINED})",
    )
    limits.add_argument(
        "--max-message-size",
        type=size,
        metavar="SIZE",
        help="largest message a client may send, and the broker sends (1M)",
    )
    limits.add_argument(
        "--max-pending-bytes",
        type=size,
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
        type=positive_float,
        metavar="PER_SECOND",
        help="publishes per second one connection may make (no limit by default)",
    )
    limits.add_argument(
        "--user-publish-rate",
        type=positive_float,
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
        type=positive_float,
        metavar="SECONDS",
        help="for a new connection's WebSocket handshake, and then its hello (10)",
    )
    cluster = serve.add_argument_group(
        "cluster", "several brokers sharing one event space through NATS (see the cluster guide)"
    )
    cluster.add_argument(
        "--cluster",
        action="append",
        metavar="URL",
        help="join the cluster of the brokers that use this NATS server: nats://HOST:PORT "
        "or tls://HOST:PORT, user:password@ or token@ before the host if it asks "
        "(repeatable, or comma-separated; needs the nats extra)",
    )
    cluster.add_argument(
        "--node",
        help="this broker's name in the cluster, unique among its nodes (default: HOSTNAME-PID)",
    )
    cluster.add_argument(
        "--cluster-prefix",
        metavar="PREFIX",
        help="the NATS subject prefix: events travel on PREFIX.<topic> (tr); deployments "
        "sharing one NATS need different ones",
    )
    cluster.add_argument(
        "--cluster-tls-ca",
        metavar="FILE",
        help="verify the NATS server's certificate with the CAs in FILE (PEM; tls:// URLs)",
    )
    cluster.add_argument(
        "--cluster-tls-cert",
        metavar="FILE",
        help="present this client certificate to NATS (PEM; with --cluster-tls-key)",
    )
    cluster.add_argument(
        "--cluster-tls-key", metavar="FILE", help="the private key of --cluster-tls-cert (PEM)"
    )
    operations = serve.add_argument_group(
        "operations", "watching the broker (see the operations guide)"
    )
    operations.add_argument(
        "--http-port",
        type=listen_port,
        metavar="PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz on this port (0: any free "
        "one; none by default; needs the http extra)",
    )
    operations.add_argument(
        "--http-host",
        help="address of the HTTP port (127.0.0.1: it has no authentication, keep it private)",
    )
    operations.add_argument(
        "--app",
        action="append",
        metavar="MODULE",
        help="import MODULE (a dotted name, such as myapp.events) before serving, so that its "
        "event types are described at /asyncapi.json; repeatable",
    )
    operations.add_argument(
        "--log-events",
        action="store_true",
        default=None,
        help="also publish the broker's own log records as events on log.<level>.<logger> "
        "(tail them with: trio-realtime sub 'log.>'; stored like any topic unless --persist "
        "leaves log.> out)",
    )
    security = serve.add_argument_group("security", "who may connect (see the security guide)")
    security.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file: [server] options (the flags given here override them), [cluster], "
        "[[users]], [anonymous] and [auth.jwt]",
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


def serve_actions() -> dict[str, argparse.Action]:
    """The ``serve`` options (but ``--config``), by name: what ``[server]`` may set."""
    parser = argparse.ArgumentParser(add_help=False)
    add_serve_options(parser)
    return {action.dest: action for action in parser._actions if action.dest != "config"}
