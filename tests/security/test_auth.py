"""Authenticators: static users, JWT and FirstOf, against the attack list of issue 9.

Every refusal is checked to say only ``authentication failed`` to the peer and to keep no
token material in its reason. Times in tokens are relative to the wall clock (PyJWT reads it)
with margins of minutes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from trio_realtime import RealtimeError
from trio_realtime.security import (
    Authenticator,
    AuthFailed,
    FirstOf,
    HandshakeInfo,
    Identity,
    JWTAuthenticator,
    JWTKey,
    Permissions,
    StaticUsers,
    User,
    new_token,
    token_sha256,
)
from trio_realtime.security._auth import (
    ANONYMOUS_USER,
    MAX_JWT_SIZE,
    MAX_TOKEN_SIZE,
    check_user_name,
    is_valid_user_name,
)

HANDSHAKE = HandshakeInfo(remote="127.0.0.1:50000", origin=None, subprotocol=None)
SECRET = b"s" * 32 + b"-a-test-secret-of-64-bytes-for-every-hs-alg!!"  # 77 bytes
OTHER_SECRET = b"o" * 64
MINUTE = 60.0
PERM = {
    "publish": {"allow": ["orders.>"], "deny": ["orders.audit.>"]},
    "subscribe": {"allow": ["orders.*"]},
}


async def refused(auth: Authenticator, token: str | None) -> AuthFailed:
    """Authenticate *token*, expecting a refusal that leaks nothing of it; return the error."""
    with pytest.raises(AuthFailed) as info:
        await auth.authenticate(token, HANDSHAKE)
    exc = info.value
    assert str(exc) == "authentication failed"
    assert isinstance(exc, RealtimeError)
    for part in (token or "").split("."):
        if len(part) >= 8:
            assert part not in exc.reason
            assert part not in repr(exc)
    return exc


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """The PEM of *key*'s public key."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for user alice, expiring in ten minutes; None removes a claim."""
    now = time.time()
    base: dict[str, Any] = {"sub": "alice", "exp": int(now + 10 * MINUTE), "iat": int(now)}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def hs_token(kid: str | None = "k1", secret: bytes = SECRET, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), secret, algorithm="HS256", headers=headers)


def sign(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, SECRET, algorithm="HS256", headers={"kid": "k1"})


def hs_auth(**kwargs: Any) -> JWTAuthenticator:
    options: dict[str, Any] = {"keys": [JWTKey("k1", secret=SECRET)], "algorithms": ["HS256"]}
    options.update(kwargs)
    return JWTAuthenticator(**options)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A JWT assembled by hand, signed by *sign* over its signing input."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(sign(head.encode()))


# --- names and hashes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a.b", "*", ">", "a>", "$sys", "", "x" * 129, "al ice", "al\nice", "bob@example", "é"]
)
def test_unsafe_user_names_are_refused(name: str) -> None:
    """A user name is one topic token of 1 to 128 characters: '.', wildcards, '$' are refused."""
    assert not is_valid_user_name(name)
    with pytest.raises(ValueError, match="letters, digits"):
        check_user_name(name)
    with pytest.raises(ValueError, match="letters, digits"):
        Identity(name, Permissions.nothing())


def test_valid_user_names() -> None:
    """Letters, digits, '_' and '-' up to 128 characters make a user name."""
    for name in ("alice", "A_b-9", "x" * 128, ANONYMOUS_USER):
        assert check_user_name(name) == name
    assert not is_valid_user_name(42)
    with pytest.raises(ValueError, match="reserved"):
        check_user_name(ANONYMOUS_USER, allow_anonymous=False)


def test_new_tokens_are_random_and_hashed_as_hex_sha256() -> None:
    """new_token gives 43 URL-safe characters, different each time; token_sha256 is hex."""
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) == 43 for t in tokens)
    assert token_sha256("abc") == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("digest", ["", "ab" * 31, "AB" * 32, "g" * 64, "ab" * 33])
def test_a_user_needs_a_lowercase_hex_sha256(digest: str) -> None:
    """token_sha256 must be 64 lowercase hex digits."""
    with pytest.raises(ValueError, match="64 lowercase hex"):
        User("alice", digest, Permissions.nothing())


def test_a_user_cannot_be_named_anonymous_and_its_repr_hides_the_hash() -> None:
    """'anonymous' is reserved for connections without a token; the hash is not in the repr."""
    digest = token_sha256("t")
    with pytest.raises(ValueError, match="reserved"):
        User(ANONYMOUS_USER, digest, Permissions.nothing())
    with pytest.raises(ValueError, match="letters, digits"):
        User("a.b", digest, Permissions.nothing())
    assert digest not in repr(User("alice", digest, Permissions.nothing()))


# --- static users ----------------------------------------------------------------------------


