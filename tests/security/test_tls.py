"""TLS for ``trio-realtime serve`` (issue 9, item 4): ``wss://``, and mutual TLS.

The broker runs as a real process (:func:`open_broker_process`) with certificates from a
throwaway CA (``trustme``); clients are :func:`open_client` with an ``ssl_context``, raw TCP
and the command line's client commands (``--ca-file``).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme
from _broker_process import open_broker_process
from test_listener import read_until, upgrade_request

from trio_realtime import ConnectionClosed, open_client
from trio_realtime._cli import CommandError, client_ssl_context, server_ssl_context

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SERVE = [sys.executable, "-m", "trio_realtime", "serve", "--port", "0", "--store", "memory"]
#: Seconds for one test's broker process and clients.
TLS_TIMEOUT = 30


class Certificates:
    """A server CA and the broker's certificate (127.0.0.1, localhost), a client CA and a
    client's certificate, as PEM files in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = folder / "server.pem"
        self.key = folder / "server.key"
        for blob in server.cert_chain_pems:
            blob.write_to_path(str(self.cert), append=True)
        server.private_key_pem.write_to_path(str(self.key))
        self.client_ca = trustme.CA()
        self.client_ca_file = folder / "client-ca.pem"
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_file))
        self.client = self.client_ca.issue_cert("alice@example.com")

    def client_context(self, *, with_certificate: bool = False) -> ssl.SSLContext:
        """A client context trusting the server CA, presenting the client's certificate if
        *with_certificate*."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if with_certificate:
            self.client.configure_cert(context)
        return context


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path)


async def round_trip(url: str, context: ssl.SSLContext, value: int) -> int:
    """Subscribe, publish *value* and receive it back over one client at *url*."""
    async with (
        open_client(url, ssl_context=context, reconnect=False) as client,
        client.subscribe("tls.check") as sub,
    ):
        await client.publish("tls.check", value, ack=True)
        event = await sub.receive()
        assert isinstance(event.data, int)
        return event.data


async def test_serve_with_a_certificate_serves_wss(certs: Certificates) -> None:
    """``serve --tls-cert --tls-key`` listens on ``wss://`` (the start lines say so); a client
    trusting the CA is served; plain ``ws://`` and a raw plain-text handshake against the TLS
    port fail, and a neighbour connected over TLS meanwhile is still served."""
    with trio.fail_after(TLS_TIMEOUT):
        async with open_broker_process(
            "--store", "memory", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)
        ) as broker:
            assert broker.url.startswith("wss://127.0.0.1:")
            assert f"tls: certificate {certs.cert}\n" in broker.stdout()
            assert await round_trip(broker.url, certs.client_context(), 1) == 1
            async with (
                open_client(
                    broker.url, ssl_context=certs.client_context(), reconnect=False
                ) as neighbour,
                neighbour.subscribe("news") as sub,
            ):
                plain = broker.url.replace("wss://", "ws://")
                with pytest.raises(ConnectionClosed):
                    async with open_client(plain, reconnect=False, connect_timeout=5):
                        pass  # pragma: no cover - the connection must fail
                stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
                async with stream:
                    await stream.send_all(upgrade_request())
                    answer = await read_until(stream, b"\r\n\r\n")
                assert not answer.startswith(b"HTTP/1.1 101")
                await neighbour.publish("news", "still here")
                assert (await sub.receive()).data == "still here"


async def test_a_client_that_does_not_trust_the_ca_is_refused(certs: Certificates) -> None:
    """A client with the system's CAs only (not the test CA) fails to connect."""
    with trio.fail_after(TLS_TIMEOUT):
        async with open_broker_process(
            "--store", "memory", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)
        ) as broker:
            with pytest.raises(
                ConnectionClosed,
                match=r"the TLS handshake failed \(unable to get local issuer certificate\)",
            ):
                async with open_client(broker.url, reconnect=False):
                    pass  # pragma: no cover - the connection must fail


async def test_mutual_tls_refuses_a_client_without_a_certificate(certs: Certificates) -> None:
    """With ``tls_client_ca`` (here from the config file, relative to it), a client without a
    certificate is refused and one with a certificate the client CA signed is served."""
    config = certs.folder / "broker.toml"
    config.write_text(
        '[server]\nstore = "memory"\ntls_cert = "server.pem"\ntls_key = "server.key"\n'
        'tls_client_ca = "client-ca.pem"\n'
    )
    with trio.fail_after(TLS_TIMEOUT):
        async with open_broker_process("--config", str(config)) as broker:
            assert "client certificates required" in broker.stdout()
            # (Under TLS 1.3 the client's handshake completes before the broker checks its
            # certificate: the refusal arrives as the connection ending, at once.)
            with pytest.raises(ConnectionClosed, match="during the handshake"):
                await round_trip(broker.url, certs.client_context(), 1)
            stranger = trustme.CA().issue_cert("mallory@example.com")
            context = certs.client_context()
            stranger.configure_cert(context)
            with pytest.raises(ConnectionClosed):
                await round_trip(broker.url, context, 2)
            context = certs.client_context(with_certificate=True)
            assert await round_trip(broker.url, context, 3) == 3


