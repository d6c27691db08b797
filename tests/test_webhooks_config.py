"""``[[webhooks]]`` in the broker's config file: read into endpoints, their secrets from the
environment, and every mistake one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from trio_realtime import Broker
from trio_realtime.integrations import Webhook, new_webhook_secret
from trio_realtime.security import ConfigError, load_config

OLD: Final = new_webhook_secret()
NEW: Final = new_webhook_secret()
ENV: Final = {"AUDIT_SECRET": OLD, "AUDIT_SECRET_NEW": NEW, "EMPTY": ""}

EXAMPLE: Final = """
[[webhooks]]
name = "audit"
url = "https://audit.example.com/hooks?token=abc"
patterns = ["orders.>", "payments.*"]
secret_env = "AUDIT_SECRET"

[[webhooks]]
name = "crm"
url = "http://127.0.0.1:9000/events"
patterns = "customers.>"
secret_env = ["AUDIT_SECRET_NEW", "AUDIT_SECRET"]
timeout = 5
attempts = 3
backoff = 1.5
max_backoff = 60
buffer = 10
max_pending = 20
concurrency = 2
"""


#: A valid [[webhooks]] table's body, for the mistakes added to it.
BASE: Final = 'name = "a"\nurl = "http://x.test/"\npatterns = ">"\nsecret_env = "AUDIT_SECRET"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_webhooks_are_read_with_their_secrets_from_the_environment(tmp_path: Path) -> None:
    """Each table is an endpoint; secret_env names the variables holding its secrets; the
    endpoints add to a broker as they are."""
    config = load_config(write(tmp_path, EXAMPLE), environ=ENV)
    audit, crm = config.webhooks
    assert audit == Webhook.build(
        "audit",
        "https://audit.example.com/hooks?token=abc",
        ["orders.>", "payments.*"],
        secret=OLD,
    )
    assert audit.origin == "https://audit.example.com"  # (what the log names)
    assert crm.patterns == ("customers.>",)
    assert crm.keys == Webhook.build("x", crm.url, ">", secret=[NEW, OLD]).keys
    assert (crm.timeout, crm.attempts, crm.backoff, crm.max_backoff) == (5, 3, 1.5, 60)
    assert (crm.buffer, crm.max_pending, crm.concurrency) == (10, 20, 2)
    broker = Broker()
    for hook in config.webhooks:
        assert broker.webhook(**hook.arguments()) == hook
    assert load_config(write(tmp_path, ""), environ={}).webhooks == ()


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('name = "a"', "webhooks[0].url: missing"),
        (
            'name = "a"\nurl = "http://x.test/"\npatterns = ">"',
            "webhooks[0].secret_env: missing",
        ),
        (
            'name = "a"\nurl = "http://x.test/"\npatterns = ">"\nsecret_env = "NOPE"',
            "webhooks[0].secret_env: the environment variable NOPE is not set",
        ),
        (
            BASE.replace('"AUDIT_SECRET"', '["AUDIT_SECRET", "EMPTY"]'),
            "webhooks[0].secret_env[1]: the environment variable EMPTY is not set",
        ),
        (
            'name = "a"\nurl = "ftp://x.test/"\npatterns = ">"\nsecret_env = "AUDIT_SECRET"',
            "webhooks[0].url: expected an http:// or https:// URL",
        ),
        (
            'name = "a"\nurl = "http://x.test/"\npatterns = ["a..b"]\nsecret_env = "AUDIT_SECRET"',
            "webhooks[0].patterns[0]:",
        ),
        (
            'name = "a b"\nurl = "http://x.test/"\npatterns = ">"\nsecret_env = "AUDIT_SECRET"',
            "webhooks[0].name: 'a b' is not a webhook name",
        ),
        (
            BASE + 'timeout = "soon"',
            "webhooks[0].timeout: expected a number of seconds",
        ),
        (
            BASE + "backoff = 10\nmax_backoff = 1",
            "webhooks[0]: max_backoff (1) must be at least backoff (10)",
        ),
        (
            BASE + "retries = 3",
            "webhooks[0].retries: unknown key",
        ),
        (
            BASE
            + '[[webhooks]]\nname = "a"\nurl = "http://y.test/"\npatterns = ">"\n'
            + 'secret_env = "AUDIT_SECRET"',
            "webhooks[1].name: 'a' is already another webhook's",
        ),
    ],
)
def test_a_bad_webhook_is_one_line_naming_the_key(
    tmp_path: Path, table: str, expected: str
) -> None:
    """A mistake in [[webhooks]] is a ConfigError: the file, the key path, what is wrong."""
    path = write(tmp_path, f"[[webhooks]]\n{table}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ=ENV)
    message = str(raised.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message


def test_a_secret_that_is_not_one_is_refused_without_showing_it(tmp_path: Path) -> None:
    """A variable that holds no valid secret is named; its value is not shown."""
    path = write(
        tmp_path,
        '[[webhooks]]\nname = "a"\nurl = "http://x.test/"\npatterns = ">"\nsecret_env = "S"\n',
    )
    for value in ("not base64 at all!", "whsec_c2hvcnQ="):
        with pytest.raises(ConfigError, match=r"webhooks\[0\]\.secret_env: ") as raised:
            load_config(path, environ={"S": value})
        assert value not in str(raised.value)
    with pytest.raises(ConfigError, match="expected an array of tables"):
        load_config(write(tmp_path, 'webhooks = "x"\n'), environ={})