def static(*names: str, anonymous: Permissions | None = None) -> tuple[StaticUsers, list[str]]:
    tokens = [new_token() for _ in names]
    users = [
        User(name, token_sha256(token), Permissions.from_dict(PERM, where=name))
        for name, token in zip(names, tokens, strict=True)
    ]
    return StaticUsers(users, anonymous=anonymous), tokens


async def test_static_user_with_its_token() -> None:
    """The right token gives its user's identity and permissions, never expiring."""
    auth, (alice, bob) = static("alice", "bob")
    identity = await auth.authenticate(bob, HANDSHAKE)
    assert identity == Identity("bob", Permissions.from_dict(PERM, where="bob"), None)
    assert (await auth.authenticate(alice, HANDSHAKE)).user == "alice"


@pytest.mark.parametrize(
    "token",
    ["wrong", new_token(), "\x00\xff", "\ud800", " ", "a" * MAX_TOKEN_SIZE],
)
async def test_static_wrong_or_garbage_token_is_refused(token: str) -> None:
    """An unknown or garbage token is refused, saying so only in the reason."""
    auth, _ = static("alice", "bob")
    assert (await refused(auth, token)).reason == "unknown token"


async def test_static_a_prefix_or_extension_of_a_token_is_refused() -> None:
    """Only the exact token: not a prefix, a suffix or the hash itself."""
    auth, (alice,) = static("alice")
    for token in (alice[:-1], alice + "x", token_sha256(alice), alice.upper()):
        await refused(auth, token)


@pytest.mark.parametrize("token", [None, ""])
async def test_static_no_token_without_anonymous_is_refused(token: str | None) -> None:
    """Without anonymous permissions, a connection must bring a token."""
    auth, _ = static("alice")
    assert "no token" in (await refused(auth, token)).reason


@pytest.mark.parametrize("token", [None, ""])
async def test_static_no_token_with_anonymous(token: str | None) -> None:
    """With anonymous permissions, no token gives the anonymous identity."""
    everything = Permissions.everything()
    auth, _ = static("alice", anonymous=everything)
    assert await auth.authenticate(token, HANDSHAKE) == Identity(ANONYMOUS_USER, everything)


async def test_static_a_wrong_token_is_not_downgraded_to_anonymous() -> None:
    """A wrong token is refused even when anonymous access is on."""
    auth, _ = static("alice", anonymous=Permissions.everything())
    await refused(auth, "wrong")


async def test_static_oversized_token_is_refused_unhashed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token past MAX_TOKEN_SIZE is refused even if it is a user's, and never hashed."""
    at_limit, past_limit = "a" * MAX_TOKEN_SIZE, "b" * (MAX_TOKEN_SIZE + 1)
    auth = StaticUsers(
        [
            User("alice", token_sha256(at_limit), Permissions.nothing()),
            User("bob", token_sha256(past_limit), Permissions.nothing()),
        ]
    )
    assert (await auth.authenticate(at_limit, HANDSHAKE)).user == "alice"
    hashed: list[int] = []
    real = hashlib.sha256

    def counting(data: bytes = b"") -> Any:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", counting)
    assert "longer than" in (await refused(auth, past_limit)).reason
    assert (await refused(auth, "c" * 10_000_000)).reason == (
        f"the token is longer than {MAX_TOKEN_SIZE} characters"
    )
    assert hashed == []


@pytest.mark.parametrize("position", [0, 1, 2])
async def test_static_compares_every_hash_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, position: int
) -> None:
    """Every user's hash goes through hmac.compare_digest, whichever matches (no early exit)."""
    auth, tokens = static("alice", "bob", "carol")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    identity = await auth.authenticate(tokens[position], HANDSHAKE)
    assert identity.user == ["alice", "bob", "carol"][position]
    assert [b for _, b in calls] == [token_sha256(t).encode() for t in tokens]
    calls.clear()
    await refused(auth, "wrong")
    assert len(calls) == 3


def test_static_users_refuses_duplicate_names_and_tokens() -> None:
    """Two users may share neither a name nor a token."""
    digest = token_sha256("t")
    nothing = Permissions.nothing()
    with pytest.raises(ValueError, match="two users are named"):
        StaticUsers([User("a", digest, nothing), User("a", token_sha256("u"), nothing)])
    with pytest.raises(ValueError, match="token_sha256 of another user"):
        StaticUsers([User("a", digest, nothing), User("b", digest, nothing)])
    auth = StaticUsers([User("a", digest, nothing)])
    assert digest not in repr(auth)
    assert auth.users == (User("a", digest, nothing),)


# --- static users: client certificates (mutual TLS) -----------------------------------------

ALICE_SUBJECT = "CN=alice,O=Example"


