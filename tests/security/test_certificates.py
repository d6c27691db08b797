"""Client certificate subjects as RFC 4514 strings (mutual TLS), against an independent oracle.

The oracle is the ``cryptography`` package's ``Name.rfc4514_string()``: names are built with
it, turned into the shape :meth:`ssl.SSLSocket.getpeercert` gives, and written by
:func:`rfc4514_subject`; the two strings must be equal. A few real certificates then go
through a real TLS handshake (in memory), so that the shape itself is :mod:`ssl`'s own.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Final

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import given
from hypothesis import strategies as st

from trio_realtime.security._certificates import (
    canonical_subject,
    check_certificate_subject,
    peer_certificate_subject,
    rfc4514_subject,
)

#: The name :mod:`ssl` gives each attribute type the tests use (OpenSSL's long name, or the
#: dotted OID for a type OpenSSL does not know).
SSL_NAMES: Final = {
    NameOID.COMMON_NAME: "commonName",
    NameOID.LOCALITY_NAME: "localityName",
    NameOID.STATE_OR_PROVINCE_NAME: "stateOrProvinceName",
    NameOID.ORGANIZATION_NAME: "organizationName",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "organizationalUnitName",
    NameOID.COUNTRY_NAME: "countryName",
    NameOID.STREET_ADDRESS: "streetAddress",
    NameOID.DOMAIN_COMPONENT: "domainComponent",
    NameOID.USER_ID: "userId",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.GIVEN_NAME: "givenName",
    NameOID.SURNAME: "surname",
    NameOID.TITLE: "title",
    ObjectIdentifier("1.3.6.1.4.1.99999.1"): "1.3.6.1.4.1.99999.1",
}
#: What cryptography writes differently: it names by a short name only the nine of RFC 4514
#: (which the broker does too) and uses dotted OIDs for the rest, where the broker keeps the
#: name ssl gives.
OVERRIDES: Final = {
    oid: name
    for oid, name in SSL_NAMES.items()
    if oid
    in (
        NameOID.EMAIL_ADDRESS,
        NameOID.SERIAL_NUMBER,
        NameOID.GIVEN_NAME,
        NameOID.SURNAME,
        NameOID.TITLE,
    )
}

# Values lean towards what RFC 4514 escapes: specials, '#', spaces at either end, NUL.
_CHARACTERS = st.one_of(
    st.sampled_from(' #"+,;<>\\=\0'),
    st.characters(codec="ascii"),
    st.characters(exclude_categories=["Cs"]),
)
_VALUES = st.text(_CHARACTERS, max_size=12)


@st.composite
def attributes(draw: st.DrawFn) -> x509.NameAttribute[str]:
    oid = draw(st.sampled_from(sorted(SSL_NAMES, key=lambda o: o.dotted_string)))
    if oid == NameOID.COUNTRY_NAME:  # two bytes of UTF-8, as cryptography insists
        value = draw(st.text(st.sampled_from('FRUS #,+"\\ '), min_size=2, max_size=2))
    elif oid == NameOID.COMMON_NAME:  # 1 to 64 bytes
        value = draw(_VALUES.filter(lambda v: 1 <= len(v.encode()) <= 64))
    else:
        value = draw(_VALUES)
    return x509.NameAttribute(oid, value)


names = st.lists(
    st.lists(attributes(), min_size=1, max_size=3, unique_by=lambda a: (a.oid, a.value)).map(
        x509.RelativeDistinguishedName
    ),
    min_size=1,
    max_size=5,
).map(x509.Name)


def ssl_shape(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
    """*name* as ``getpeercert()["subject"]`` gives it: the certificate's order of parts."""
    return tuple(
        tuple((SSL_NAMES[attribute.oid], str(attribute.value)) for attribute in rdn)
        for rdn in name.rdns
    )


@given(names)
def test_the_subject_is_written_as_cryptography_writes_it(name: x509.Name) -> None:
    """Any name (multi-valued parts, specials, spaces, '#', NUL, any Unicode) is written as
    cryptography's rfc4514_string writes it."""
    assert rfc4514_subject(ssl_shape(name)) == name.rfc4514_string(OVERRIDES)


@given(names)
def test_a_subject_the_broker_writes_is_canonical(name: x509.Name) -> None:
    """What the broker writes reads back as itself: a config file may hold it as it is."""
    subject = rfc4514_subject(ssl_shape(name))
    assert canonical_subject(subject) == subject
    assert check_certificate_subject(subject) == subject


def test_the_escapes_of_rfc_4514() -> None:
    """'"+,;<>\\' anywhere, a leading '#' or space, a trailing space and NUL are escaped;
    '=' and inner spaces are not; parts go most specific first."""
    shape = (
        (("countryName", "FR"),),
        (("organizationName", "Example, Inc."),),
        (("commonName", " #a=b "), ("userId", 'x+y"<>;\\\0')),
    )
    assert rfc4514_subject(shape) == (
        'CN=\\ #a=b\\ +UID=x\\+y\\"\\<\\>\\;\\\\\\00,O=Example\\, Inc.,C=FR'
    )
    assert rfc4514_subject(((("commonName", " "),),)) == "CN=\\ "
    assert rfc4514_subject(((("commonName", "#"),),)) == "CN=\\#"
    assert rfc4514_subject(((("commonName", "a#"),),)) == "CN=a#"
    assert rfc4514_subject(((("emailAddress", "a@b"),), (("1.2.3.4", "é"),))) == (
        "1.2.3.4=é,emailAddress=a@b"
    )


