"""``trio-realtime token NAME``: a new token, and the config lines that let it in."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
import trio

from trio_realtime._cli import main
from trio_realtime.security import HandshakeInfo, Permissions, StaticUsers, User, token_sha256


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in process; return its exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_token_prints_a_token_then_the_users_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """Line 1 is the token; the rest is a [[users]] table holding only its SHA-256."""
    code, out, err = run(capsys, "token", "alice")
    assert code == 0, err
    token, *config_lines = out.splitlines()
    assert len(token) == 43
    config = tomllib.loads("\n".join(config_lines))
    assert config == {"users": [{"name": "alice", "token_sha256": token_sha256(token)}]}
    assert token not in "\n".join(config_lines)
    assert "Line 1 is alice's token" in err
    assert "shown only this once" in err
    # The lines work: static users built from them accept the token.
    (entry,) = config["users"]
    auth = StaticUsers([User(entry["name"], entry["token_sha256"], Permissions.nothing())])
    assert trio.run(auth.authenticate, token, HandshakeInfo()).user == "alice"


def test_token_is_new_each_time(capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs for the same name give two different tokens."""
    first = run(capsys, "token", "bob")[1].splitlines()[0]
    second = run(capsys, "token", "bob")[1].splitlines()[0]
    assert first != second


@pytest.mark.parametrize("name", ["a.b", "*", ">", "$sys", "bob@example", "x" * 129, "anonymous"])
def test_token_refuses_an_unsafe_name(capsys: pytest.CaptureFixture[str], name: str) -> None:
    """A name that is not a safe user name (or is reserved) exits 1 with one line, no token."""
    code, out, err = run(capsys, "token", name)
    assert code == 1
    assert out == ""
    assert err.startswith("trio-realtime token: error: NAME must")
    assert len(err.splitlines()) == 1


def test_token_as_a_command() -> None:
    """`python -m trio_realtime token NAME` writes the token and config to stdout only."""
    result = subprocess.run(
        [sys.executable, "-m", "trio_realtime", "token", "svc-1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token, *lines = result.stdout.splitlines()
    assert lines == ["[[users]]", 'name = "svc-1"', f'token_sha256 = "{token_sha256(token)}"']
    assert token not in result.stderr