def by_certificate(anonymous: Permissions | None = None) -> tuple[StaticUsers, str]:
    """alice by her certificate only, bob by token and certificate; bob's token."""
    token = new_token()
    users = [
        User("alice", permissions=Permissions.from_dict(PERM), certificate_subject=ALICE_SUBJECT),
        User(
            "bob",
            token_sha256(token),
            Permissions.everything(),
            certificate_subject="CN=bob,O=Example",
        ),
    ]
    return StaticUsers(users, anonymous=anonymous), token


def presenting(subject: str | None) -> HandshakeInfo:
    return HandshakeInfo(remote="127.0.0.1:50000", certificate_subject=subject)


@pytest.mark.parametrize("token", [None, ""])
async def test_static_no_token_and_a_users_certificate_is_that_user(token: str | None) -> None:
    """Without a token, the verified certificate's subject names the user, exactly."""
    auth, _ = by_certificate(anonymous=Permissions.everything())
    identity = await auth.authenticate(token, presenting(ALICE_SUBJECT))
    assert identity == Identity("alice", Permissions.from_dict(PERM), None)
    assert (await auth.authenticate(token, presenting("CN=bob,O=Example"))).user == "bob"
    for near in ("CN=alice", "CN=alice,O=Example,C=FR", "cn=alice,o=Example", "CN=Alice,O=Example"):
        assert (await auth.authenticate(token, presenting(near))).user == ANONYMOUS_USER


async def test_static_a_token_is_judged_alone_whatever_the_certificate() -> None:
    """A token decides, even with a user's certificate: bob's token with alice's certificate
    is bob, and a wrong token with alice's certificate is refused (never downgraded)."""
    auth, bob = by_certificate(anonymous=Permissions.everything())
    assert (await auth.authenticate(bob, presenting(ALICE_SUBJECT))).user == "bob"
    with pytest.raises(AuthFailed) as info:
        await auth.authenticate("wrong", presenting(ALICE_SUBJECT))
    assert info.value.reason == "unknown token"


async def test_static_an_unknown_subject_without_anonymous_is_refused_naming_it() -> None:
    """No token and no user's certificate, without [anonymous]: refused; the reason names
    the subject (it is not secret), quoted (no line break gets into the log)."""
    auth, _ = by_certificate()
    subject = "CN=mallory\nx,O=Example\\, Inc."
    with pytest.raises(AuthFailed) as info:
        await auth.authenticate(None, presenting(subject))
    assert info.value.reason == (
        f"no token, no user with the certificate subject {subject!r}, and anonymous access is off"
    )
    assert "\n" not in info.value.reason
    with pytest.raises(AuthFailed) as info:
        await auth.authenticate(None, presenting(None))
    assert info.value.reason == "no token, and anonymous access is off"


def test_a_user_needs_a_token_a_certificate_or_both() -> None:
    """A user with neither is refused; a subject must be written as the broker writes it;
    two users may not share a subject."""
    with pytest.raises(ValueError, match="needs a token_sha256, a certificate_subject, or both"):
        User("alice")
    with pytest.raises(ValueError, match="certificate_subject must be written as the broker"):
        User("alice", certificate_subject="CN = alice")
    with pytest.raises(ValueError, match="certificate_subject must be an RFC 4514 name"):
        User("alice", certificate_subject="alice")
    alice = User("alice", certificate_subject=ALICE_SUBJECT)
    assert alice.permissions == Permissions.nothing()
    assert alice.token_sha256 is None
    with pytest.raises(ValueError, match="'alice' and 'eve' have the same certificate_subject"):
        StaticUsers([alice, User("eve", certificate_subject=ALICE_SUBJECT)])


# --- JWT: the attack list --------------------------------------------------------------------


async def test_jwt_valid_hs256() -> None:
    """A valid token gives its sub, the default permissions and exp as the expiry."""
    token = hs_token()
    identity = await hs_auth(permissions=Permissions.everything()).authenticate(token, HANDSHAKE)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert identity == Identity("alice", Permissions.everything(), float(exp))


async def test_jwt_default_permissions_are_nothing() -> None:
    """Without a perm claim and without configured permissions, a user may do nothing."""
    identity = await hs_auth().authenticate(hs_token(), HANDSHAKE)
    assert identity.permissions == Permissions.nothing()


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c", "....", "x" * 500, "\ud800.."])
async def test_jwt_missing_or_garbage_token_is_refused(token: str | None) -> None:
    """No token or something that is not a JWT is refused."""
    await refused(hs_auth(), token)


