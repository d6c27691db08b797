"""Authenticators: who a connection is, from the token of its ``hello``.

An :class:`Authenticator` turns a token (or its absence) and what is known of the WebSocket
handshake (:class:`HandshakeInfo`) into an :class:`Identity` (a user name, its permissions and
when the credential expires), or raises :exc:`AuthFailed`. Three are built in:

* :class:`StaticUsers`: users from the config file, each known by the SHA-256 of its token
  (``trio-realtime token NAME`` makes one), by the subject of its client certificate (mutual
  TLS), or both; optionally an anonymous identity for connections without a token;
* :class:`JWTAuthenticator`: JSON Web Tokens verified with PyJWT (the ``jwt`` extra), keys
  selected by ``kid``;
* :class:`FirstOf`: several of them, tried in order.

Any object with the :class:`Authenticator` method is one too: that is the hook for an external
system (an identity provider, a database, the role NATS's auth callout plays).

Nothing here ever puts token material (a token, a secret, a signature) in an exception, a log
line or a ``repr``: :exc:`AuthFailed` says ``authentication failed`` to the peer, and keeps a
short reason from a fixed vocabulary for the broker's log.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import attrs
import trio

from .._errors import RealtimeError
from ._certificates import check_certificate_subject
from ._jwt_keys import (
    EC_CURVES,
    HMAC_MIN_BYTES,
    JWT_ALGORITHMS,
    KeyKind,
    import_jwt,
    is_pem,
    key_kind,
    load_public_key,
    read_pem,
    secret_from_env,
)
from ._permissions import Permissions

__all__ = [
    "ANONYMOUS_USER",
    "JWT_ALGORITHMS",
    "MAX_JWT_SIZE",
    "MAX_TOKEN_SIZE",
    "MAX_USER_NAME_LENGTH",
    "AuthFailed",
    "Authenticator",
    "FirstOf",
    "HandshakeInfo",
    "Identity",
    "JWTAuthenticator",
    "JWTKey",
    "StaticUsers",
    "User",
    "check_user_name",
    "is_valid_user_name",
    "new_token",
    "token_sha256",
]

#: The longest user name, in characters.
MAX_USER_NAME_LENGTH: Final = 128
#: The user name of a connection that gave no token, when :class:`StaticUsers` lets it in.
#: It is reserved: no :class:`User` and no JWT ``sub`` may take it.
ANONYMOUS_USER: Final = "anonymous"
#: The longest static token :class:`StaticUsers` looks at, in characters; a longer one is
#: refused without being hashed. (:func:`new_token` makes tokens of 43 characters.)
MAX_TOKEN_SIZE: Final = 4096
#: The longest JWT :class:`JWTAuthenticator` looks at, in characters (room for a ``perm``
#: claim); a longer one is refused without being parsed.
MAX_JWT_SIZE: Final = 16384

# A user name is one topic token (so that it can name per-user topics, `users.<name>.>`) and
# safe in a log line: no '.', no wildcard, no '$', no space, no control character.
_USER_NAME: Final = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_USER_NAME_LENGTH}}}")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_GENERIC: Final = "authentication failed"


class AuthFailed(RealtimeError):
    """A connection's credentials were refused.

    ``str(exc)`` is always ``authentication failed``: safe to send to the peer (``error`` code
    ``auth_failed``), and it tells an attacker nothing. :attr:`reason` says why, for the
    broker's log and ``$sys.auth.failed``; it is never token material (no token, secret,
    signature, nor any unverified text from the token).
    """

    #: The error code of an authentication refusal on the wire.
    CODE: Final = "auth_failed"

    def __init__(self, reason: str = _GENERIC) -> None:
        super().__init__(_GENERIC)
        #: Why the credentials were refused (for the operator, not the peer).
        self.reason: str = reason

    def __repr__(self) -> str:
        return f"AuthFailed(reason={self.reason!r})"


def is_valid_user_name(name: object) -> bool:
    """Whether *name* may be a user name: 1 to 128 of ``A-Z a-z 0-9 _ -``.

    That is one topic token, so a name can be used in topics (``users.<name>.>``) and logs
    as it is: ``.``, ``*``, ``>``, ``$``, ``@``, spaces and anything else are refused.
    """
    return isinstance(name, str) and _USER_NAME.fullmatch(name) is not None


def check_user_name(
    name: object, *, what: str = "a user name", allow_anonymous: bool = True
) -> str:
    """Return *name* if :func:`is_valid_user_name`; else raise :exc:`ValueError` saying why.

    With ``allow_anonymous=False``, the reserved :data:`ANONYMOUS_USER` is refused too (for
    the name of a credential). The message quotes at most 40 characters of *name*: use it for
    names from config files and command lines, not from tokens.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, not {type(name).__name__}")
    if not is_valid_user_name(name):
        shown = repr(name[:40]) + ("…" if len(name) > 40 else "")
        raise ValueError(
            f"{what} must be 1 to {MAX_USER_NAME_LENGTH} letters, digits, '_' or '-', not {shown}"
        )
    if not allow_anonymous and name == ANONYMOUS_USER:
        raise ValueError(
            f"{what} must not be {ANONYMOUS_USER!r}: that name is reserved for connections "
            f"without a token (configure them with [anonymous])"
        )
    return name