async def test_a_served_config_knows_users_by_client_certificate(certs: Certificates) -> None:
    """A [[users]] certificate_subject, with tls_client_ca: a client presenting that
    certificate without a token is welcomed as that user; the start line counts the user."""
    subject = "CN=alice,OU=Clients,O=Example"
    issued = certs.client_ca.issue_cert(
        "alice@example.com",
        common_name="alice",
        organization_name="Example",
        organization_unit_name="Clients",
    )
    config = certs.folder / "broker.toml"
    config.write_text(
        '[server]\nstore = "memory"\ntls_cert = "server.pem"\ntls_key = "server.key"\n'
        'tls_client_ca = "client-ca.pem"\n'
        f'[[users]]\nname = "alice"\ncertificate_subject = "{subject}"\n'
        '[users.permissions]\npublish = { allow = ["tls.>"] }\nsubscribe = { allow = ["tls.>"] }\n'
    )
    with trio.fail_after(TLS_TIMEOUT):
        async with open_broker_process("--config", str(config)) as broker:
            assert "auth: 1 user (1 by client certificate); without a token: refused\n" in (
                broker.stdout()
            )
            context = certs.client_context()
            issued.configure_cert(context)
            async with open_client(broker.url, ssl_context=context, reconnect=False) as client:
                assert client.user == "alice"
            assert await round_trip(broker.url, context, 4) == 4
            with pytest.raises(ConnectionClosed, match="authentication failed"):
                await round_trip(broker.url, certs.client_context(with_certificate=True), 5)


@pytest.mark.parametrize("tls", [False, True], ids=["no tls", "no client ca"])
def test_serve_refuses_certificate_users_without_a_client_ca(
    certs: Certificates, tls: bool
) -> None:
    """Users with a certificate_subject but no --tls-client-ca (so no client certificate is
    ever verified): status 1 and one line saying what to give, before listening."""
    config = certs.folder / "broker.toml"
    config.write_text('[[users]]\nname = "alice"\ncertificate_subject = "CN=alice"\n')
    tls_args = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)] if tls else []
    done = subprocess.run(
        [*SERVE, "--config", str(config), *tls_args],
        capture_output=True,
        text=True,
        timeout=TLS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"trio-realtime serve: error: {config} gives users a certificate_subject, but without "
        "--tls-client-ca (tls_client_ca in [server]) no client certificate is asked for or "
        "verified: give the CA file that signs your clients' certificates (and --tls-cert, "
        "--tls-key)"
    )


async def test_the_client_commands_take_a_ca_file(certs: Certificates) -> None:
    """``trio-realtime pub --ca-file`` reaches a TLS broker; without it, the certificate is
    not trusted and the command fails with one line."""
    with trio.fail_after(TLS_TIMEOUT):
        async with open_broker_process(
            "--store", "memory", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)
        ) as broker:
            command = [sys.executable, "-m", "trio_realtime", "pub", broker.url, "t.x", "1"]
            done = await trio.run_process(
                [*command, "--ca-file", str(certs.ca_file)], capture_stdout=True, check=False
            )
            assert done.returncode == 0
            assert b"published" in done.stdout
            failed = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
            assert failed.returncode == 1
            lines = failed.stderr.decode().strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith("trio-realtime pub: error:")
            assert "certificate" in lines[0].lower()


def test_tls_settings_that_cannot_work_are_one_line_errors(certs: Certificates) -> None:
    """A certificate without a key (or the reverse), a client CA without a certificate, and
    files that are missing or not PEM each fail with a message naming what to fix."""
    cert, key = str(certs.cert), str(certs.key)
    for args, message in (
        ((cert, None, None), "--tls-cert and --tls-key go together"),
        ((None, key, None), "--tls-cert and --tls-key go together"),
        ((None, None, str(certs.client_ca_file)), "--tls-client-ca needs --tls-cert"),
        ((cert, str(certs.folder / "missing.key"), None), "missing.key"),
        ((str(certs.ca_file), key, None), "server.key"),
        ((cert, key, str(certs.key)), f"client CA file {certs.key}"),
    ):
        with pytest.raises(CommandError, match=message):
            server_ssl_context(*args)
    assert server_ssl_context(None, None, None) is None
    context = server_ssl_context(cert, key, str(certs.client_ca_file))
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert client_ssl_context(None) is None
    with pytest.raises(CommandError, match=r"missing\.pem"):
        client_ssl_context(str(certs.folder / "missing.pem"))


def test_serve_refuses_a_certificate_without_its_key(certs: Certificates) -> None:
    """``serve --tls-cert`` alone exits with status 1 and one line, before listening."""
    done = subprocess.run(
        [*SERVE, "--tls-cert", str(certs.cert)],
        capture_output=True,
        text=True,
        timeout=TLS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "trio-realtime serve: error: --tls-cert and --tls-key go together: give both, or neither"
    )