async def test_jwt_oversized_token_is_refused_unparsed() -> None:
    """A validly signed token longer than MAX_JWT_SIZE is refused for its size."""
    token = hs_token(padding="p" * MAX_JWT_SIZE)
    assert "longer than" in (await refused(hs_auth(), token)).reason


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_jwt_alg_none_is_refused(alg: str) -> None:
    """An unsigned token (alg none, crafted by hand) is refused, with or without a kid."""
    auth = hs_auth(algorithms=["HS256", "RS256"])
    for header in ({"alg": alg}, {"alg": alg, "kid": "k1"}, {"alg": alg, "typ": "JWT"}):
        token = hand_made(header, claims(), lambda _: b"")
        assert "algorithm" in (await refused(auth, token)).reason
        await refused(auth, token.rsplit(".", 1)[0] + ".")


@pytest.mark.parametrize("alg", ["none", "None"])
def test_jwt_none_cannot_be_configured(alg: str) -> None:
    """'none' in the configured algorithms is refused at construction."""
    with pytest.raises(ValueError, match="'none' is refused"):
        hs_auth(algorithms=["HS256", alg])


def test_jwt_unknown_or_no_algorithms_are_refused() -> None:
    """Algorithms must be known names, at least one, given as a list."""
    for algorithms in (["HS257"], [], "HS256", ["hs256"]):
        with pytest.raises(ValueError, match="algorithm"):
            hs_auth(algorithms=algorithms)


