"""Webhooks: what an endpoint is (:class:`Webhook`), its figures, and the Standard Webhooks
envelope (the signed headers around a structured CloudEvent).

The delivery itself (the endpoint's actor, its retries and its cursor) is in
``_webhook_delivery.py``; the broker runs one per endpoint (``Broker.webhook``).

The envelope follows `Standard Webhooks <https://www.standardwebhooks.com>`_: a ``POST`` whose
body is the event as a CloudEvents 1.0 structured JSON object, with the headers

* ``webhook-id``: the event's id, the same on every attempt (receivers deduplicate by it);
* ``webhook-timestamp``: the attempt's time, in whole seconds since the Unix epoch;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one per
  secret, separated by spaces (several during a rotation of the secret).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from .._topics import validate_pattern

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BACKOFF",
    "DEFAULT_BUFFER",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_TIMEOUT",
    "SECRET_PREFIX",
    "Webhook",
    "WebhookStatistics",
    "new_webhook_secret",
    "parse_retry_after",
    "sign_webhook",
]

#: Seconds one attempt may take, from connecting to the end of the answer, by default.
DEFAULT_TIMEOUT: Final = 15.0
#: Attempts at delivering one event, the first included, by default: with the default
#: backoff, about a day of retries on average (at most about two).
DEFAULT_ATTEMPTS: Final = 19
#: The longest wait (seconds) before the first retry, by default; each later retry's longest
#: wait doubles, up to :data:`DEFAULT_MAX_BACKOFF`. The wait is drawn at random below it
#: ("full jitter"), so that endpoints that failed together are not retried together.
DEFAULT_BACKOFF: Final = 10.0
#: The longest wait (seconds) between two attempts, by default (6 hours); also the most a
#: ``Retry-After`` answer is honoured.
DEFAULT_MAX_BACKOFF: Final = 6 * 3600.0
#: Events an endpoint buffers for their first attempt, by default. Past it, a new event
#: of a stored topic waits in the store (the endpoint reads it from there later); one of
#: another topic is dropped and counted.
DEFAULT_BUFFER: Final = 1000
#: Events an endpoint has under way (being sent, or waiting for a retry), by default; past
#: it, new events wait in the buffer.
DEFAULT_MAX_PENDING: Final = 1000
#: Requests an endpoint has open at once, by default.
DEFAULT_CONCURRENCY: Final = 4
#: The prefix of a secret in the Standard Webhooks convention (``whsec_`` and base64).
SECRET_PREFIX: Final = "whsec_"
#: The shortest and longest secret key, in bytes (as Standard Webhooks recommends).
MIN_SECRET_BYTES: Final = 24
MAX_SECRET_BYTES: Final = 64
#: The most secrets one endpoint signs with at once (during a rotation: old and new).
MAX_SECRETS: Final = 8

_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_webhook_secret() -> str:
    """A new random secret (32 bytes) in the Standard Webhooks form ``whsec_<base64>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _secret_key(secret: object, where: str) -> bytes:
    """The HMAC key of *secret*: ``whsec_<base64>`` or plain base64 text, or the raw bytes."""
    if isinstance(secret, bytes):
        key = secret
    elif isinstance(secret, str):
        text = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"{where}: not a secret in the form whsec_<base64> (or base64): make one with "
                f"trio_realtime.integrations.new_webhook_secret()"
            ) from None
    else:
        raise TypeError(f"{where}: a secret is a string (whsec_<base64>) or bytes, not {secret!r}")
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"{where}: the secret is {len(key)} bytes; it must be {MIN_SECRET_BYTES} to "
            f"{MAX_SECRET_BYTES} (make one with trio_realtime.integrations.new_webhook_secret())"
        )
    return key


