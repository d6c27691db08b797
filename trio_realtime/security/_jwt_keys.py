"""The key material of JWT authentication: algorithms, key kinds, and loading keys.

:class:`~trio_realtime.security.JWTAuthenticator` and
:class:`~trio_realtime.security.JWTKey` use these; nothing here imports PyJWT or
``cryptography`` until a key needs it (they are the optional ``jwt`` extra). Every error is a
:exc:`ValueError` (or an :exc:`ImportError` naming the extra) that names the key, and never
quotes a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "EC_CURVES",
    "HMAC_MIN_BYTES",
    "JWT_ALGORITHMS",
    "JWT_EXTRA",
    "KeyKind",
    "import_jwt",
    "is_pem",
    "key_kind",
    "load_public_key",
    "read_pem",
    "secret_from_env",
]

KeyKind = Literal["hmac", "rsa", "ec", "okp"]

#: The JWT algorithms :class:`~trio_realtime.security.JWTAuthenticator` knows, each with
#: the kind of key it needs. ``none`` is not one of them, on purpose.
JWT_ALGORITHMS: Final[Mapping[str, KeyKind]] = {
    "HS256": "hmac",
    "HS384": "hmac",
    "HS512": "hmac",
    "RS256": "rsa",
    "RS384": "rsa",
    "RS512": "rsa",
    "PS256": "rsa",
    "PS384": "rsa",
    "PS512": "rsa",
    "ES256": "ec",
    "ES384": "ec",
    "ES512": "ec",
    "EdDSA": "okp",
}
#: The shortest HMAC secret for each algorithm: its hash's output (RFC 7518, section 3.2).
HMAC_MIN_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_MIN_BITS: Final = 2048
EC_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
JWT_EXTRA: Final = "install the jwt extra: pip install 'trio-realtime[jwt]'"


def import_jwt() -> Any:
    try:
        import jwt  # the jwt extra is optional: imported when needed
    except ImportError as exc:
        raise ImportError(f"JWT authentication needs PyJWT: {JWT_EXTRA}") from exc
    return jwt


def load_public_key(data: str | bytes, *, kid: str) -> Any:
    try:
        from cryptography.hazmat.primitives.serialization import (
            load_pem_public_key,
        )
    except ImportError as exc:
        raise ImportError(
            f"JWT key {kid!r}: public keys need the cryptography package: {JWT_EXTRA}"
        ) from exc
    try:
        return load_pem_public_key(data.encode("ascii") if isinstance(data, str) else data)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ValueError(
            f"JWT key {kid!r}: public_key is not a PEM public key "
            f"(-----BEGIN PUBLIC KEY-----; a private key or a certificate will not do)"
        ) from None


def key_kind(key: Any, *, kid: str) -> KeyKind:
    from cryptography.hazmat.primitives.asymmetric import (
        ec,
        ed448,
        ed25519,
        rsa,
    )

    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _RSA_MIN_BITS:
            raise ValueError(
                f"JWT key {kid!r}: an RSA key of {key.key_size} bits is too weak: use at "
                f"least {_RSA_MIN_BITS} bits"
            )
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES.values():
            raise ValueError(
                f"JWT key {kid!r}: the curve {key.curve.name} is not one of ES256 (P-256), "
                f"ES384 (P-384) or ES512 (P-521)"
            )
        return "ec"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "okp"
    raise ValueError(
        f"JWT key {kid!r}: a {type(key).__name__} cannot verify JWTs: use an RSA, EC "
        f"(P-256, P-384, P-521) or Ed25519/Ed448 key"
    )


def is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def secret_from_env(variable: object, environ: Mapping[str, str] | None, *, where: str) -> bytes:
    if not isinstance(variable, str) or not variable:
        raise ValueError(f"{where}: secret_env must name an environment variable")
    value = (os.environ if environ is None else environ).get(variable)
    if not value:
        raise ValueError(f"{where}: the environment variable {variable} is not set")
    return value.encode("utf-8")


def read_pem(name: object, base: str | os.PathLike[str] | None, *, where: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: public_key_file must be a file name")
    path = Path(name)
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(
            f"{where}: cannot read public_key_file {str(path)!r}: {exc.strerror}"
        ) from None