async def test_jwt_hs256_signed_with_the_rsa_public_key_is_refused(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """The key confusion attack: HS256 with the public PEM as the secret is refused."""
    public = pem(rsa_key)
    auth = JWTAuthenticator(keys=[JWTKey("k1", public_key=public)], algorithms=["HS256", "RS256"])
    for header in ({"alg": "HS256", "kid": "k1"}, {"alg": "HS256"}):
        token = hand_made(header, claims(), lambda data: hmac.new(public, data, "sha256").digest())
        assert "does not fit key" in (await refused(auth, token)).reason
    # The honest RS256 token is fine.
    good = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert (await auth.authenticate(good, HANDSHAKE)).user == "alice"


async def test_jwt_asymmetric_algorithm_with_an_hmac_key_is_refused(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """A token naming RS256 for a kid whose key is an HMAC secret is refused."""
    auth = hs_auth(algorithms=["HS256", "RS256"])
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert "does not fit key" in (await refused(auth, token)).reason


def test_jwt_a_key_that_fits_no_algorithm_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """A public key with only HS* algorithms configured (or the reverse) fails at construction."""
    with pytest.raises(ValueError, match="can verify none"):
        JWTAuthenticator(keys=[JWTKey("k1", public_key=pem(rsa_key))], algorithms=["HS256"])
    with pytest.raises(ValueError, match="can verify none"):
        hs_auth(algorithms=["RS256"])
    with pytest.raises(ValueError, match="needs a public_key"):
        JWTKey("k1", secret=SECRET, algorithm="RS256")
    with pytest.raises(ValueError, match="needs a secret"):
        JWTKey("k1", public_key=pem(rsa_key), algorithm="HS256")


async def test_jwt_a_key_restricted_to_one_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    """A key with algorithm=RS512 refuses RS256 tokens even when RS256 is allowed."""
    auth = JWTAuthenticator(
        keys=[JWTKey("k1", public_key=pem(rsa_key), algorithm="RS512")],
        algorithms=["RS256", "RS512"],
    )
    rs256 = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    rs512 = jwt.encode(claims(), rsa_key, algorithm="RS512", headers={"kid": "k1"})
    await refused(auth, rs256)
    assert (await auth.authenticate(rs512, HANDSHAKE)).user == "alice"


async def test_jwt_an_algorithm_not_configured_is_refused() -> None:
    """HS512 is refused when only HS256 is allowed, with the right key."""
    token = jwt.encode(claims(), SECRET, algorithm="HS512", headers={"kid": "k1"})
    assert "not allowed" in (await refused(hs_auth(), token)).reason


async def test_jwt_bad_signature_and_tampering_are_refused() -> None:
    """A token signed with another secret, or altered after signing, is refused."""
    auth = hs_auth()
    assert "bad signature" in (await refused(auth, hs_token(secret=OTHER_SECRET))).reason
    head, _, signature = hs_token().split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    await refused(auth, f"{head}.{forged}.{signature}")


async def test_jwt_expired_is_refused_and_leeway_honoured() -> None:
    """exp two minutes ago is refused, accepted with five minutes of leeway."""
    token = hs_token(exp=int(time.time() - 2 * MINUTE))
    assert "expired" in (await refused(hs_auth(), token)).reason
    assert "expired" in (await refused(hs_auth(leeway=MINUTE), token)).reason
    assert (await hs_auth(leeway=5 * MINUTE).authenticate(token, HANDSHAKE)).user == "alice"


async def test_jwt_not_before_in_the_future_is_refused_and_leeway_honoured() -> None:
    """nbf (or iat) five minutes ahead is refused, accepted with ten minutes of leeway."""
    for claim in ("nbf", "iat"):
        token = sign(claims(**{claim: int(time.time() + 5 * MINUTE)}))
        assert "not valid yet" in (await refused(hs_auth(), token)).reason
        assert (await hs_auth(leeway=10 * MINUTE).authenticate(token, HANDSHAKE)).user == "alice"


@pytest.mark.parametrize("missing", ["exp", "sub"])
async def test_jwt_required_claims(missing: str) -> None:
    """A token without exp (it would never expire) or sub is refused."""
    reason = (await refused(hs_auth(), sign(claims(**{missing: None})))).reason
    assert reason == f"the token has no {missing} claim"


@pytest.mark.parametrize("exp", ["soon", "99999999999", 1e999, [1], True])
async def test_jwt_absurd_exp_is_refused(exp: object) -> None:
    """An exp that is not a number (or infinite) is refused, not a crash."""
    await refused(hs_auth(), hs_token(exp=exp))


async def test_jwt_audience() -> None:
    """With an audience, aud must be it (or a list holding it); without, aud must be absent."""
    auth = hs_auth(audience="trio-realtime")
    assert (await auth.authenticate(hs_token(aud="trio-realtime"), HANDSHAKE)).user == "alice"
    both = hs_token(aud=["other", "trio-realtime"])
    assert (await auth.authenticate(both, HANDSHAKE)).user == "alice"
    assert "wrong audience" in (await refused(auth, hs_token(aud="other"))).reason
    assert "no aud claim" in (await refused(auth, hs_token())).reason
    assert "wrong audience" in (await refused(hs_auth(), hs_token(aud="other"))).reason


async def test_jwt_issuer() -> None:
    """With an issuer, iss must be it."""
    auth = hs_auth(issuer="https://idp.example")
    good = hs_token(iss="https://idp.example")
    assert (await auth.authenticate(good, HANDSHAKE)).user == "alice"
    assert "wrong issuer" in (await refused(auth, hs_token(iss="https://evil.example"))).reason
    assert "no iss claim" in (await refused(auth, hs_token())).reason
    # Without a configured issuer, iss is not checked.
    assert (await hs_auth().authenticate(good, HANDSHAKE)).user == "alice"


async def test_jwt_kid_selection() -> None:
    """An unknown kid is refused; no kid is fine with one key only."""
    one = hs_auth()
    two = hs_auth(keys=[JWTKey("k1", secret=SECRET), JWTKey("k2", secret=OTHER_SECRET)])
    assert (await refused(one, hs_token(kid="k9"))).reason == "unknown kid"
    assert (await one.authenticate(hs_token(kid=None), HANDSHAKE)).user == "alice"
    assert "no kid" in (await refused(two, hs_token(kid=None))).reason
    odd = hand_made(
        {"alg": "HS256", "kid": 7}, claims(), lambda d: hmac.new(SECRET, d, "sha256").digest()
    )
    await refused(one, odd)  # PyJWT itself refuses a kid that is not a string
    # A token whose kid names the other key is checked against that key.
    assert "bad signature" in (await refused(two, hs_token(kid="k2"))).reason


async def test_jwt_key_rotation() -> None:
    """Two kids are both accepted; once one is removed, its tokens are refused."""
    old, new = JWTKey("2024", secret=SECRET), JWTKey("2025", secret=OTHER_SECRET)
    both = hs_auth(keys=[old, new])
    old_token = hs_token(kid="2024", secret=SECRET, sub="old")
    new_token_ = hs_token(kid="2025", secret=OTHER_SECRET, sub="new")
    assert (await both.authenticate(old_token, HANDSHAKE)).user == "old"
    assert (await both.authenticate(new_token_, HANDSHAKE)).user == "new"
    assert both.kids == ("2024", "2025")
    after = hs_auth(keys=[new])
    assert (await refused(after, old_token)).reason == "unknown kid"
    assert (await after.authenticate(new_token_, HANDSHAKE)).user == "new"


@pytest.mark.parametrize(
    "sub", ["a.b", "*", ">", "a.>", "$sys", "orders.*", "", "x" * 129, "bob@example", "a b"]
)
async def test_jwt_unsafe_sub_is_refused(sub: str) -> None:
    """A sub that is not a safe user name ('.', wildcards, '$', empty, too long) is refused."""
    reason = (await refused(hs_auth(), hs_token(sub=sub))).reason
    assert reason in ("sub is not a valid user name", "the token has no sub claim")


@pytest.mark.parametrize("sub", [42, ["alice"], ANONYMOUS_USER])
async def test_jwt_non_string_or_reserved_sub_is_refused(sub: object) -> None:
    """A sub that is not a string, or is the reserved anonymous name, is refused."""
    await refused(hs_auth(), hs_token(sub=sub))


async def test_jwt_perm_claim_gives_the_permissions() -> None:
    """A perm claim in the config file's shape is the identity's permissions."""
    identity = await hs_auth(permissions=Permissions.everything()).authenticate(
        hs_token(perm=PERM), HANDSHAKE
    )
    assert identity.permissions == Permissions.from_dict(PERM, where="perm")


@pytest.mark.parametrize(
    "perm",
    [
        "everything",
        ["orders.>"],
        {"publish": {"allow": ["orders..x"]}},
        {"publish": {"allow": "orders.>"}},
        {"subscribe": {"allow": ["a.>.b"]}},
        {"bogus": True},
    ],
)
async def test_jwt_bad_perm_claim_is_refused(perm: object) -> None:
    """A perm claim that is not a valid permissions table refuses the token."""
    reason = await refused(hs_auth(permissions=Permissions.everything()), hs_token(perm=perm))
    assert reason.reason.startswith("bad perm claim")


async def test_jwt_rs256_es256_eddsa(
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    ed_key: ed25519.Ed25519PrivateKey,
) -> None:
    """RSA, EC P-256 and Ed25519 public keys verify their algorithms, each by its kid."""
    auth = JWTAuthenticator(
        keys=[
            JWTKey("rsa", public_key=pem(rsa_key)),
            JWTKey("ec", public_key=pem(ec_key).decode()),
            JWTKey("ed", public_key=pem(ed_key)),
        ],
        algorithms=["RS256", "PS256", "ES256", "EdDSA"],
        audience="trio-realtime",
    )
    cases: list[tuple[str, Any, str]] = [
        ("rsa", rsa_key, "RS256"),
        ("rsa", rsa_key, "PS256"),
        ("ec", ec_key, "ES256"),
        ("ed", ed_key, "EdDSA"),
    ]
    for kid, key, alg in cases:
        token = jwt.encode(
            claims(sub=f"u-{kid}", aud="trio-realtime"), key, algorithm=alg, headers={"kid": kid}
        )
        assert (await auth.authenticate(token, HANDSHAKE)).user == f"u-{kid}"
    # A key of one kind never verifies another's algorithm.
    wrong = jwt.encode(
        claims(aud="trio-realtime"), ec_key, algorithm="ES256", headers={"kid": "ed"}
    )
    assert "does not fit key" in (await refused(auth, wrong)).reason
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        claims(aud="trio-realtime"), other, algorithm="RS256", headers={"kid": "rsa"}
    )
    assert "bad signature" in (await refused(auth, forged)).reason


async def test_jwt_ec_key_verifies_only_its_curve(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """A P-256 key verifies ES256 and not ES384, even when both are allowed."""
    auth = JWTAuthenticator(
        keys=[JWTKey("ec", public_key=pem(ec_key))], algorithms=["ES256", "ES384"]
    )
    p384 = ec.generate_private_key(ec.SECP384R1())
    token = jwt.encode(claims(), p384, algorithm="ES384", headers={"kid": "ec"})
    assert "does not fit key" in (await refused(auth, token)).reason
    with pytest.raises(ValueError, match="fits none"):
        JWTAuthenticator(keys=[JWTKey("ec", public_key=pem(ec_key))], algorithms=["ES384"])


def test_jwt_weak_or_wrong_keys_are_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """Short secrets, PEM secrets, weak RSA keys, private keys and non-keys fail at construction."""
    with pytest.raises(ValueError, match="at least 32"):
        JWTKey("k1", secret=b"short")
    with pytest.raises(ValueError, match="is a PEM key"):
        JWTKey("k1", secret=pem(rsa_key))
    with pytest.raises(ValueError, match="HS512 needs a secret of at least 64"):
        hs_auth(keys=[JWTKey("k1", secret=b"x" * 32)], algorithms=["HS256", "HS512"])
    with pytest.raises(ValueError, match="exactly one"):
        JWTKey("k1")
    with pytest.raises(ValueError, match="exactly one"):
        JWTKey("k1", secret=SECRET, public_key=pem(rsa_key))
    with pytest.raises(ValueError, match="kid"):
        JWTKey("", secret=SECRET)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="too weak"):
        JWTAuthenticator(keys=[JWTKey("k1", public_key=pem(weak))], algorithms=["RS256"])
    private = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for bad in (
        private,
        b"not a key",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
    ):
        with pytest.raises(ValueError, match="not a PEM public key"):
            JWTAuthenticator(keys=[JWTKey("k1", public_key=bad)], algorithms=["RS256"])
    with pytest.raises(ValueError, match="two JWT keys"):
        hs_auth(keys=[JWTKey("k1", secret=SECRET), JWTKey("k1", secret=OTHER_SECRET)])
    with pytest.raises(ValueError, match="at least one key"):
        hs_auth(keys=[])
    with pytest.raises(ValueError, match="leeway"):
        hs_auth(leeway=-1)


def test_jwt_secrets_never_show_in_reprs(rsa_key: rsa.RSAPrivateKey) -> None:
    """The repr of a key or an authenticator names kids, never secrets."""
    key = JWTKey("k1", secret=SECRET)
    auth = hs_auth(keys=[key])
    for text in (repr(key), repr(auth), repr(FirstOf([auth]))):
        assert "k1" in text
        assert SECRET.decode() not in text


# --- JWT keys from the config ----------------------------------------------------------------


def test_key_secret_from_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """secret_env names the variable holding the secret; a missing one is named in the error."""
    key = JWTKey.from_config(
        {"kid": "k1", "secret_env": "RT_SECRET"}, environ={"RT_SECRET": "s" * 40}
    )
    assert key == JWTKey("k1", secret=b"s" * 40)
    with pytest.raises(ValueError, match=r"auth\.jwt\.keys\[0\]: the environment variable RT_X"):
        JWTKey.from_config(
            {"kid": "k1", "secret_env": "RT_X"}, where="auth.jwt.keys[0]", environ={}
        )
    monkeypatch.setenv("RT_FROM_ENV", "e" * 40)
    assert JWTKey.from_env("k2", "RT_FROM_ENV").secret == b"e" * 40
    monkeypatch.delenv("RT_FROM_ENV")
    with pytest.raises(ValueError, match="RT_FROM_ENV is not set"):
        JWTKey.from_env("k2", "RT_FROM_ENV")


def test_key_public_key_from_a_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """public_key_file is read (relative to base); a missing file is named in the error."""
    (tmp_path / "k1.pem").write_bytes(pem(rsa_key))
    key = JWTKey.from_config({"kid": "k1", "public_key_file": "k1.pem"}, base=tmp_path)
    assert key.public_key == pem(rsa_key)
    assert JWTKey.from_file("k1", tmp_path / "k1.pem") == key
    with pytest.raises(ValueError, match=r"cannot read public_key_file.*nope\.pem"):
        JWTKey.from_config({"kid": "k1", "public_key_file": "nope.pem"}, base=tmp_path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"secret_env": "X"}, "kid is missing"),
        ({"kid": "k1"}, "exactly one of secret_env"),
        ({"kid": "k1", "secret_env": "X", "public_key_file": "f"}, "exactly one of secret_env"),
        ({"kid": "k1", "secret": "inline"}, "unknown key 'secret'"),
        ({"kid": "k1", "secret_env": ""}, "must name an environment variable"),
        ({"kid": "k1", "public_key_file": 3}, "must be a file name"),
        ({"kid": "k1", "secret_env": "X", "algorithm": 256}, "algorithm must be a string"),
    ],
)
def test_key_config_errors_name_what_is_wrong(table: dict[str, Any], message: str) -> None:
    """A bad key table raises ValueError naming where it is and what is wrong."""
    with pytest.raises(ValueError, match=f"^here: .*{message}"):
        JWTKey.from_config(table, where="here", environ={"X": "x" * 40})