def sign_webhook(keys: Sequence[bytes], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256>`` for each key, with a
    space between them (the signed content is ``{webhook_id}.{timestamp}.{body}``)."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for key in keys
    )


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait that a ``Retry-After`` header asks for, or None if it makes no sense.

    Either whole seconds (``120``) or an HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT``), which
    is measured from *now* (seconds since the Unix epoch); a date in the past is 0.
    """
    value = value.strip()
    if value.isdigit() and value.isascii():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # (HTTP dates are in GMT)
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(f"url: expected a string, not {url!r}")
    try:
        parts = urlsplit(url)
        _ = parts.port  # (a port that is not a number raises here)
    except ValueError as exc:
        raise ValueError(f"url: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url: expected an http:// or https:// URL with a host, not {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "url: must not hold credentials (user:password@): receivers check the "
            "webhook-signature instead"
        )
    if parts.fragment:
        raise ValueError("url: must not have a #fragment (it is never sent)")
    return url


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what}: expected a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what}: must be a positive number of seconds, not {value!r}")
    return float(value)


def _count(value: object, what: str, *, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what}: expected an integer, not {value!r}")
    if value < 1 or (maximum is not None and value > maximum):
        limit = f"1 to {maximum}" if maximum is not None else "at least 1"
        raise ValueError(f"{what}: must be {limit}, not {value}")
    return value


def _patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise ValueError(f"patterns: expected one pattern or a list of them, not {value!r}")
    found: list[str] = []
    for i, pattern in enumerate(value):
        if not isinstance(pattern, str):
            raise TypeError(f"patterns[{i}]: expected a string, not {pattern!r}")
        try:
            validate_pattern(pattern)
        except ValueError as exc:
            raise ValueError(f"patterns[{i}]: {exc}") from None
        if pattern not in found:
            found.append(pattern)
    return tuple(found)


@attrs.frozen(kw_only=True)
class Webhook:
    """An endpoint that gets the events matching its patterns by HTTP ``POST``.

    Made by :meth:`Broker.webhook <trio_realtime.Broker.webhook>` (or a ``[[webhooks]]`` table
    of the config file), which says what each setting means. Its :func:`repr` shows no
    secret.
    """

    #: Its name: in ``statistics().webhooks``, the metrics, ``$sys.webhook.*`` events, the
    #: log, and its cursor in the store. Letters, digits, ``_`` and ``-``, at most 64.
    name: str
    #: Where events are posted.
    url: str
    #: The patterns of the topics whose events it gets.
    patterns: tuple[str, ...]
    #: The HMAC keys it signs with (all of them, on every request).
    keys: tuple[bytes, ...] = attrs.field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    buffer: int = DEFAULT_BUFFER
    max_pending: int = DEFAULT_MAX_PENDING
    concurrency: int = DEFAULT_CONCURRENCY

    @classmethod
    def build(
        cls,
        name: str,
        url: str,
        patterns: str | Sequence[str],
        *,
        secret: str | bytes | Sequence[str | bytes],
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        buffer: int = DEFAULT_BUFFER,
        max_pending: int = DEFAULT_MAX_PENDING,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> Webhook:
        """Check the settings and make the endpoint (see :meth:`Broker.webhook
        <trio_realtime.Broker.webhook>`).

        Raises:
            ValueError: naming the setting that is wrong and why (TypeError for a value of
                the wrong type).
        """
        given: object = name  # (checked at run time too: the config file's values)
        if not isinstance(given, str) or _NAME.fullmatch(given) is None:
            raise ValueError(
                f"name: {name!r} is not a webhook name (1 to 64 letters, digits, _ or -)"
            )
        secrets_given: object = [secret] if isinstance(secret, str | bytes) else secret
        if not isinstance(secrets_given, Sequence) or not 1 <= len(secrets_given) <= MAX_SECRETS:
            raise ValueError(f"secret: expected 1 to {MAX_SECRETS} secrets")
        keys = tuple(
            _secret_key(s, "secret" if len(secrets_given) == 1 else f"secret[{i}]")
            for i, s in enumerate(secrets_given)
        )
        timeout = _positive(timeout, "timeout")
        backoff = _positive(backoff, "backoff")
        max_backoff = _positive(max_backoff, "max_backoff")
        if max_backoff < backoff:
            raise ValueError(
                f"max_backoff ({max_backoff:g}) must be at least backoff ({backoff:g})"
            )
        return cls(
            name=name,
            url=_check_url(url),
            patterns=_patterns(patterns),
            keys=keys,
            timeout=timeout,
            attempts=_count(attempts, "attempts", maximum=1000),
            backoff=backoff,
            max_backoff=max_backoff,
            buffer=_count(buffer, "buffer"),
            max_pending=_count(max_pending, "max_pending"),
            concurrency=_count(concurrency, "concurrency"),
        )

    @classmethod
    def from_config(
        cls, table: Mapping[str, object], *, where: str, environ: Mapping[str, str] | None = None
    ) -> Webhook:
        """The endpoint of a ``[[webhooks]]`` table of the config file.

        Its keys are the arguments of :meth:`build`, but the secret: ``secret_env`` names the
        environment variable that holds it (or is a list of names, during a rotation), read
        from *environ* (default: :data:`os.environ`).

        Raises:
            ValueError: starting with *where* and the key, saying what is wrong.
        """
        unknown = [key for key in table if key not in _CONFIG_KEYS]
        if unknown:
            raise ValueError(
                f"{where}.{unknown[0]}: unknown key (expected {', '.join(_CONFIG_KEYS)})"
            )
        for key in ("name", "url", "patterns", "secret_env"):
            if key not in table:
                raise ValueError(f"{where}.{key}: missing")
        options = {key: value for key, value in table.items() if key in _NUMBERS}
        try:
            return cls.build(
                table["name"],  # type: ignore[arg-type]
                table["url"],  # type: ignore[arg-type]
                table["patterns"],  # type: ignore[arg-type]
                secret=_secrets_from_env(table["secret_env"], environ),
                **options,  # type: ignore[arg-type]
            )
        except (TypeError, ValueError) as exc:
            message = str(exc)
            if message.startswith(("secret:", "secret[")):  # (from the environment)
                message = "secret_env" + message.removeprefix("secret")
            key = message.split(":", 1)[0]
            if key.split("[", 1)[0] in _CONFIG_KEYS:
                raise ValueError(f"{where}.{message}") from None
            raise ValueError(f"{where}: {message}") from None

    def arguments(self) -> dict[str, Any]:
        """The endpoint as the arguments of :meth:`Broker.webhook
        <trio_realtime.Broker.webhook>`: ``broker.webhook(**hook.arguments())`` adds it."""
        arguments = attrs.asdict(self, recurse=False)
        arguments["secret"] = list(arguments.pop("keys"))
        return arguments

    @property
    def origin(self) -> str:
        """``scheme://host:port`` of the URL: what the log names (a URL's path or query may
        hold a token)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def cursor_name(self) -> str:
        """The name of its cursor in the store."""
        return f"webhook:{self.name}"

    def retry_bounds(self) -> list[float]:
        """The longest wait before each retry (``attempts - 1`` of them), in seconds: the
        retry schedule, before jitter draws each wait at random below its bound."""
        return [
            min(self.max_backoff, self.backoff * 2.0 ** min(n, 64))
            for n in range(self.attempts - 1)
        ]