def test_no_verified_certificate_is_no_subject() -> None:
    """getpeercert() gives None without a certificate and {} for one not verified."""
    assert peer_certificate_subject(None) is None
    assert peer_certificate_subject({}) is None
    assert peer_certificate_subject({"subject": ()}) is None
    certificate = {"subject": ((("commonName", "alice"),),), "issuer": ()}
    assert peer_certificate_subject(certificate) == "CN=alice"


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("CN = alice, O = Example", "CN=alice,O=Example"),
        ("cn=alice,o=Example", "CN=alice,O=Example"),
        ("commonName=alice,organizationName=Example", "CN=alice,O=Example"),
        ("CN=\\C3\\A9t\\C3\\A9", "CN=été"),
        ("CN=a\\,b + UID=c", "CN=a\\,b+UID=c"),
        ("CN=trailing  ", "CN=trailing"),
        ("CN=\\ ", "CN=\\ "),
        ("CN=a\\= b", "CN=a= b"),
    ],
)
def test_a_subject_written_by_hand_is_read_leniently(written: str, canonical: str) -> None:
    """Spaces around separators, lowercase or long names and hex escapes are understood, and
    the message says how the broker writes the subject."""
    assert canonical_subject(written) == canonical
    if written != canonical:
        with pytest.raises(ValueError, match="must be written as the broker shows subjects"):
            check_certificate_subject(written)


@pytest.mark.parametrize("written", ["", "alice", "CN", "=alice", "CN=#0403616263", "CN=a\\"])
def test_what_is_no_name_at_all_is_refused(written: str) -> None:
    """No '=', no type, a BER hex value or a cut escape: not an RFC 4514 name."""
    assert canonical_subject(written) is None
    with pytest.raises(ValueError, match="must be an RFC 4514 name"):
        check_certificate_subject(written)
    with pytest.raises(ValueError, match="must be a string, not int"):
        check_certificate_subject(42)


# --- real certificates through a real TLS handshake ------------------------------------------

_KEY = ec.generate_private_key(ec.SECP256R1())


def issue(ca: trustme.CA, subject: x509.Name, folder: Path) -> ssl.SSLContext:
    """A client context presenting a certificate for *subject* that *ca* signed."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # (trustme's default)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = folder / "client.pem", folder / "client.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        _KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context()
    context.load_cert_chain(cert_file, key_file)
    return context


def rdn(*pairs: tuple[ObjectIdentifier, str]) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName([x509.NameAttribute(oid, v) for oid, v in pairs])


SUBJECTS: Final = {
    "plain": x509.Name(
        [
            rdn((NameOID.COUNTRY_NAME, "FR")),
            rdn((NameOID.ORGANIZATION_NAME, "Example")),
            rdn((NameOID.COMMON_NAME, "alice")),
        ]
    ),
    "multi-valued": x509.Name(
        [
            rdn((NameOID.ORGANIZATION_NAME, "Example")),
            rdn((NameOID.USER_ID, "a1"), (NameOID.COMMON_NAME, "alice")),
        ]
    ),
    "specials": x509.Name(
        [
            rdn((NameOID.ORGANIZATIONAL_UNIT_NAME, "a\0b")),
            rdn((NameOID.COMMON_NAME, ' #a,b+c"d;e<f>g\\h=i ')),
        ]
    ),
    "unicode": x509.Name(
        [
            rdn((NameOID.ORGANIZATION_NAME, "Société Générale")),
            rdn((NameOID.COMMON_NAME, "Zoë 名前 🦊")),
        ]
    ),
    "every kind": x509.Name(
        [
            rdn((NameOID.DOMAIN_COMPONENT, "org")),
            rdn((NameOID.DOMAIN_COMPONENT, "example")),
            rdn((NameOID.STATE_OR_PROVINCE_NAME, "Île-de-France")),
            rdn((NameOID.LOCALITY_NAME, "Paris")),
            rdn((NameOID.STREET_ADDRESS, "1 rue de la Paix")),
            rdn((NameOID.SERIAL_NUMBER, "42")),
            rdn((NameOID.EMAIL_ADDRESS, "alice@example.org")),
            rdn((ObjectIdentifier("1.3.6.1.4.1.99999.1"), "private")),
            rdn((NameOID.COMMON_NAME, "alice")),
        ]
    ),
}


@pytest.mark.parametrize("subject", SUBJECTS.values(), ids=SUBJECTS.keys())
async def test_a_verified_certificate_through_ssl(subject: x509.Name, tmp_path: Path) -> None:
    """After a real handshake that verified the client's certificate, the server's
    getpeercert() gives the subject cryptography reads from the certificate."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    server.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server)
    client = issue(ca, subject, tmp_path)
    ca.configure_trust(client)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client_tls = trio.SSLStream(client_stream, client, server_hostname="localhost")
    server_tls = trio.SSLStream(server_stream, server, server_side=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_tls.do_handshake)
            nursery.start_soon(server_tls.do_handshake)
    shown = peer_certificate_subject(server_tls.getpeercert())
    parsed = x509.load_pem_x509_certificate(
        (tmp_path / "client.pem").read_bytes()
    ).subject.rfc4514_string(OVERRIDES)
    assert shown == parsed
    assert check_certificate_subject(shown) == shown