async def test_jwt_authenticator_from_the_issues_config_shape(tmp_path: Path) -> None:
    """[auth.jwt] with algorithms, audience and [[auth.jwt.keys]] builds an authenticator."""
    import tomllib

    config = tomllib.loads(
        """
        [auth.jwt]
        algorithms = ["HS256", "RS256", "EdDSA"]
        audience = "trio-realtime"
        leeway = 30
        [[auth.jwt.keys]]
        kid = "k1"
        secret_env = "RT_JWT_SECRET"
        """
    )
    auth = JWTAuthenticator.from_config(
        config["auth"]["jwt"], environ={"RT_JWT_SECRET": SECRET.decode()}
    )
    assert auth.leeway == 30.0
    assert auth.audience == "trio-realtime"
    token = hs_token(aud="trio-realtime")
    assert (await auth.authenticate(token, HANDSHAKE)).user == "alice"
    for bad, message in [
        ({**config["auth"]["jwt"], "algorithms": "HS256"}, r"auth\.jwt\.algorithms"),
        ({**config["auth"]["jwt"], "algorithms": ["none"]}, r"auth\.jwt: .*'none' is refused"),
        ({**config["auth"]["jwt"], "keys": []}, r"auth\.jwt\.keys: at least one"),
        ({**config["auth"]["jwt"], "leeway": "1s"}, r"auth\.jwt\.leeway"),
        ({**config["auth"]["jwt"], "audiences": "x"}, r"unknown key 'audiences'"),
        ({**config["auth"]["jwt"], "issuer": 1}, r"auth\.jwt\.issuer"),
        ({**config["auth"]["jwt"], "keys": [{"kid": "k1"}]}, r"auth\.jwt\.keys\[0\]"),
        ({**config["auth"]["jwt"], "keys": ["k1"]}, r"auth\.jwt\.keys\[0\]: must be a table"),
    ]:
        with pytest.raises(ValueError, match=message):
            JWTAuthenticator.from_config(bad, environ={"RT_JWT_SECRET": SECRET.decode()})


