"""`trio-realtime serve --config FILE` and the safe default (issue 9, items 7 and 8).

The broker runs as a real process (:func:`open_broker_process`: 127.0.0.1, port 0, the
flags after those); clients are independent ``websockets`` connections. A non-loopback
address is never bound: the refusals happen before anything listens, and the cases that
would listen on one are checked on :func:`check_exposure`, which ``serve`` asks first.
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from _broker_process import in_thread, open_broker_process, open_peer

from trio_realtime._cli import check_exposure, is_loopback, main, serve_settings
from trio_realtime.security import load_config, token_sha256

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

TOKEN = "alice-token-of-the-serve-tests"
USERS = f"""
[[users]]
name = "alice"
token_sha256 = "{token_sha256(TOKEN)}"
[users.permissions]
publish = {{ allow = ["orders.>"] }}
subscribe = {{ allow = ["orders.*"] }}
"""
#: The issue's [server] table, then alice.
CONFIG = '[server]\nhost = "127.0.0.1"\nport = 8765\nstore = "memory"\n' + USERS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def hello(url: str, token: str | None) -> tuple[dict[str, object], int | None]:
    """Say hello with *token*: the broker's answer, and its close code if it closed."""
    with open_peer(url, hello=False) as peer:
        return peer.say_hello(token, "serve-config")


async def test_a_broker_served_with_a_config_file_authenticates(tmp_path: Path) -> None:
    """The file's users are the broker's: the right token is welcomed as alice; a wrong one
    or none gets auth_failed and close 1008. The start lines say so."""
    with trio.fail_after(30):
        async with open_broker_process(
            "--config", str(write(tmp_path, CONFIG)), "--port", "0"
        ) as broker:
            welcome, code = await in_thread(partial(hello, broker.url, TOKEN))
            assert (welcome["type"], welcome["user"], code) == ("welcome", "alice", None)
            for token in ("not-the-token", None):
                refusal, code = await in_thread(partial(hello, broker.url, token))
                assert (refusal["type"], refusal["code"], code) == ("error", "auth_failed", 1008)
            assert "auth: 1 user; without a token: refused\n" in broker.stdout()
            assert "store: memory" in broker.stdout()


async def test_flags_given_override_the_file_and_others_come_from_it(tmp_path: Path) -> None:
    """A flag on the command line wins over [server]; what it does not give comes from the
    file; a sqlite store named in the file is next to the file."""
    folder = tmp_path / "etc"
    folder.mkdir()
    config = write(
        folder,
        '[server]\nname = "from-file"\nmax_subscriptions = 5\nslow_consumer = "disconnect"\n'
        'max_pending_bytes = "2M"\nstore = "sqlite:events.db"\nport = 8765\n',
    )
    with trio.fail_after(30):
        async with open_broker_process(
            "--config", str(config), "--name", "from-flag", "--max-subscriptions", "7"
        ) as broker:
            await broker.wait_for_output(r"^auth: ")
            out = broker.stdout()
    assert "broker 'from-flag' listening on ws://127.0.0.1:" in out
    assert ":8765" not in out  # --port 0 (given by the helper) overrides port = 8765
    assert "max_subscriptions=7" in out
    assert f"max_pending_bytes={2 * 1024 * 1024}" in out
    assert "slow_consumer=disconnect" in out
    assert f"store: sqlite:{folder / 'events.db'}" in out
    assert (folder / "events.db").exists()
    assert "auth: none (anonymous, full access: loopback only)" in out


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
async def test_the_safe_default_refuses_a_non_loopback_address_without_auth(host: str) -> None:
    """No auth and a non-loopback --host: exit 1 with one line saying what to do, before
    listening."""
    with trio.fail_after(30):
        async with open_broker_process(
            "--host", host, "--store", "none", expect_exit=True, wait_listening=False
        ) as broker:
            assert await broker.wait_exit() == 1
            err = broker.stderr()
    assert err.count("\n") == 1, err
    assert err.startswith(f"trio-realtime serve: error: refusing to serve {host} without auth")
    for advice in ("[[users]]", "[auth.jwt]", "--config", "--allow-anonymous"):
        assert advice in err
    assert "listening" not in broker.stdout()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\nport = "x"\n', "server.port: expected an integer, got a string"),
        ("[server]\nheartbeat = -1\n", "server.heartbeat: must be positive, not '-1'"),
        ('[server]\nslow_consumer = "block"\n', "server.slow_consumer: expected one of"),
        ('[server]\nmax_message_size = "lots"\n', "server.max_message_size: not a size"),
        ("[server]\nport = \n", "line 2, column 8: Invalid value"),
        (USERS + "[server]\nallow_anonymous = true\n", "--allow-anonymous (allow_anonymous"),
    ],
)
def test_a_bad_config_file_is_one_line_and_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    """A bad file stops serve before it listens: one line naming the file and the key."""
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--config", str(path), "--port", "0", "--store", "none"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    prefix = "trio-realtime serve: error: "
    assert err.startswith(prefix)
    if expected.startswith("--"):
        assert expected in err
    else:
        assert err.startswith(f"{prefix}{path}: {expected}"), err


