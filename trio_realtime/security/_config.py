"""The broker's config file: ``trio-realtime serve --config FILE`` (TOML).

:func:`load_config` reads it into a :class:`ServerConfig`: the ``[server]`` values (the
``serve`` options, by the names of their flags with ``_`` for ``-``), the static users, the
anonymous permissions, the JWT authenticator, and the one authenticator they make together.
The shape::

    [server]                          # any serve option; flags given on the command line win
    host = "127.0.0.1"
    port = 8765

    [cluster]                         # optional: serve's --cluster, --node, --cluster-prefix…
    servers = ["nats://127.0.0.1:4222"]
    node = "eu-1"

    [[users]]                         # static users (`trio-realtime token NAME` prints these)
    name = "alice"
    token_sha256 = "…64 hex digits…"
    certificate_subject = "CN=alice,O=Example"  # and/or a client certificate (mutual TLS)
    [users.permissions]               # optional: without it, the user may do nothing
    publish = { allow = ["orders.>"] }

    [anonymous.permissions]           # optional: connections without a token get these;
    subscribe = { allow = ["public.>"] }  # without [anonymous], they are refused

    [auth.jwt]                        # optional: JSON Web Tokens
    algorithms = ["RS256"]
    [[auth.jwt.keys]]
    kid = "k1"
    public_key_file = "k1.pem"        # relative to the config file's folder; or secret_env
    [auth.jwt.permissions]            # optional: for tokens without a `perm` claim

    [[webhooks]]                      # optional: POST matching events to an HTTP endpoint
    name = "audit"
    url = "https://audit.example.com/hooks"
    patterns = ["orders.>"]
    secret_env = "AUDIT_WEBHOOK_SECRET"  # whsec_…; a list of names while rotating

Every problem is a :exc:`ConfigError` whose message is one line:
``<file>: <key path>: <what is wrong>``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

import attrs

from ..integrations._webhooks import Webhook
from ._auth import (
    Authenticator,
    FirstOf,
    JWTAuthenticator,
    StaticUsers,
    User,
    check_user_name,
)
from ._certificates import check_certificate_subject
from ._permissions import Permissions

__all__ = ["SERVER_OPTIONS", "ConfigError", "ServerConfig", "load_config"]

OptionKind = Literal[
    "string", "integer", "number", "size", "patterns", "urls", "modules", "boolean"
]

#: The keys ``[server]`` takes, each with the TOML type of its value: every option of
#: ``trio-realtime serve`` (a test keeps this in step with the command line). A ``size`` is an
#: integer (bytes) or a string such as ``"16M"``; ``patterns``, ``urls`` and ``modules`` are
#: lists of strings.
SERVER_OPTIONS: Final[Mapping[str, OptionKind]] = {
    "host": "string",
    "port": "integer",
    "store": "string",
    "synchronous": "string",
    "max_events": "integer",
    "max_age": "number",
    "persist": "patterns",
    "max_bytes": "size",
    "name": "string",
    "heartbeat": "number",
    "advertise": "urls",
    "max_connections": "integer",
    "max_subscriptions": "integer",
    "max_retained": "integer",
    "max_message_size": "size",
    "max_pending_bytes": "size",
    "slow_consumer": "string",
    "handshake_timeout": "number",
    "publish_rate": "number",
    "user_publish_rate": "number",
    "publish_burst": "integer",
    "allow_anonymous": "boolean",
    "allow_origin": "patterns",
    "tls_cert": "string",
    "tls_key": "string",
    "tls_client_ca": "string",
    "http_port": "integer",
    "http_host": "string",
    "log_events": "boolean",
    "app": "modules",
    "cluster": "urls",
    "node": "string",
    "cluster_prefix": "string",
    "cluster_tls_ca": "string",
    "cluster_tls_cert": "string",
    "cluster_tls_key": "string",
}

#: The keys of ``[cluster]``, each with the ``[server]`` option it sets.
CLUSTER_KEYS: Final[Mapping[str, str]] = {
    "servers": "cluster",
    "node": "node",
    "prefix": "cluster_prefix",
    "tls_ca": "cluster_tls_ca",
    "tls_cert": "cluster_tls_cert",
    "tls_key": "cluster_tls_key",
}

_TOP_LEVEL: Final = ("server", "http", "users", "anonymous", "auth", "webhooks", "cluster")
_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_TOML_POSITION: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


class ConfigError(ValueError):
    """The config file is unreadable or wrong.

    ``str(exc)`` is one line, ``<file>: <key path>: <what is wrong>``, ready to print.
    """

    def __init__(self, file: str | os.PathLike[str], detail: str) -> None:
        #: The config file, as it was named.
        self.file: str = os.fspath(file)
        #: What is wrong, starting with the key path.
        self.detail: str = " ".join(detail.split())
        super().__init__(f"{self.file}: {self.detail}")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """What a config file says: see :func:`load_config`."""

    #: The file it was read from.
    path: Path
    #: The ``[server]`` values, by option name (checked for their TOML type only: the command
    #: line checks them as it checks its flags).
    server: Mapping[str, object]
    #: The ``[[users]]``, in order.
    users: tuple[User, ...] = ()
    #: The ``[anonymous]`` permissions; None if connections without a token are refused.
    anonymous: Permissions | None = None
    #: The ``[auth.jwt]`` authenticator, if any.
    jwt: JWTAuthenticator | None = None
    #: The ``[[webhooks]]``, in order (see :meth:`Broker.webhook
    #: <trio_realtime.Broker.webhook>`).
    webhooks: tuple[Webhook, ...] = ()

    @property
    def auth(self) -> Authenticator | None:
        """The authenticator the file configures, or None if it configures none.

        Static users (and ``[anonymous]``) only: a :class:`StaticUsers`; JWT only: the
        :class:`JWTAuthenticator`; both: :class:`FirstOf` the static users, then JWT.
        """
        static = (
            StaticUsers(self.users, anonymous=self.anonymous)
            if self.users or self.anonymous is not None
            else None
        )
        if static is not None and self.jwt is not None:
            return FirstOf([static, self.jwt])
        return static if static is not None else self.jwt

    @property
    def certificate_users(self) -> tuple[User, ...]:
        """The users who may prove who they are with a client certificate."""
        return tuple(user for user in self.users if user.certificate_subject is not None)

    def describe_auth(self) -> str:
        """One line on the authentication configured: ``2 users, jwt (1 key); …``."""
        parts = []
        if self.users:
            by_certificate = len(self.certificate_users)
            parts.append(
                f"{len(self.users)} user{'s' if len(self.users) != 1 else ''}"
                + (f" ({by_certificate} by client certificate)" if by_certificate else "")
            )
        if self.jwt is not None:
            keys = len(self.jwt.kids)
            parts.append(f"jwt ({keys} key{'s' if keys != 1 else ''})")
        if not parts and self.anonymous is None:
            return "none"
        anonymous = "refused" if self.anonymous is None else "the [anonymous] permissions"
        return f"{', '.join(parts) or 'no users'}; without a token: {anonymous}"


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Read the broker's config file at *path* (TOML): see the module's docstring.

    ``[[auth.jwt.keys]]`` and ``[[webhooks]]`` read their ``secret_env`` from *environ*
    (default: :data:`os.environ`), and the keys their ``public_key_file`` relative to the
    file's folder.

    Raises :exc:`ConfigError` (one line: the file, the key path, what is wrong) for a file
    that cannot be read or parsed, an unknown key, a value of the wrong type, a bad pattern
    or user name, a missing environment variable or an unreadable key file.
    """
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(path, f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"byte {exc.start}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise ConfigError(path, f"not valid TOML: {message}") from None
        where = f"line {position[1]}, column {position[2]}"
        raise ConfigError(path, f"{where}: {message[: position.start()]}") from None
    try:
        return _config(file, data, environ)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _check_keys(table: Mapping[str, object], where: str, known: tuple[str, ...]) -> None:
    unknown = [key for key in table if key not in known]
    if unknown:
        raise ValueError(
            f"{where}{'.' if where else ''}{unknown[0]}: unknown key (expected {', '.join(known)})"
        )


def _table(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a table, got {_kind(value)}")
    return value


def _config(
    file: Path, data: Mapping[str, object], environ: Mapping[str, str] | None
) -> ServerConfig:
    _check_keys(data, "", _TOP_LEVEL)
    server = _server(data.get("server", {}))
    if "http" in data:  # [http] host/port: the same as [server] http_host/http_port
        http = _table(data["http"], "http")
        _check_keys(http, "http", ("host", "port"))
        for key, value in http.items():
            option = f"http_{key}"
            if option in server:
                raise ValueError(f"http.{key}: given twice (also as server.{option})")
            server.update(_server({option: value}))
    if "cluster" in data:  # [cluster]: the cluster's [server] options, by shorter names
        cluster = _table(data["cluster"], "cluster")
        _check_keys(cluster, "cluster", tuple(CLUSTER_KEYS))
        for key, value in cluster.items():
            option = CLUSTER_KEYS[key]
            if option in server:
                raise ValueError(f"cluster.{key}: given twice (also as server.{option})")
            try:
                server.update(
                    _server(
                        {option: [value] if key == "servers" and isinstance(value, str) else value}
                    )
                )
            except ValueError as exc:
                raise ValueError(str(exc).replace(f"server.{option}", f"cluster.{key}")) from None
    users = _users(data.get("users", []))
    anonymous = None
    if "anonymous" in data:
        table = _table(data["anonymous"], "anonymous")
        _check_keys(table, "anonymous", ("permissions",))
        anonymous = _permissions(table.get("permissions", {}), "anonymous.permissions")
    jwt = None
    if "auth" in data:
        auth = _table(data["auth"], "auth")
        _check_keys(auth, "auth", ("jwt",))
        if "jwt" in auth:
            jwt = _jwt(_table(auth["jwt"], "auth.jwt"), file, environ)
    return ServerConfig(
        path=file,
        server=server,
        users=users,
        anonymous=anonymous,
        jwt=jwt,
        webhooks=_webhooks(data.get("webhooks", []), environ),
    )


def _webhooks(value: object, environ: Mapping[str, str] | None) -> tuple[Webhook, ...]:
    if not isinstance(value, list):
        raise ValueError(
            f"webhooks: expected an array of tables ([[webhooks]]), got {_kind(value)}"
        )
    hooks: dict[str, Webhook] = {}
    for i, item in enumerate(value):
        where = f"webhooks[{i}]"
        hook = Webhook.from_config(_table(item, where), where=where, environ=environ)
        if hook.name in hooks:
            raise ValueError(f"{where}.name: {hook.name!r} is already another webhook's")
        hooks[hook.name] = hook
    return tuple(hooks.values())


def _server(value: object) -> dict[str, object]:
    table = _table(value, "server")
    _check_keys(table, "server", tuple(SERVER_OPTIONS))
    for key, item in table.items():
        kind = SERVER_OPTIONS[key]
        fits = {
            "string": isinstance(item, str),
            "integer": isinstance(item, int) and not isinstance(item, bool),
            "number": isinstance(item, int | float) and not isinstance(item, bool),
            "size": isinstance(item, int | str) and not isinstance(item, bool),
            "patterns": isinstance(item, list) and all(isinstance(p, str) for p in item),
            "urls": isinstance(item, list) and all(isinstance(u, str) for u in item),
            "modules": isinstance(item, list) and all(isinstance(m, str) for m in item),
            "boolean": isinstance(item, bool),
        }[kind]
        if not fits:
            wanted = {
                "string": "a string",
                "integer": "an integer",
                "number": "a number",
                "size": 'a size (bytes, or a string such as "16M")',
                "patterns": "an array of patterns (strings)",
                "urls": "an array of URLs (strings)",
                "modules": "an array of module names (strings)",
                "boolean": "true or false",
            }[kind]
            raise ValueError(f"server.{key}: expected {wanted}, got {_kind(item)}")
    return dict(table)


def _permissions(value: object, where: str) -> Permissions:
    try:
        return Permissions.from_dict(_table(value, where), where=where)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _users(value: object) -> tuple[User, ...]:
    if not isinstance(value, list):
        raise ValueError(f"users: expected an array of tables ([[users]]), got {_kind(value)}")
    users: list[User] = []
    names: dict[str, int] = {}
    hashes: dict[str, int] = {}
    subjects: dict[str, int] = {}
    for i, item in enumerate(value):
        where = f"users[{i}]"
        table = _table(item, where)
        _check_keys(table, where, ("name", "token_sha256", "certificate_subject", "permissions"))
        if "name" not in table:
            raise ValueError(f"{where}.name: missing (`trio-realtime token NAME` prints it)")
        try:
            name = check_user_name(table["name"], allow_anonymous=False)
        except ValueError as exc:
            raise ValueError(f"{where}.name: {exc}") from None
        if name in names:
            raise ValueError(f"{where}.name: {name!r} is already users[{names[name]}]")
        names[name] = i
        digest = _user_digest(table, where, name, hashes)
        subject = _user_subject(table, where, subjects)
        if digest is None and subject is None:
            raise ValueError(
                f"{where}.token_sha256: missing (`trio-realtime token {name}` prints it), and "
                f"no certificate_subject either: give one or both"
            )
        if digest is not None:
            hashes[digest] = i
        if subject is not None:
            subjects[subject] = i
        permissions = _permissions(table.get("permissions", {}), f"{where}.permissions")
        users.append(User(name, digest, permissions, certificate_subject=subject))
    return tuple(users)


def _user_digest(
    table: Mapping[str, object], where: str, name: str, hashes: Mapping[str, int]
) -> str | None:
    """A user's ``token_sha256`` (lowercase), or None without one."""
    if "token_sha256" not in table:
        return None
    digest = table["token_sha256"]
    if not isinstance(digest, str) or _SHA256_HEX.fullmatch(digest) is None:
        raise ValueError(
            f"{where}.token_sha256: expected 64 hex digits (the SHA-256 of the token, "
            f"never the token: `trio-realtime token {name}` prints it)"
        )
    digest = digest.lower()
    if digest in hashes:
        raise ValueError(
            f"{where}.token_sha256: the same as users[{hashes[digest]}]'s: give each "
            f"user its own token (`trio-realtime token {name}`)"
        )
    return digest


def _user_subject(
    table: Mapping[str, object], where: str, subjects: Mapping[str, int]
) -> str | None:
    """A user's ``certificate_subject``, or None without one."""
    if "certificate_subject" not in table:
        return None
    try:
        subject = check_certificate_subject(table["certificate_subject"])
    except ValueError as exc:
        raise ValueError(f"{where}.certificate_subject: {exc}") from None
    if subject in subjects:
        raise ValueError(
            f"{where}.certificate_subject: the same as users[{subjects[subject]}]'s: a "
            f"certificate may prove one user only"
        )
    return subject


_JWT_KEYS: Final = ("algorithms", "audience", "issuer", "leeway", "keys", "permissions")


def _jwt(
    table: Mapping[str, object], file: Path, environ: Mapping[str, str] | None
) -> JWTAuthenticator:
    _check_keys(table, "auth.jwt", _JWT_KEYS)
    options = dict(table)
    permissions = None
    if "permissions" in options:
        permissions = _permissions(options.pop("permissions"), "auth.jwt.permissions")
    try:
        return JWTAuthenticator.from_config(
            options, where="auth.jwt", environ=environ, base=file.parent, permissions=permissions
        )
    except ImportError as exc:
        raise ValueError(f"auth.jwt: {exc}") from None
    except ValueError as exc:
        message = str(exc)
        raise ValueError(
            message if message.startswith("auth.jwt") else f"auth.jwt: {message}"
        ) from None