# --- FirstOf and custom authenticators -------------------------------------------------------


async def test_first_of_tries_static_then_jwt() -> None:
    """A static token and a JWT both work; anything else is refused with both reasons."""
    users, (alice,) = static("alice", anonymous=Permissions.nothing())
    auth = FirstOf([users, hs_auth()])
    assert (await auth.authenticate(alice, HANDSHAKE)).user == "alice"
    assert (await auth.authenticate(hs_token(sub="bob"), HANDSHAKE)).user == "bob"
    assert (await auth.authenticate(None, HANDSHAKE)).user == ANONYMOUS_USER
    reason = (await refused(auth, "wrong")).reason
    assert reason == "StaticUsers: unknown token; JWTAuthenticator: not a JWT"
    expired = hs_token(exp=int(time.time() - 10 * MINUTE))
    assert "has expired" in (await refused(auth, expired)).reason


class Directory:
    """A custom authenticator: an external directory of users (the auth-callout role)."""

    def __init__(self) -> None:
        self.seen: list[HandshakeInfo] = []

    async def authenticate(self, token: str | None, handshake: HandshakeInfo) -> Identity:
        self.seen.append(handshake)
        if token == "directory-token":
            return Identity("carol", Permissions.everything(), expires=time.time() + 60)
        if token == "broken":
            raise RuntimeError("the directory is down")
        raise AuthFailed("not in the directory")


