"""The security guide's hardened configuration (``docs/_security_threats.rst``) is true.

The guide's ``broker.toml`` is taken from the docs as written: the ``toml`` block after the
marker comment in the section "A hardened configuration". It goes into a folder with the files
it names (the broker's certificate from a throwaway CA, ``trustme``; the identity provider's
Ed25519 public key) and the JWT secret in the environment variable it names; then it is loaded
with :func:`load_config` (what ``serve --config`` reads), checked against what the prose says
of it, and served by ``trio-realtime serve`` as a real process on 127.0.0.1, port 0.
"""

from __future__ import annotations

import argparse
import secrets
import ssl
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

import attrs
import jwt
import pytest
import trio
import trustme
from _broker_process import open_broker_process
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from trio_realtime import ConnectionClosed, open_client
from trio_realtime._cli import CommandError, _serve_actions, check_exposure, serve_settings
from trio_realtime.security import (
    AuthFailed,
    FirstOf,
    HandshakeInfo,
    Identity,
    JWTAuthenticator,
    ResponsePermission,
    ServerConfig,
    StaticUsers,
    load_config,
)

DOC: Path = Path(__file__).resolve().parents[2] / "docs" / "_security_threats.rst"
#: The section that holds the configuration, and the comment right before its block.
SECTION = "A hardened configuration"
MARKER = (
    ".. The next code block is read, loaded and served by "
    "tests/security/test_docs_hardened_config.py."
)
HANDSHAKE = HandshakeInfo(remote="127.0.0.1:50000")
#: Seconds for the served broker and its clients.
SERVE_TIMEOUT = 30


def _is_title(lines: list[str], i: int, underline: str) -> bool:
    """Whether ``lines[i]`` is a section title underlined with *underline* characters."""
    if i + 1 >= len(lines) or not lines[i].strip() or lines[i].startswith(" "):
        return False
    below = lines[i + 1]
    return bool(below) and set(below) == {underline} and len(below) >= len(lines[i].rstrip())


def hardened_toml(text: str) -> str:
    """The ``toml`` block after :data:`MARKER` in the section :data:`SECTION` of *text*.

    Raises :exc:`AssertionError` saying what is missing: the section, the marker (exactly one,
    in that section), or a non-empty ``.. code-block:: toml`` right after it.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line == SECTION and _is_title(lines, i, "-")]
    if len(starts) != 1:
        raise AssertionError(f"expected one section {SECTION!r} ('-' underline), found {starts}")
    start = starts[0] + 2
    end = next((i for i in range(start, len(lines)) if _is_title(lines, i, "-")), len(lines))
    section = lines[start:end]
    marks = [i for i, line in enumerate(section) if line.strip() == MARKER]
    if len(marks) != 1:
        raise AssertionError(
            f"expected the marker comment once in section {SECTION!r}, found it "
            f"{len(marks)} times: {MARKER!r}"
        )
    rest = iter(section[marks[0] + 1 :])
    directive = next((line for line in rest if line.strip()), "")
    if directive.strip() != ".. code-block:: toml":
        raise AssertionError(
            f"the marker must be followed by '.. code-block:: toml', not {directive!r}"
        )
    body: list[str] = []
    for line in rest:
        if line.strip() and not line.startswith(" "):
            break  # the first line back at the margin ends the block
        body.append(line)
    while body and (not body[0].strip() or body[0].lstrip().startswith(":")):
        body.pop(0)  # the blank line after the directive (and any option)
    block = textwrap.dedent("\n".join(body)).strip()
    if not block:
        raise AssertionError(f"the code block after the marker in {SECTION!r} is empty")
    return block + "\n"


# ---------------------------------------------------------------------------------------------
# The folder the configuration lives in


@attrs.define
class Hardened:
    """The guide's config file in a folder, with the files and the secret it names."""

    path: Path
    #: The TOML as :mod:`tomllib` reads it.
    data: dict[str, Any]
    ca: trustme.CA
    #: The identity provider's signing key, of the key with a ``public_key_file``.
    signing_key: ed25519.Ed25519PrivateKey
    #: The HS256 secret, of the key with a ``secret_env``.
    secret: str
    #: The key ids: of the public key and of the secret.
    public_kid: str
    secret_kid: str

    def load(self) -> ServerConfig:
        return load_config(self.path)

    def token(self, claims: dict[str, Any], *, kid: str, algorithm: str) -> str:
        """A JWT of *claims* (with the file's ``aud`` and ``iss``, and ``exp`` in 10 minutes)
        signed for the key *kid* with *algorithm*: the secret for HS256, the Ed25519 key
        otherwise."""
        jwt_table = self.data["auth"]["jwt"]
        payload = {
            "aud": jwt_table["audience"],
            "iss": jwt_table["issuer"],
            "exp": int(time.time()) + 600,
            **claims,
        }
        key: Any = self.secret if algorithm == "HS256" else self.signing_key
        return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid})

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the broker's certificate."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def hardened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hardened:
    text = hardened_toml(DOC.read_text(encoding="utf-8"))
    data = tomllib.loads(text)
    server = data["server"]
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(tmp_path / server["tls_cert"]), append=True)
    issued.private_key_pem.write_to_path(str(tmp_path / server["tls_key"]))
    signing_key = ed25519.Ed25519PrivateKey.generate()
    secret = secrets.token_hex(32)
    (public,) = [key for key in data["auth"]["jwt"]["keys"] if "public_key_file" in key]
    (shared,) = [key for key in data["auth"]["jwt"]["keys"] if "secret_env" in key]
    (tmp_path / public["public_key_file"]).write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    monkeypatch.setenv(shared["secret_env"], secret)
    path = tmp_path / "broker.toml"
    path.write_text(text, encoding="utf-8")
    return Hardened(
        path=path,
        data=data,
        ca=ca,
        signing_key=signing_key,
        secret=secret,
        public_kid=public["kid"],
        secret_kid=shared["kid"],
    )