def new_token() -> str:
    """A new random token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    """The hex SHA-256 of *token* (UTF-8): what a config file holds instead of the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _user_name_validator(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    check_user_name(value, what=attribute.name)


@attrs.frozen
class HandshakeInfo:
    """What an authenticator may know of the connection besides its token."""

    #: The peer's address, ``"host:port"``, when known.
    remote: str | None = None
    #: The handshake's ``Origin`` header, when it had one (browsers send it).
    origin: str | None = None
    #: The WebSocket subprotocol agreed on, if any.
    subprotocol: str | None = None
    #: The subject of the client certificate the TLS handshake verified (mutual TLS), as an
    #: RFC 4514 string such as ``"CN=alice,O=Example"``; None without one.
    certificate_subject: str | None = None


@attrs.frozen
class Identity:
    """Who a connection is: what an :class:`Authenticator` returns.

    Raises :exc:`ValueError` if *user* is not a valid user name (see
    :func:`is_valid_user_name`), so a custom authenticator cannot hand the broker a name that
    would break a topic or a log line.
    """

    #: The user name: 1 to 128 of ``A-Z a-z 0-9 _ -``.
    user: str = attrs.field(validator=_user_name_validator)
    #: What the connection may do.
    permissions: Permissions
    #: When the credential expires, in UNIX time (seconds), such as a JWT's ``exp``; None if
    #: it never does.
    expires: float | None = None


class Authenticator(Protocol):
    """Decides who a connection is, from its token and its handshake.

    Write one to plug in any external system (an identity provider, a database: the role of
    NATS's auth callout). The broker calls :meth:`authenticate` in the connection's own task,
    once per ``hello`` (and per ``refresh``); it also bounds the call by its handshake
    timeout, but an authenticator that waits on the network should bound its own time
    (``trio.fail_after``) and raise :exc:`AuthFailed` when it runs out, so the reason is
    logged.
    """

    async def authenticate(self, token: str | None, handshake: HandshakeInfo) -> Identity:
        """The identity *token* proves (*token* is None if the client sent none).

        Raises :exc:`AuthFailed` (with a reason, never the token) to refuse it. Any other
        exception is a bug of the authenticator: the broker refuses the connection and logs it.
        """
        ...


def _sha256_validator(
    _instance: object, attribute: attrs.Attribute[str | None], value: object
) -> None:
    if value is None:
        return
    if not isinstance(value, str) or _SHA256_HEX.fullmatch(value) is None:
        raise ValueError(
            f"{attribute.name} must be 64 lowercase hex digits (the SHA-256 of the token; "
            f"`trio-realtime token NAME` prints it)"
        )


def _subject_validator(
    _instance: object, attribute: attrs.Attribute[str | None], value: object
) -> None:
    if value is not None:
        check_certificate_subject(value, what=attribute.name)


@attrs.frozen
class User:
    """A user of :class:`StaticUsers`: a name, how it proves who it is, and permissions.

    It proves it with a token (:attr:`token_sha256`), with a client certificate
    (:attr:`certificate_subject`), or with either: at least one of the two is needed. The
    name ``anonymous`` is reserved (:data:`ANONYMOUS_USER`).

    Raises :exc:`ValueError` for a bad name, hash or subject, or neither a hash nor a subject.
    """

    #: The user name (see :func:`is_valid_user_name`).
    name: str = attrs.field()
    #: The hex SHA-256 of the user's token (64 lowercase hex digits): see :func:`token_sha256`;
    #: None if the user has no token.
    token_sha256: str | None = attrs.field(default=None, validator=_sha256_validator, repr=False)
    #: What the user may do (by default, nothing).
    permissions: Permissions = attrs.field(factory=Permissions.nothing)
    #: The subject of the user's client certificate, exactly as the broker shows it (an
    #: RFC 4514 string such as ``"CN=alice,O=Example"``: see
    #: :attr:`HandshakeInfo.certificate_subject`); None if the user has none.
    certificate_subject: str | None = attrs.field(
        default=None, validator=_subject_validator, kw_only=True
    )

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        check_user_name(value, what=attribute.name, allow_anonymous=False)

    def __attrs_post_init__(self) -> None:
        if self.token_sha256 is None and self.certificate_subject is None:
            raise ValueError(
                f"user {self.name!r} needs a token_sha256, a certificate_subject, or both"
            )


async def _checkpoint() -> None:
    # Each authenticate() is a checkpoint, as Trio's own async functions are.
    await trio.lowlevel.checkpoint()


class StaticUsers:
    """Users known in advance, each by the SHA-256 of its token, its client certificate's
    subject, or both.

    A token is hashed and compared with every user's hash with :func:`hmac.compare_digest`,
    all of them every time, so neither the time taken nor an early exit tells which user (if
    any) came close. A connection that sends a token is judged by it alone, whatever
    certificate it presented. A token longer than :data:`MAX_TOKEN_SIZE` is refused without
    being hashed.

    A connection without a token (None or ``""``) is the user whose
    :attr:`~User.certificate_subject` equals, exactly, the subject of the client certificate
    its TLS handshake verified (:attr:`HandshakeInfo.certificate_subject`). Failing that, it
    gets the identity :data:`ANONYMOUS_USER` with the *anonymous* permissions if they are
    given, else is refused. A wrong token is refused even then (it is never downgraded to a
    certificate's user or to anonymous).

    Raises :exc:`ValueError` if two users share a name, a token hash or a certificate subject.
    """

    def __init__(self, users: Sequence[User], *, anonymous: Permissions | None = None) -> None:
        names: set[str] = set()
        hashes: set[str] = set()
        subjects: dict[str, User] = {}
        for user in users:
            if user.name in names:
                raise ValueError(f"two users are named {user.name!r}")
            if user.token_sha256 in hashes:
                raise ValueError(
                    f"user {user.name!r} has the token_sha256 of another user: give each "
                    f"user its own token (`trio-realtime token {user.name}`)"
                )
            subject = user.certificate_subject
            if subject is not None and subject in subjects:
                raise ValueError(
                    f"users {subjects[subject].name!r} and {user.name!r} have the same "
                    f"certificate_subject {subject!r}: a certificate may prove one user only"
                )
            names.add(user.name)
            if user.token_sha256 is not None:
                hashes.add(user.token_sha256)
            if subject is not None:
                subjects[subject] = user
        self._all: tuple[User, ...] = tuple(users)
        self._by_token: tuple[tuple[bytes, User], ...] = tuple(
            (user.token_sha256.encode("ascii"), user)
            for user in users
            if user.token_sha256 is not None
        )
        self._by_subject: Mapping[str, User] = subjects
        #: The permissions of a connection without a token; None if one is refused.
        self.anonymous: Permissions | None = anonymous

    @property
    def users(self) -> tuple[User, ...]:
        """The users, in the order given."""
        return self._all

    def __repr__(self) -> str:
        return (
            f"StaticUsers(users={[user.name for user in self.users]!r}, "
            f"anonymous={'allowed' if self.anonymous is not None else 'refused'})"
        )

    async def authenticate(self, token: str | None, handshake: HandshakeInfo) -> Identity:
        """The user whose token this is; without a token, the user whose certificate the
        connection presented, or the anonymous identity."""
        await _checkpoint()
        if not token:
            subject = handshake.certificate_subject
            if subject is not None and subject in self._by_subject:
                user = self._by_subject[subject]
                return Identity(user.name, user.permissions)
            if self.anonymous is None:
                if subject is None:
                    raise AuthFailed("no token, and anonymous access is off")
                raise AuthFailed(
                    f"no token, no user with the certificate subject "
                    f"{_shorten(repr(subject))}, and anonymous access is off"
                )
            return Identity(ANONYMOUS_USER, self.anonymous)
        if not isinstance(token, str):
            raise AuthFailed("the token is not a string")
        if len(token) > MAX_TOKEN_SIZE:
            raise AuthFailed(f"the token is longer than {MAX_TOKEN_SIZE} characters")
        digest = token_sha256(token).encode("ascii")
        found: User | None = None
        for expected, user in self._by_token:
            # No early exit: every hash is compared, whatever matched before.
            if hmac.compare_digest(digest, expected):
                found = user
        if found is None:
            raise AuthFailed("unknown token")
        return Identity(found.name, found.permissions)


@attrs.frozen
class JWTKey:
    """One key :class:`JWTAuthenticator` verifies tokens with, named by its ``kid``.

    Give exactly one of *secret* (for HS256, HS384, HS512) and *public_key* (a PEM public key:
    RSA for RS*/PS*, EC for ES*, Ed25519 or Ed448 for EdDSA). A key verifies only algorithms
    of its kind, whatever a token's header says; *algorithm*, if given, restricts it to one.
    Secrets and keys never appear in the ``repr``.

    Raises :exc:`ValueError` if both or neither are given, if *kid* is empty, if the secret is
    shorter than 32 bytes or looks like a PEM key.
    """

    #: The key id: a token's header ``kid`` selects this key.
    kid: str
    #: The HMAC secret (HS* algorithms).
    secret: bytes | None = attrs.field(default=None, repr=False)
    #: The PEM public key (RS*, PS*, ES*, EdDSA).
    public_key: str | bytes | None = attrs.field(default=None, repr=False)
    #: The one algorithm this key may verify, or None for any of its kind.
    algorithm: str | None = None

    def __attrs_post_init__(self) -> None:
        kid: object = self.kid
        if not isinstance(kid, str) or not kid:
            raise ValueError("a JWT key's kid must be a non-empty string")
        if (self.secret is None) == (self.public_key is None):
            raise ValueError(
                f"JWT key {self.kid!r}: give exactly one of secret (HS*) and public_key "
                f"(RS*, PS*, ES*, EdDSA)"
            )
        if self.secret is not None:
            if not isinstance(self.secret, bytes):
                raise ValueError(f"JWT key {self.kid!r}: secret must be bytes")
            if len(self.secret) < HMAC_MIN_BYTES["HS256"]:
                raise ValueError(
                    f"JWT key {self.kid!r}: the secret is {len(self.secret)} bytes long; use "
                    f"at least 32 random bytes (64 for HS512), e.g. `openssl rand -hex 32`"
                )
            if is_pem(self.secret):
                raise ValueError(
                    f"JWT key {self.kid!r}: the secret is a PEM key: give it as public_key"
                )
        if self.algorithm is not None:
            if self.algorithm not in JWT_ALGORITHMS:
                raise ValueError(
                    f"JWT key {self.kid!r}: unknown algorithm {self.algorithm!r} "
                    f"(one of {', '.join(JWT_ALGORITHMS)})"
                )
            if (JWT_ALGORITHMS[self.algorithm] == "hmac") != (self.secret is not None):
                raise ValueError(
                    f"JWT key {self.kid!r}: {self.algorithm} needs "
                    + ("a secret" if self.secret is None else "a public_key, not a secret")
                )

    @classmethod
    def from_env(cls, kid: str, variable: str, *, algorithm: str | None = None) -> JWTKey:
        """A key whose HMAC secret is the environment variable *variable* (UTF-8).

        Raises :exc:`ValueError` naming the variable if it is not set.
        """
        return cls.from_config(
            {"kid": kid, "secret_env": variable, "algorithm": algorithm}, where=f"key {kid!r}"
        )

    @classmethod
    def from_file(cls, kid: str, path: str | os.PathLike[str]) -> JWTKey:
        """A key whose PEM public key is read from *path*."""
        return cls.from_config({"kid": kid, "public_key_file": os.fspath(path)})

    @classmethod
    def from_config(
        cls,
        data: Mapping[str, Any],
        *,
        where: str = "auth.jwt.keys",
        environ: Mapping[str, str] | None = None,
        base: str | os.PathLike[str] | None = None,
    ) -> JWTKey:
        """A key from its config table: ``kid``, and ``secret_env`` or ``public_key_file``.

        ``secret_env`` names the environment variable holding the HMAC secret (a config file
        never holds secrets); ``public_key_file`` is a PEM file, relative to *base* if given
        (the config file's folder). ``algorithm`` is optional. *environ* defaults to
        :data:`os.environ`. Raises :exc:`ValueError` starting with *where* and naming what is
        missing or wrong.
        """
        known = {"kid", "secret_env", "public_key_file", "algorithm"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{where}: unknown key {unknown[0]!r} (expected kid, secret_env or "
                f"public_key_file, and optionally algorithm)"
            )
        kid = data.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{where}: kid is missing (a non-empty string naming the key)")
        algorithm = data.get("algorithm")
        if algorithm is not None and not isinstance(algorithm, str):
            raise ValueError(f"{where}: algorithm must be a string")
        secret_env, key_file = data.get("secret_env"), data.get("public_key_file")
        if (secret_env is None) == (key_file is None):
            raise ValueError(
                f"{where}: give exactly one of secret_env (the environment variable holding "
                f"an HS* secret) and public_key_file (a PEM public key)"
            )
        if secret_env is not None:
            secret = secret_from_env(secret_env, environ, where=where)
            return cls(kid, secret=secret, algorithm=algorithm)
        return cls(kid, public_key=read_pem(key_file, base, where=where), algorithm=algorithm)


@attrs.frozen
class _PreparedKey:
    kid: str
    kind: KeyKind
    key: Any = attrs.field(repr=False)
    algorithms: frozenset[str]


class JWTAuthenticator:
    """Verifies JSON Web Tokens with PyJWT (the ``jwt`` extra).

    A token is accepted only if all of these hold:

    * it is at most :data:`MAX_JWT_SIZE` characters long;
    * its header's ``alg`` is one of *algorithms* (``none`` can never be: it is refused here);
    * its header's ``kid`` names one of *keys* (a token without ``kid`` is accepted only when
      there is one key), and the key is of the algorithm's kind: an HMAC secret for HS*, a
      public key of the matching type for the others. So a token signed "HS256" with the RSA
      public key as the secret is refused without being looked at;
    * its signature is valid, for that algorithm only;
    * it has ``exp`` and ``sub``; ``exp`` is in the future and ``nbf`` and ``iat`` (when
      present) are not, give or take *leeway* seconds;
    * with *audience*, its ``aud`` is or contains it; without, it has no ``aud``; with
      *issuer*, its ``iss`` is it;
    * ``sub`` is a valid user name (:func:`is_valid_user_name`), not ``anonymous``;
    * its ``perm`` claim, when present, is a valid permissions table (the config file's
      shape): the identity's permissions. Without it, the identity gets *permissions*
      (default: :meth:`Permissions.nothing`).

    The identity expires at ``exp``. To rotate keys, add the new key with a new ``kid``,
    switch the issuer to it, and remove the old one once its tokens have expired.

    Raises :exc:`ImportError` naming the extra if PyJWT is not installed, and
    :exc:`ValueError` for a bad algorithm, a key of no allowed algorithm, or duplicate kids.
    """

    def __init__(
        self,
        *,
        keys: Sequence[JWTKey],
        algorithms: Sequence[str],
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        permissions: Permissions | None = None,
    ) -> None:
        self._jwt = import_jwt()
        if isinstance(algorithms, str):
            raise ValueError("algorithms must be a list of algorithm names, not one string")
        if not algorithms:
            raise ValueError("algorithms must name at least one algorithm")
        for name in algorithms:
            if str(name).lower() == "none":
                raise ValueError(
                    "the JWT algorithm 'none' is refused: unsigned tokens prove nothing"
                )
            if name not in JWT_ALGORITHMS:
                raise ValueError(
                    f"unknown JWT algorithm {name!r} (one of {', '.join(JWT_ALGORITHMS)})"
                )
        if not keys:
            raise ValueError("a JWT authenticator needs at least one key")
        if not (math.isfinite(leeway) and leeway >= 0):
            raise ValueError(f"leeway must be a number of seconds, 0 or more, not {leeway!r}")
        #: The algorithms a token may use.
        self.algorithms: frozenset[str] = frozenset(algorithms)
        #: The ``aud`` a token must have, or None (then it must have none).
        self.audience = audience
        #: The ``iss`` a token must have, or None.
        self.issuer = issuer
        #: Seconds of clock skew tolerated for ``exp``, ``nbf`` and ``iat``.
        self.leeway = float(leeway)
        #: The permissions of a token without a ``perm`` claim.
        self.permissions: Permissions = (
            Permissions.nothing() if permissions is None else permissions
        )
        self._keys: dict[str, _PreparedKey] = {}
        for key in keys:
            if key.kid in self._keys:
                raise ValueError(f"two JWT keys have the kid {key.kid!r}")
            self._keys[key.kid] = self._prepare(key)

    def _prepare(self, key: JWTKey) -> _PreparedKey:
        material: Any
        kind: KeyKind
        if key.secret is not None:
            kind, material = "hmac", key.secret
        else:
            assert key.public_key is not None
            material = load_public_key(key.public_key, kid=key.kid)
            kind = key_kind(material, kid=key.kid)
        usable = {
            name
            for name in self.algorithms
            if JWT_ALGORITHMS[name] == kind and key.algorithm in (None, name)
        }
        if not usable:
            raise ValueError(
                f"JWT key {key.kid!r} ({kind}) can verify none of the algorithms "
                f"{', '.join(sorted(self.algorithms))}"
            )
        if kind == "ec":
            # An EC key verifies only the ES* algorithm of its curve.
            usable = {name for name in usable if material.curve.name == EC_CURVES[name]}
            if not usable:
                raise ValueError(
                    f"JWT key {key.kid!r}: its curve {material.curve.name} fits none of the "
                    f"algorithms {', '.join(sorted(self.algorithms))}"
                )
        if kind == "hmac":
            for name in sorted(usable):
                if len(material) < HMAC_MIN_BYTES[name]:
                    raise ValueError(
                        f"JWT key {key.kid!r}: {name} needs a secret of at least "
                        f"{HMAC_MIN_BYTES[name]} bytes, not {len(material)}"
                    )
        return _PreparedKey(key.kid, kind, material, frozenset(usable))

    @classmethod
    def from_config(
        cls,
        data: Mapping[str, Any],
        *,
        where: str = "auth.jwt",
        environ: Mapping[str, str] | None = None,
        base: str | os.PathLike[str] | None = None,
        permissions: Permissions | None = None,
    ) -> JWTAuthenticator:
        """An authenticator from the config file's ``[auth.jwt]`` table.

        Its keys are ``algorithms`` (a list, required), ``audience``, ``issuer``, ``leeway``
        (seconds) and ``keys`` (the ``[[auth.jwt.keys]]`` tables: see
        :meth:`JWTKey.from_config`). Raises :exc:`ValueError` starting with *where*.
        """
        known = {"algorithms", "audience", "issuer", "leeway", "keys"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(known))})"
            )
        algorithms = data.get("algorithms")
        if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
            raise ValueError(f'{where}.algorithms: a list of names is needed, e.g. ["RS256"]')
        for name in ("audience", "issuer"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ValueError(f"{where}.{name}: must be a string")
        leeway = data.get("leeway", 0.0)
        if isinstance(leeway, bool) or not isinstance(leeway, int | float):
            raise ValueError(f"{where}.leeway: must be a number of seconds")
        tables = data.get("keys")
        if not isinstance(tables, list) or not tables:
            raise ValueError(f"{where}.keys: at least one [[{where}.keys]] table is needed")
        keys = []
        for i, table in enumerate(tables):
            if not isinstance(table, Mapping):
                raise ValueError(f"{where}.keys[{i}]: must be a table")
            keys.append(
                JWTKey.from_config(table, where=f"{where}.keys[{i}]", environ=environ, base=base)
            )
        try:
            return cls(
                keys=keys,
                algorithms=algorithms,
                audience=data.get("audience"),
                issuer=data.get("issuer"),
                leeway=leeway,
                permissions=permissions,
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    @property
    def kids(self) -> tuple[str, ...]:
        """The ids of the keys, in the order given."""
        return tuple(self._keys)

    def __repr__(self) -> str:
        return (
            f"JWTAuthenticator(kids={list(self._keys)!r}, "
            f"algorithms={sorted(self.algorithms)!r}, audience={self.audience!r}, "
            f"issuer={self.issuer!r}, leeway={self.leeway!r})"
        )

    def _select_key(self, token: str) -> tuple[_PreparedKey, str]:
        jwt = self._jwt
        if not token.isascii():
            raise AuthFailed("not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthFailed("not a JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise AuthFailed("the token's algorithm is not allowed")
        kid = header.get("kid")
        if kid is None:
            if len(self._keys) != 1:
                raise AuthFailed("the token has no kid, and there are several keys")
            (key,) = self._keys.values()
        elif not isinstance(kid, str) or kid not in self._keys:
            raise AuthFailed("unknown kid")
        else:
            key = self._keys[kid]
        if algorithm not in key.algorithms:
            raise AuthFailed(f"the token's algorithm does not fit key {key.kid!r}")
        return key, algorithm

    def _decode(self, token: str, key: _PreparedKey, algorithm: str) -> dict[str, Any]:
        jwt: Any = self._jwt
        require = ["exp", "sub"]
        if self.audience is not None:
            require.append("aud")
        if self.issuer is not None:
            require.append("iss")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": require, "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailed("the token is not valid yet (nbf or iat)") from None
        except jwt.InvalidAudienceError:
            raise AuthFailed("wrong audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise AuthFailed("wrong issuer (iss)") from None
        except jwt.MissingRequiredClaimError as exc:
            # exc.claim is one of the names in `require`, not text from the token.
            claim = exc.claim if exc.claim in require else "a required claim"
            raise AuthFailed(f"the token has no {claim} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthFailed(f"bad signature (key {key.kid!r})") from None
        except jwt.PyJWTError:
            raise AuthFailed("malformed token or claims") from None
        except (ValueError, TypeError, OverflowError):
            # PyJWT lets a few of these through for absurd claim values (exp=1e999).
            raise AuthFailed("malformed token or claims") from None
        return claims

    async def authenticate(self, token: str | None, handshake: HandshakeInfo) -> Identity:
        """The identity a valid JWT proves: ``sub``, with ``perm`` or the default."""
        await _checkpoint()
        if not token:
            raise AuthFailed("no token")
        if not isinstance(token, str):
            raise AuthFailed("the token is not a string")
        if len(token) > MAX_JWT_SIZE:
            raise AuthFailed(f"the token is longer than {MAX_JWT_SIZE} characters")
        key, algorithm = self._select_key(token)
        claims = self._decode(token, key, algorithm)
        # From here the claims are verified (signed by a key we trust).
        user = claims.get("sub")
        if not is_valid_user_name(user):
            raise AuthFailed("sub is not a valid user name")
        assert isinstance(user, str)
        if user == ANONYMOUS_USER:
            raise AuthFailed(f"sub is the reserved name {ANONYMOUS_USER!r}")
        expires = claims.get("exp")
        if (
            isinstance(expires, bool)
            or not isinstance(expires, int | float)
            or not math.isfinite(expires)
        ):
            raise AuthFailed("exp is not a number")
        permissions = self.permissions
        if "perm" in claims:
            try:
                permissions = Permissions.from_dict(claims["perm"], where="perm")
            except (ValueError, TypeError) as exc:
                raise AuthFailed(f"bad perm claim: {_shorten(str(exc))}") from None
        # Good until exp, give or take the leeway it was accepted with.
        return Identity(user, permissions, float(expires) + self.leeway)


def _shorten(text: str, limit: int = 200) -> str:
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= limit else text[:limit] + "…"


class FirstOf:
    """Several authenticators, tried in order: the first identity wins.

    With :class:`StaticUsers` and a :class:`JWTAuthenticator`, a token is tried as a static
    token, then as a JWT; a connection without a token gets whatever the first that accepts
    one gives (the static users' anonymous identity, say). If all refuse, :exc:`AuthFailed`
    is raised with every reason in :attr:`~AuthFailed.reason`, in order. Only
    :exc:`AuthFailed` moves on to the next; any other exception propagates.
    """

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        if not authenticators:
            raise ValueError("FirstOf needs at least one authenticator")
        #: The authenticators, in the order they are tried.
        self.authenticators: tuple[Authenticator, ...] = tuple(authenticators)

    def __repr__(self) -> str:
        return f"FirstOf({list(self.authenticators)!r})"

    async def authenticate(self, token: str | None, handshake: HandshakeInfo) -> Identity:
        """The identity from the first authenticator that accepts *token*."""
        reasons = []
        for authenticator in self.authenticators:
            try:
                return await authenticator.authenticate(token, handshake)
            except AuthFailed as exc:
                reasons.append(f"{type(authenticator).__name__}: {exc.reason}")
        raise AuthFailed("; ".join(reasons))