async def test_first_of_with_a_custom_authenticator() -> None:
    """A custom authenticator takes part; its own errors are not swallowed."""
    directory = Directory()
    auth: Authenticator = FirstOf([hs_auth(), directory])
    assert (await auth.authenticate("directory-token", HANDSHAKE)).user == "carol"
    assert directory.seen == [HANDSHAKE]
    assert (await refused(auth, "nobody")).reason.endswith("Directory: not in the directory")
    with pytest.raises(RuntimeError, match="down"):
        await auth.authenticate("broken", HANDSHAKE)
    with pytest.raises(ValueError, match="at least one"):
        FirstOf([])


def test_auth_failed_is_generic_towards_the_peer() -> None:
    """AuthFailed's message is always the same; the reason is separate."""
    exc = AuthFailed("unknown kid")
    assert str(exc) == "authentication failed"
    assert exc.reason == "unknown kid"
    assert exc.CODE == "auth_failed"
    assert AuthFailed().reason == "authentication failed"


def test_the_module_imports_without_pyjwt() -> None:
    """Without PyJWT, static users work and JWTAuthenticator names the extra to install."""
    code = """
import sys
sys.modules["jwt"] = None
import trio
from trio_realtime.security import JWTAuthenticator, JWTKey, StaticUsers, HandshakeInfo
from trio_realtime.security import Permissions
auth = StaticUsers([], anonymous=Permissions.nothing())
print(trio.run(auth.authenticate, None, HandshakeInfo()).user)
try:
    JWTAuthenticator(keys=[JWTKey("k1", secret=b"s" * 32)], algorithms=["HS256"])
except ImportError as exc:
    print(exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.splitlines() == [
        "anonymous",
        "JWT authentication needs PyJWT: install the jwt extra: pip install 'trio-realtime[jwt]'",
    ]


async def test_a_token_that_is_not_a_string_is_refused() -> None:
    """A token of another type (a bug in a caller) is refused, not a crash."""
    users, _ = static("alice")
    for auth in (users, hs_auth()):
        token: Any = SECRET
        with pytest.raises(AuthFailed, match="authentication failed"):
            await auth.authenticate(token, HANDSHAKE)


def test_keys_of_no_jwt_algorithm_are_refused() -> None:
    """An EC key on another curve, a DSA key, or an unknown algorithm fail at construction."""
    from cryptography.hazmat.primitives.asymmetric import dsa

    k256 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ValueError, match="secp256k1 is not one of"):
        JWTAuthenticator(keys=[JWTKey("k", public_key=pem(k256))], algorithms=["ES256"])
    dsa_pem = (
        dsa.generate_private_key(key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="cannot verify JWTs"):
        JWTAuthenticator(keys=[JWTKey("k", public_key=dsa_pem)], algorithms=["RS256"])
    with pytest.raises(ValueError, match="unknown algorithm 'RS1'"):
        JWTKey("k", secret=SECRET, algorithm="RS1")
    not_bytes: Any = "a-secret-as-a-string-not-bytes-0123456789"
    with pytest.raises(ValueError, match="secret must be bytes"):
        JWTKey("k", secret=not_bytes)