#: The keys of a ``[[webhooks]]`` table.
_NUMBERS: Final = (
    "timeout",
    "attempts",
    "backoff",
    "max_backoff",
    "buffer",
    "max_pending",
    "concurrency",
)
_CONFIG_KEYS: Final = ("name", "url", "patterns", "secret_env", *_NUMBERS)


def _secrets_from_env(names: object, environ: Mapping[str, str] | None) -> list[str]:
    """The secrets held by the environment variables *names* (one name, or a list)."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names:
        raise ValueError("secret_env: expected the name of an environment variable, or a list")
    values = []
    for i, name in enumerate(names):
        where = "secret_env" if len(names) == 1 else f"secret_env[{i}]"
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: expected the name of an environment variable")
        value = (os.environ if environ is None else environ).get(name)
        if not value:
            raise ValueError(f"{where}: the environment variable {name} is not set")
        values.append(value.strip())
    return values


@attrs.frozen(kw_only=True)
class WebhookStatistics:
    """What one webhook endpoint has done since the broker started serving.

    Attributes:
        delivered: Events the endpoint accepted (a ``2xx`` answer).
        failed: Events given up: refused for good (a ``3xx``, or a ``4xx`` but 408, 409, 425
            and 429), not encodable as a CloudEvent, or still failing after every attempt.
        attempts: Requests made.
        failed_attempts: Requests that did not succeed (a non-``2xx`` answer, a timeout, a
            connection that failed).
        retries_pending: Events waiting now for their next attempt.
        in_flight: Requests under way now.
        queued: Events buffered now for their first attempt.
        dropped: Events of topics that are not stored, lost because the buffer was full.
        disabled: Whether the endpoint is disabled (it answered ``410 Gone``, or every
            attempt failed for a whole retry window); it stays so until the broker restarts.
        disabled_reason: Why, or None.
        cursor: The seq up to which the stored events it gets are done with (delivered or
            given up), as saved in the store; None without a store that keeps cursors.
    """

    delivered: int = 0
    failed: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    retries_pending: int = 0
    in_flight: int = 0
    queued: int = 0
    dropped: int = 0
    disabled: bool = False
    disabled_reason: str | None = None
    cursor: int | None = None