# ---------------------------------------------------------------------------------------------
# Finding the block


def test_the_block_is_found_and_a_missing_one_fails_loudly() -> None:
    """The extraction finds the guide's block, and says what is missing when it is not."""
    text = DOC.read_text(encoding="utf-8")
    assert hardened_toml(text).startswith("[server]\n")
    with pytest.raises(AssertionError, match="expected one section"):
        hardened_toml(text.replace(SECTION, "Another title"))
    with pytest.raises(AssertionError, match="marker comment once"):
        hardened_toml(text.replace(MARKER, ".. a comment"))
    with pytest.raises(AssertionError, match=r"followed by '\.\. code-block:: toml'"):
        hardened_toml(text.replace(MARKER, MARKER + "\n\nA paragraph.\n"))
    with pytest.raises(AssertionError, match="is empty"):
        hardened_toml(f"{SECTION}\n{'-' * len(SECTION)}\n\n{MARKER}\n\n.. code-block:: toml\n\n")


# ---------------------------------------------------------------------------------------------
# What the prose says of it


def test_it_loads_and_is_served_on_every_interface_only_because_of_auth(
    hardened: Hardened,
) -> None:
    """It loads; 0.0.0.0 passes the safe default because users and JWT are configured;
    tokenless connections are refused (no [anonymous]); --allow-anonymous is refused."""
    config = hardened.load()
    assert config.server["host"] == "0.0.0.0"
    assert "allow_anonymous" not in config.server
    assert config.anonymous is None
    assert isinstance(config.auth, FirstOf)
    line = check_exposure("0.0.0.0", config, allow_anonymous=False)
    assert line == "1 user, jwt (2 keys); without a token: refused"
    with pytest.raises(CommandError, match="--allow-anonymous"):
        check_exposure("0.0.0.0", config, allow_anonymous=True)


def test_every_server_value_is_one_serve_accepts(hardened: Hardened) -> None:
    """Each [server] value converts as serve's flag would: sizes, rates, files next to the
    file, an absolute store path, only the application's origin."""
    config = hardened.load()
    args = argparse.Namespace(**dict.fromkeys(_serve_actions()))
    settings = serve_settings(args, config)
    assert settings.store == "sqlite:/var/lib/trio-realtime/events.db"
    assert (settings.max_message_size, settings.max_pending_bytes) == (64 * 1024, 4 * 1024**2)
    assert settings.max_pending_bytes >= settings.max_message_size
    assert (settings.publish_rate, settings.user_publish_rate, settings.publish_burst) == (
        20.0,
        100.0,
        50,
    )
    assert settings.slow_consumer == "disconnect"
    assert settings.allow_origin == ["https://app.example.com"]
    assert settings.tls_cert == str(hardened.path.parent / "broker.pem")
    assert settings.tls_key == str(hardened.path.parent / "broker.key")
    assert settings.tls_client_ca is None  # no mutual TLS: browsers connect


def test_the_pricing_service_may_do_what_the_guide_says_and_no_more(
    hardened: Hardened,
) -> None:
    """pricing publishes under prices., subscribes to svc.price in its queue group only,
    answers each request once within 10 s, and may do nothing else."""
    config = hardened.load()
    (pricing,) = config.users
    assert pricing.name == "pricing"
    permissions = pricing.permissions
    assert permissions.may_publish("prices.eur")
    assert permissions.may_publish("prices.eur.spot")
    for topic in ("svc.price", "orders.new", "_inbox.abc.1", "public.news"):
        assert not permissions.may_publish(topic), topic
    assert permissions.check_subscribe("svc.price", "pricing").allowed
    for pattern, group in [
        ("svc.price", None),  # without the group: every request, beside the service
        ("svc.price", "other"),  # another group: a share of the requests
        ("svc.>", "pricing"),
        ("prices.>", None),
        (">", None),
        ("$sys.>", None),
        ("_inbox.>", None),
    ]:
        assert not permissions.check_subscribe(pattern, group).allowed, (pattern, group)
    assert permissions.allow_responses == ResponsePermission(max=1, expires=10)


