"""The broker's config file (issue 9, item 8): `load_config` and its one-line errors."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from trio_realtime._cli import SERVE_DEFAULTS, _serve_actions
from trio_realtime.security import (
    ConfigError,
    FirstOf,
    HandshakeInfo,
    JWTAuthenticator,
    StaticUsers,
    load_config,
    token_sha256,
)
from trio_realtime.security._config import SERVER_OPTIONS

HANDSHAKE = HandshakeInfo(remote="127.0.0.1:50000")
TOKEN = "alice-token-of-the-tests"
SECRET = "an-hs256-secret-of-at-least-32-bytes!!"
ENV = {"RT_JWT_SECRET": SECRET}

#: The issue's example, as written (with a real hash).
ISSUE_EXAMPLE = f"""\
[server]
host = "127.0.0.1"
port = 8765
store = "memory"

[[users]]
name = "alice"
token_sha256 = "{token_sha256(TOKEN)}"
[users.permissions]
publish = {{ allow = ["orders.>"], deny = ["orders.audit.>"] }}
subscribe = {{ allow = ["orders.*"], deny = ["orders.secret"] }}
allow_responses = true

[auth.jwt]
algorithms = ["HS256", "RS256", "EdDSA"]
audience = "trio-realtime"
[[auth.jwt.keys]]
kid = "k1"
secret_env = "RT_JWT_SECRET"        # or public_key_file = "k1.pem"
"""


def write(tmp_path: Path, text: str, name: str = "broker.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path: Path) -> str:
    """The one line of the ConfigError that loading *path* raises (without the file)."""
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


async def test_the_issues_example_parses_and_authenticates(tmp_path: Path) -> None:
    """The issue's example: [server] values, alice by her token, and JWTs by the env secret."""
    config = load_config(write(tmp_path, ISSUE_EXAMPLE), environ=ENV)
    assert config.server == {"host": "127.0.0.1", "port": 8765, "store": "memory"}
    assert [user.name for user in config.users] == ["alice"]
    assert config.anonymous is None
    assert config.jwt is not None
    assert config.jwt.kids == ("k1",)
    assert config.jwt.audience == "trio-realtime"
    auth = config.auth
    assert isinstance(auth, FirstOf)
    assert isinstance(auth.authenticators[0], StaticUsers)
    assert isinstance(auth.authenticators[1], JWTAuthenticator)
    alice = await auth.authenticate(TOKEN, HANDSHAKE)
    assert alice.user == "alice"
    assert alice.permissions.may_publish("orders.new")
    assert not alice.permissions.may_publish("orders.audit.x")
    assert alice.permissions.allow_responses is not None
    token = jwt.encode(
        {"sub": "bob", "exp": int(time.time()) + 600, "aud": "trio-realtime"},
        SECRET,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    bob = await auth.authenticate(token, HANDSHAKE)
    assert bob.user == "bob"
    assert not bob.permissions.may_publish("orders.new")  # no perm claim: nothing
    assert config.describe_auth() == "1 user, jwt (1 key); without a token: refused"


def test_a_public_key_file_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    """`public_key_file` is found next to the config file, wherever the broker runs."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    (tmp_path / "k1.pem").write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    text = ISSUE_EXAMPLE.replace('secret_env = "RT_JWT_SECRET"', 'public_key_file = "k1.pem"')
    config = load_config(write(tmp_path, text), environ={})
    assert config.jwt is not None
    assert config.jwt.kids == ("k1",)


async def test_static_users_only_anonymous_and_jwt_permissions(tmp_path: Path) -> None:
    """Users only: StaticUsers; [anonymous.permissions] lets tokenless connections in; a
    user without permissions may do nothing."""
    path = write(
        tmp_path,
        f"""
[[users]]
name = "carol"
token_sha256 = "{token_sha256("c").upper()}"

[anonymous.permissions]
subscribe = {{ allow = ["public.>"] }}
""",
    )
    config = load_config(path)
    assert isinstance(config.auth, StaticUsers)
    assert config.server == {}
    carol = await config.auth.authenticate("c", HANDSHAKE)
    assert not carol.permissions.may_publish("anything")
    anonymous = await config.auth.authenticate(None, HANDSHAKE)
    assert anonymous.user == "anonymous"
    assert anonymous.permissions.check_subscribe("public.news").allowed
    assert config.describe_auth() == "1 user; without a token: the [anonymous] permissions"


async def test_users_by_client_certificate(tmp_path: Path) -> None:
    """certificate_subject instead of or besides token_sha256: such a user is known by the
    subject of the certificate it presents without a token, and by its token with one."""
    path = write(
        tmp_path,
        f"""
[[users]]
name = "alice"
certificate_subject = "CN=alice,O=Example"
[users.permissions]
publish = {{ allow = ["orders.>"] }}

[[users]]
name = "bob"
token_sha256 = "{token_sha256("b")}"
certificate_subject = "CN=bob,O=Example"
""",
    )
    config = load_config(path)
    assert isinstance(config.auth, StaticUsers)
    assert [(u.name, u.token_sha256 is not None) for u in config.users] == [
        ("alice", False),
        ("bob", True),
    ]
    assert [u.name for u in config.certificate_users] == ["alice", "bob"]
    presenting = HandshakeInfo(certificate_subject="CN=alice,O=Example")
    alice = await config.auth.authenticate(None, presenting)
    assert alice.user == "alice"
    assert alice.permissions.may_publish("orders.new")
    assert (await config.auth.authenticate("b", presenting)).user == "bob"
    assert config.describe_auth() == ("2 users (2 by client certificate); without a token: refused")


def test_jwt_only_with_default_permissions(tmp_path: Path) -> None:
    """[auth.jwt] alone: the JWT authenticator, with [auth.jwt.permissions] as its default."""
    text = ISSUE_EXAMPLE.split("[auth.jwt]")[1]
    text = "[auth.jwt]" + text + '\n[auth.jwt.permissions]\npublish = { allow = ["x.>"] }\n'
    config = load_config(write(tmp_path, text), environ=ENV)
    assert isinstance(config.auth, JWTAuthenticator)
    assert config.auth.permissions.may_publish("x.y")
    assert config.describe_auth() == "jwt (1 key); without a token: refused"


def test_no_auth_configured(tmp_path: Path) -> None:
    """A file with [server] only configures no authentication."""
    config = load_config(write(tmp_path, '[server]\nstore = "none"\n'))
    assert config.auth is None
    assert config.describe_auth() == "none"


def test_server_takes_every_serve_option() -> None:
    """[server] takes exactly the options of `trio-realtime serve` (but --config), and every
    default the command line has is one of them."""
    assert set(SERVER_OPTIONS) == set(_serve_actions())
    assert set(SERVE_DEFAULTS) <= set(SERVER_OPTIONS)


def jwt_table(algorithm: str, key: str) -> str:
    """An [auth.jwt] table of one *algorithm* and one key "k1" with the line *key*."""
    return f'[auth.jwt]\nalgorithms = ["{algorithm}"]\n[[auth.jwt.keys]]\nkid = "k1"\n{key}\n'


USER = f'[[users]]\nname = "alice"\ntoken_sha256 = "{token_sha256("a")}"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nport = \n", "line 2, column 8: Invalid value"),
        ("nonsense\n", "line 1, column 9: Expected '=' after a key"),
        ("[servr]\n", "servr: unknown key (expected server, http, users, anonymous, auth"),
        ("[server]\nprot = 1\n", "server.prot: unknown key (expected host, port,"),
        ('[server]\nport = "8765"\n', "server.port: expected an integer, got a string"),
        ("[server]\nheartbeat = true\n", "server.heartbeat: expected a number, got a boolean"),
        ("[server]\nallow_anonymous = 1\n", "server.allow_anonymous: expected true or false"),
        ('[server]\npersist = "a.>"\n', "server.persist: expected an array of patterns"),
        ("[server]\nmax_bytes = 1.5\n", "server.max_bytes: expected a size"),
        ("server = 1\n", "server: expected a table, got an integer"),
        ('users = "alice"\n', "users: expected an array of tables ([[users]]), got a string"),
        ('[[users]]\nname = "alice"\n', "users[0].token_sha256: missing"),
        (
            '[[users]]\nname = "a.b"\ntoken_sha256 = "' + "0" * 64 + '"\n',
            "users[0].name: a user name must be 1 to 128 letters",
        ),
        (
            '[[users]]\nname = "anonymous"\ntoken_sha256 = "' + "0" * 64 + '"\n',
            "users[0].name: a user name must not be 'anonymous'",
        ),
        (
            '[[users]]\nname = "alice"\ntoken_sha256 = "a-token"\n',
            "users[0].token_sha256: expected 64 hex digits",
        ),
        (
            USER + "role = 1\n",
            "users[0].role: unknown key (expected name, token_sha256, certificate_subject,",
        ),
        (
            '[[users]]\nname = "alice"\npermissions = {}\n',
            (
                "users[0].token_sha256: missing (`trio-realtime token alice` prints it), and no "
                "certificate_subject either: give one or both"
            ),
        ),
        (
            '[[users]]\nname = "alice"\ncertificate_subject = 1\n',
            "users[0].certificate_subject: a certificate subject must be a string, not int",
        ),
        (
            '[[users]]\nname = "alice"\ncertificate_subject = "alice"\n',
            "users[0].certificate_subject: a certificate subject must be an RFC 4514 name",
        ),
        (
            '[[users]]\nname = "alice"\ncertificate_subject = "CN = alice, O = Example"\n',
            (
                "users[0].certificate_subject: a certificate subject must be written as the broker "
                "shows subjects, 'CN=alice,O=Example', not 'CN = alice, O = Example'"
            ),
        ),
        (
            (
                '[[users]]\nname = "alice"\ncertificate_subject = "CN=a"\n'
                '[[users]]\nname = "bob"\ncertificate_subject = "CN=a"\n'
            ),
            (
                "users[1].certificate_subject: the same as users[0]'s: a certificate may prove "
                "one user only"
            ),
        ),
        (
            USER + '[[users]]\nname = "alice"\ntoken_sha256 = "' + "0" * 64 + '"\n',
            "users[1].name: 'alice' is already users[0]",
        ),
        (
            USER + '[[users]]\nname = "bob"\ntoken_sha256 = "' + token_sha256("a") + '"\n',
            "users[1].token_sha256: the same as users[0]'s",
        ),
        (
            USER + '[users.permissions]\npublish = { allow = ["a.>.b"] }\n',
            "users[0].permissions.publish.allow[0]: invalid topic 'a.>.b'",
        ),
        (
            USER + '[users.permissions]\npublish = { allow = "a.>" }\n',
            "users[0].permissions.publish.allow: expected a list of patterns, got str",
        ),
        (
            USER + "[users.permissions]\nsubscribe = { allow = [1] }\n",
            "users[0].permissions.subscribe.allow[0]: expected a pattern",
        ),
        (USER + "[users.permissions]\nread = {}\n", "users[0].permissions: unknown key 'read'"),
        ("[anonymous]\npublish = {}\n", "anonymous.publish: unknown key (expected permissions)"),
        (
            '[anonymous.permissions]\nsubscribe = { deny = ["*.>.x"] }\n',
            "anonymous.permissions.subscribe.deny[0]: invalid topic",
        ),
        ("[auth.ldap]\n", "auth.ldap: unknown key (expected jwt)"),
        ("[auth.jwt]\nkeys = []\n", "auth.jwt.algorithms: a list of names is needed"),
        ('[auth.jwt]\nalgorithms = ["HS256"]\n', "auth.jwt.keys: at least one"),
        (
            '[auth.jwt]\nalgorithms = ["HS256"]\nkey = 1\n',
            "auth.jwt.key: unknown key (expected algorithms,",
        ),
        (
            jwt_table("none", 'secret_env = "RT_JWT_SECRET"'),
            "auth.jwt: the JWT algorithm 'none' is refused",
        ),
        (
            jwt_table("HS256", 'secret_env = "RT_NOT_SET"'),
            "auth.jwt.keys[0]: the environment variable RT_NOT_SET is not set",
        ),
        (
            jwt_table("RS256", 'public_key_file = "missing.pem"'),
            "auth.jwt.keys[0]: cannot read public_key_file",
        ),
        (
            jwt_table("HS256", 'secret_env = "RT_JWT_SECRET"')
            + '[auth.jwt.permissions]\npublish = { allow = ["$"] }\n',
            "auth.jwt.permissions.publish.allow[0]: invalid topic",
        ),
    ],
)
def test_a_bad_file_is_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    """Every kind of mistake: `<file>: <key path>: <what is wrong>`, on one line."""
    message = error(write(tmp_path, text))
    assert message.startswith(expected), message


def test_an_unreadable_or_non_utf8_file_is_one_line(tmp_path: Path) -> None:
    """A missing file and a binary one are refused with one line too."""
    assert error(tmp_path / "missing.toml").startswith("cannot read it: No such file")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    assert error(binary) == "byte 0: not UTF-8 text"


def test_errors_never_quote_the_secret(tmp_path: Path) -> None:
    """A secret too short for HS256 is refused without being shown."""
    text = jwt_table("HS256", 'secret_env = "RT_JWT_SECRET"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={"RT_JWT_SECRET": "short-secret"})
    assert "short-secret" not in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'broker.toml'}: auth.jwt")