async def test_a_missing_secret_env_stops_the_broker_process(tmp_path: Path) -> None:
    """A [[auth.jwt.keys]] secret_env that is not set: exit 1, one line naming the key."""
    config = write(
        tmp_path,
        '[auth.jwt]\nalgorithms = ["HS256"]\n[[auth.jwt.keys]]\nkid = "k1"\n'
        'secret_env = "RT_SERVE_TEST_UNSET"\n',
    )
    with trio.fail_after(30):
        async with open_broker_process(
            "--config", str(config), expect_exit=True, wait_listening=False
        ) as broker:
            assert await broker.wait_exit() == 1
    assert broker.stderr() == (
        f"trio-realtime serve: error: {config}: auth.jwt.keys[0]: the environment variable "
        "RT_SERVE_TEST_UNSET is not set\n"
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    """127.0.0.0/8, ::1 and localhost are loopback; any other address or name is not."""
    assert is_loopback(host) is loopback


def test_allow_anonymous_accepts_a_non_loopback_address_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """--allow-anonymous lets serve listen on 0.0.0.0 without auth, and warns."""
    with caplog.at_level(logging.WARNING, logger="trio_realtime.cli"):
        line = check_exposure("0.0.0.0", None, allow_anonymous=True)
    assert line == "none (anonymous, full access on 0.0.0.0: --allow-anonymous)"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "serving 0.0.0.0 without authentication" in record.getMessage()


def test_allow_anonymous_from_the_server_table(tmp_path: Path) -> None:
    """allow_anonymous = true in [server] is --allow-anonymous; a flag not given stays None."""
    config = load_config(write(tmp_path, '[server]\nallow_anonymous = true\nhost = "0.0.0.0"\n'))
    args = argparse.Namespace(config=None, allow_anonymous=None, host=None)
    settings = serve_settings(args, config)
    assert (settings.allow_anonymous, settings.host) == (True, "0.0.0.0")
    assert settings.port == 8765  # neither gives it: the default
    assert check_exposure(settings.host, config, allow_anonymous=settings.allow_anonymous)


def test_configured_users_accept_a_non_loopback_address_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With users configured, any address may be served, and nothing is logged."""
    config = load_config(write(tmp_path, USERS))
    with caplog.at_level(logging.WARNING):
        line = check_exposure("0.0.0.0", config, allow_anonymous=False)
    assert line == "1 user; without a token: refused"
    assert not caplog.records


async def test_localhost_is_served_without_auth() -> None:
    """--host localhost is loopback: served open, and the auth line says so."""
    with trio.fail_after(30):
        async with open_broker_process("--host", "localhost", "--store", "none") as broker:
            await broker.wait_for_output(r"^auth: ")
            assert "auth: none (anonymous, full access: loopback only)" in broker.stdout()