async def test_the_jwt_keys_are_a_rotation_each_verifying_its_one_algorithm(
    hardened: Hardened,
) -> None:
    """Two kids: the Ed25519 public key verifies EdDSA tokens, the secret from the
    environment HS256 ones; neither verifies the other's; audience and issuer are checked;
    a token without perm may do nothing; a connection without a token is refused."""
    config = hardened.load()
    assert isinstance(config.jwt, JWTAuthenticator)
    assert config.jwt.kids == (hardened.public_kid, hardened.secret_kid)
    assert config.jwt.algorithms == {"EdDSA", "HS256"}
    assert (config.jwt.audience, config.jwt.issuer, config.jwt.leeway) == (
        "trio-realtime",
        "https://id.example.com",
        30.0,
    )
    auth = config.auth
    assert isinstance(auth, FirstOf)
    assert isinstance(auth.authenticators[0], StaticUsers)
    perm = {"publish": {"allow": ["app.alice.>"]}, "subscribe": {"allow": ["app.alice.>"]}}
    new = hardened.token({"sub": "alice", "perm": perm}, kid=hardened.public_kid, algorithm="EdDSA")
    old = hardened.token({"sub": "bob", "perm": perm}, kid=hardened.secret_kid, algorithm="HS256")
    alice: Identity = await auth.authenticate(new, HANDSHAKE)
    bob: Identity = await auth.authenticate(old, HANDSHAKE)
    assert (alice.user, bob.user) == ("alice", "bob")
    assert alice.permissions.may_publish("app.alice.x")
    assert alice.expires is not None
    crossed = [
        hardened.token({"sub": "eve"}, kid=hardened.public_kid, algorithm="HS256"),
        hardened.token({"sub": "eve"}, kid=hardened.secret_kid, algorithm="EdDSA"),
        hardened.token(
            {"sub": "eve", "aud": "another-service"}, kid=hardened.public_kid, algorithm="EdDSA"
        ),
        hardened.token(
            {"sub": "eve", "iss": "https://elsewhere.example"},
            kid=hardened.public_kid,
            algorithm="EdDSA",
        ),
    ]
    for token in crossed:
        with pytest.raises(AuthFailed):
            await auth.authenticate(token, HANDSHAKE)
    with pytest.raises(AuthFailed):
        await auth.authenticate(None, HANDSHAKE)
    bare = hardened.token({"sub": "carol"}, kid=hardened.public_kid, algorithm="EdDSA")
    carol = await auth.authenticate(bare, HANDSHAKE)
    assert not carol.permissions.may_publish("app.carol.x")
    assert not carol.permissions.check_subscribe("app.carol.x").allowed


# ---------------------------------------------------------------------------------------------
# Served


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_serve_starts_with_it_and_serves_wss_with_jwt_users(
    hardened: Hardened, tmp_path: Path
) -> None:
    """``serve --config`` with the file (127.0.0.1, port 0 and a store in the test's folder
    given as flags) prints the start lines the guide shows, serves ``wss://``, welcomes a
    JWT user and stamps its events with ``rtuser``, and refuses a client without a token."""
    store = tmp_path / "events.db"
    with trio.fail_after(SERVE_TIMEOUT):
        async with open_broker_process(
            "--config", str(hardened.path), "--store", f"sqlite:{store}"
        ) as broker:
            await broker.wait_for_output(r"^tls: ")
            out = broker.stdout()
            assert broker.url.startswith("wss://127.0.0.1:")
            for line in [
                f"store: sqlite:{store} (keeps 1000000 events, 604800 s)\n",
                "auth: 1 user, jwt (2 keys); without a token: refused\n",
                "origins: https://app.example.com\n",
                f"tls: certificate {hardened.path.parent / 'broker.pem'}\n",
            ]:
                assert line in out, out
            for limit in [
                "max_connections=10000 ",
                "max_subscriptions=256,",
                "max_retained=10000,",
                f"max_message_size={64 * 1024},",
                f"max_pending_bytes={4 * 1024**2},",
                "slow_consumer=disconnect,",
                "handshake_timeout=5s,",
                "publish_rate=20/s,",
                "user_publish_rate=100/s,",
                "publish_burst=50\n",
            ]:
                assert limit in out, out
            perm = {"publish": {"allow": ["app.alice.>"]}, "subscribe": {"allow": ["app.alice.>"]}}
            token = hardened.token(
                {"sub": "alice", "perm": perm}, kid=hardened.public_kid, algorithm="EdDSA"
            )
            async with (
                open_client(
                    broker.url,
                    token=token,
                    ssl_context=hardened.client_context(),
                    reconnect=False,
                ) as client,
                client.subscribe("app.alice.>") as sub,
            ):
                assert client.user == "alice"
                await client.publish("app.alice.hello", 1, headers={"rtuser": "mallory"}, ack=True)
                event = await sub.receive()
                assert (event.data, event.headers["rtuser"]) == (1, "alice")
            with pytest.raises(ConnectionClosed):
                async with open_client(
                    broker.url, ssl_context=hardened.client_context(), reconnect=False
                ):
                    pass  # pragma: no cover - the broker refuses a client without a token
            broker.assert_healthy()
