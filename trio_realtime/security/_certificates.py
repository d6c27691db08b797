"""Client certificate subjects as RFC 4514 strings: what mutual TLS tells the authenticator.

The broker shows the subject of a client certificate that its TLS handshake verified as one
string (:attr:`HandshakeInfo.certificate_subject <trio_realtime.security.HandshakeInfo>`),
written by :func:`rfc4514_subject` from what :meth:`ssl.SSLSocket.getpeercert` returns:

* the most specific part first (``CN=alice,O=Example,C=FR``: the reverse of the order in the
  certificate), parts joined by ``,``, the attributes of a multi-valued part by ``+``;
* the short names ``CN L ST O OU C STREET DC UID``; any other attribute by the name
  :mod:`ssl` gives it (``emailAddress``, or a dotted OID such as ``1.2.3.4``);
* values as text (UTF-8, nothing hex-encoded), with the escapes of RFC 4514 section 2.4:
  ``\\`` before ``" + , ; < > \\``, before a leading ``#`` or space and a trailing space, and
  ``\\00`` for NUL; nothing else (``=`` is not escaped).

That string is what a :class:`~trio_realtime.security.User`'s ``certificate_subject`` must
equal, character for character. :func:`canonical_subject` reads a string written by hand
back into that form, so that a config file with ``CN = alice, O = Example`` is refused with
the spelling that would match, rather than matching no one in silence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

__all__ = [
    "SHORT_NAMES",
    "canonical_subject",
    "check_certificate_subject",
    "peer_certificate_subject",
    "rfc4514_subject",
]

#: The attributes RFC 4514 writes by a short name, by the name :mod:`ssl` gives them.
SHORT_NAMES: Final[Mapping[str, str]] = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_BY_SHORT_NAME: Final = {short.upper(): long for long, short in SHORT_NAMES.items()}
_ESCAPES: Final = str.maketrans({**{c: "\\" + c for c in '"+,;<>\\'}, "\0": "\\00"})
_HEX: Final = frozenset("0123456789abcdefABCDEF")

#: One attribute of a name: its type (as :mod:`ssl` names it) and its value.
Attribute = tuple[str, str]


def _escape(value: str) -> str:
    escaped = value.translate(_ESCAPES)
    if value[:1] in ("#", " "):
        escaped = "\\" + escaped
    if value.endswith(" ") and len(value) > 1:  # (a lone space is escaped as leading already)
        escaped = escaped[:-1] + "\\ "
    return escaped


def rfc4514_subject(subject: Iterable[Iterable[Attribute]]) -> str:
    """The RFC 4514 string of a certificate's *subject*, as the broker shows it.

    *subject* has the shape of the ``"subject"`` of :meth:`ssl.SSLSocket.getpeercert`: the
    relative distinguished names in the certificate's order, each a sequence of
    ``(type, value)`` pairs, such as ``((("countryName", "FR"),), (("commonName", "alice"),))``
    (which gives ``"CN=alice,C=FR"``). See the module's docstring for the rules.
    """
    return ",".join(
        "+".join(f"{SHORT_NAMES.get(kind, kind)}={_escape(value)}" for kind, value in rdn)
        for rdn in reversed(list(subject))
    )


def peer_certificate_subject(certificate: Mapping[str, object] | None) -> str | None:
    """The :func:`rfc4514_subject` of what :meth:`ssl.SSLSocket.getpeercert` returned.

    None when the peer presented no certificate, or one the handshake did not verify
    (``getpeercert()`` returns None or ``{}`` then), or one without a subject.
    """
    if not certificate:
        return None
    subject = certificate.get("subject")
    if not isinstance(subject, tuple) or not subject:
        return None
    return rfc4514_subject(subject)


def canonical_subject(text: str) -> str | None:
    """*text*, a subject written by hand, in the form :func:`rfc4514_subject` gives; None if
    it is no RFC 4514 name at all.

    Reading is lenient where people and tools differ: spaces around ``,``, ``+`` and ``=``
    are dropped, short names may be in any case and the long names of :data:`SHORT_NAMES` are
    understood, and ``\\XX`` escapes are UTF-8 bytes. The order of the parts is kept as
    written: it cannot be guessed. A value written as ``#`` and hex (BER) is not understood.
    """
    rdns: list[list[Attribute]] = []
    for part in _split(text, ","):
        rdn: list[Attribute] = []
        for item in _split(part, "+"):
            attribute = _attribute(item)
            if attribute is None:
                return None
            rdn.append(attribute)
        rdns.append(rdn)
    # rfc4514_subject takes the certificate's order, the reverse of the written one.
    return rfc4514_subject(reversed(rdns))


def _split(text: str, separator: str) -> list[str]:
    """*text* cut at each *separator* that no backslash escapes (the escapes are kept)."""
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == separator:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _attribute(item: str) -> Attribute | None:
    """``TYPE=VALUE`` (escapes and all) as the pair :mod:`ssl` would give; None if it is not
    one."""
    kind, equals, raw = item.partition("=")
    kind = kind.strip()
    if not equals or not kind or "\\" in kind:
        return None
    value = _unescape(raw)
    if value is None:
        return None
    return _BY_SHORT_NAME.get(kind.upper(), kind), value


def _unescape(raw: str) -> str | None:
    """A value's text: escapes undone, unescaped spaces at either end dropped; None if an
    escape is cut short, it is a ``#`` hex value, or its ``\\XX`` bytes are not UTF-8."""
    start = len(raw) - len(raw.lstrip(" "))
    if raw[start:].startswith("#"):
        return None
    out = bytearray()
    end = 0  # the length of `out` up to the last character that is not an unescaped space
    i = start
    while i < len(raw):
        char = raw[i]
        if char == "\\":
            pair = raw[i + 1 : i + 3]
            if len(pair) == 2 and set(pair) <= _HEX:
                out.append(int(pair, 16))
                i += 3
            elif len(pair) >= 1:
                out += pair[0].encode("utf-8", "surrogatepass")
                i += 2
            else:
                return None
            end = len(out)
            continue
        out += char.encode("utf-8", "surrogatepass")
        if char != " ":
            end = len(out)
        i += 1
    try:
        return bytes(out[:end]).decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_certificate_subject(value: object, *, what: str = "a certificate subject") -> str:
    """Return *value* if it is a subject written as :func:`rfc4514_subject` writes one; else
    raise :exc:`ValueError` saying why, with the spelling that would match when there is one.

    A subject written otherwise (``CN = alice``, ``cn=alice``) could never equal the one the
    broker shows, so a user with it could never connect: better refused when it is read.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    shown = repr(value[:80]) + ("…" if len(value) > 80 else "")
    canonical = canonical_subject(value)
    if canonical is None:
        raise ValueError(
            f"{what} must be an RFC 4514 name such as 'CN=alice,O=Example', not {shown} "
            f"(`openssl x509 -noout -subject -nameopt RFC2253 -in CERT` prints one)"
        )
    if canonical != value:
        raise ValueError(
            f"{what} must be written as the broker shows subjects, {canonical!r}, not {shown} "
            f"(RFC 4514: most specific part first, short names such as CN, no spaces around "
            f"',' and '=')"
        )
    return value
