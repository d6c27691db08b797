"""Users known by their client certificates (mutual TLS), on a real broker.

The broker runs in process on 127.0.0.1, port 0, serving ``wss://`` with a certificate from a
throwaway CA (``trustme``) and requiring client certificates from a second one. Its static
users: alice, known by her certificate's subject only, who may publish under ``orders.>``
and subscribe to ``orders.*``; bob, known by his token, who may do anything. Clients are
:func:`open_client` presenting a certificate through its ``ssl_context``, and independent
``websockets`` connections.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
import trio
import trustme
from _broker_process import RECV_TIMEOUT, Peer, in_thread
from conftest import TIMEOUT
from websockets.sync.client import connect

from trio_realtime import Broker, PermissionDenied, open_client
from trio_realtime.security import Permissions, StaticUsers, User, token_sha256

BOB_TOKEN: Final = "bob-token-of-the-certificate-tests"
ALICE_SUBJECT: Final = "CN=alice,OU=Clients,O=Example"


def users() -> StaticUsers:
    alice = Permissions.from_dict(
        {"publish": {"allow": ["orders.>"]}, "subscribe": {"allow": ["orders.*"]}}
    )
    return StaticUsers(
        [
            User("alice", permissions=alice, certificate_subject=ALICE_SUBJECT),
            User("bob", token_sha256(BOB_TOKEN), Permissions.everything()),
        ]
    )


class Certificates:
    """The broker's CA and certificate, and a CA for clients' certificates."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1")
        self.client_ca = trustme.CA()

    def server_context(self) -> ssl.SSLContext:
        """The broker's context: its certificate, and client certificates required."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        self.client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self, name: str, *, ca: trustme.CA | None = None) -> ssl.SSLContext:
        """A client context trusting the broker and presenting a certificate for
        ``CN=<name>,OU=Clients,O=Example`` that *ca* (the client CA) signed, loaded from PEM
        files with ``load_cert_chain``."""
        issued = (ca or self.client_ca).issue_cert(
            f"{name}@example.com",
            common_name=name,
            organization_name="Example",
            organization_unit_name="Clients",
        )
        cert, key = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        for blob in issued.cert_chain_pems:
            blob.write_to_path(str(cert), append=True)
        issued.private_key_pem.write_to_path(str(key))
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        context.load_cert_chain(cert, key)
        return context


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path)


@asynccontextmanager
async def mutual_tls(certs: Certificates) -> AsyncIterator[str]:
    """A broker with :func:`users`, requiring client certificates; its ``wss://`` URL."""
    broker = Broker(auth=users(), stats_interval=None)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(broker.serve, ssl_context=certs.server_context()), "127.0.0.1", 0
        )
        assert server.url.startswith("wss://")
        yield server.url
        nursery.cancel_scope.cancel()


def hello(
    url: str, context: ssl.SSLContext, token: str | None
) -> tuple[dict[str, Any], int | None]:
    """Say hello over an independent TLS connection: the answer, and the close code after a
    refusal."""
    with connect(
        url, ssl=context, open_timeout=RECV_TIMEOUT, close_timeout=RECV_TIMEOUT, ping_interval=None
    ) as ws:
        return Peer(ws).say_hello(token, "mutual-tls")


async def test_a_client_certificate_names_its_user(certs: Certificates) -> None:
    """open_client presenting alice's certificate (no token) is welcomed as alice, and her
    permissions apply: a publish outside them is forbidden, one inside is routed."""
    with trio.fail_after(TIMEOUT):
        async with (
            mutual_tls(certs) as url,
            open_client(url, ssl_context=certs.client_context("alice"), reconnect=False) as alice,
            alice.subscribe("orders.new") as sub,
        ):
            assert alice.user == "alice"
            with pytest.raises(PermissionDenied):
                await alice.publish("secret.plans", 1, ack=True)
            await alice.publish("orders.new", 2, ack=True)
            assert (await sub.receive()).data == 2


async def test_an_unknown_subject_without_a_token_is_refused(certs: Certificates) -> None:
    """A certificate the client CA signed, for a subject no user has, and no token:
    auth_failed, then close 1008; a neighbour connected by certificate is served meanwhile."""
    with trio.fail_after(TIMEOUT):
        async with (
            mutual_tls(certs) as url,
            open_client(url, ssl_context=certs.client_context("alice"), reconnect=False) as alice,
            alice.subscribe("orders.new") as sub,
        ):
            answer, code = await in_thread(
                partial(hello, url, certs.client_context("mallory"), None)
            )
            assert (answer["type"], answer["code"], code) == ("error", "auth_failed", 1008)
            await alice.publish("orders.new", "still here")
            assert (await sub.receive()).data == "still here"


async def test_a_token_decides_even_with_a_certificate(certs: Certificates) -> None:
    """bob's token with alice's certificate is bob; a wrong token with alice's certificate is
    refused (never downgraded to the certificate's user); alice's certificate alone is
    alice."""
    alice = certs.client_context("alice")
    with trio.fail_after(TIMEOUT):
        async with mutual_tls(certs) as url:
            welcome, _ = await in_thread(partial(hello, url, alice, BOB_TOKEN))
            assert (welcome["type"], welcome["user"]) == ("welcome", "bob")
            answer, code = await in_thread(partial(hello, url, alice, "not-a-token"))
            assert (answer["type"], answer["code"], code) == ("error", "auth_failed", 1008)
            welcome, _ = await in_thread(partial(hello, url, alice, None))
            assert (welcome["type"], welcome["user"]) == ("welcome", "alice")
