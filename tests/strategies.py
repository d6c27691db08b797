"""Hypothesis strategies shared by the test suite.

Import them as ``from strategies import topics, events`` (``tests/`` is on ``sys.path`` under
pytest's default ``prepend`` import mode). What there is:

Topics and patterns (the grammar of :mod:`trio_realtime._topics`)
    :func:`tokens`, :func:`first_tokens`, :func:`topics`, :func:`patterns` draw from the whole
    grammar: every character a token may hold, and a leading ``$`` in the first token.
    :func:`small_topics` and :func:`small_patterns` draw from :data:`SMALL_TOKENS` (and
    :data:`SMALL_FIRST_TOKENS`) only, so that a random pattern matches a random topic often
    enough for matching properties to test something.

Event contents
    :func:`json_values` (what ``data`` may be, and what survives an orjson round trip unchanged:
    no NaN or infinities, no tuples, integers within 64 bits, no lone surrogates),
    :func:`headers`, :func:`aware_utc_datetimes`, :func:`aware_datetimes` (any fixed offset),
    :func:`event_ids` and :func:`events` (whole :class:`~trio_realtime.Event` objects, with every
    optional field sometimes left to its default).

Every strategy here produces only *valid* values; tests of rejection build their bad inputs
themselves.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from hypothesis import strategies as st

from trio_realtime import Event
from trio_realtime._event import new_event_id

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn, SearchStrategy

__all__ = [
    "JSON_INT_MAX",
    "JSON_INT_MIN",
    "SMALL_FIRST_TOKENS",
    "SMALL_TOKENS",
    "TOKEN_CHARACTERS",
    "aware_datetimes",
    "aware_utc_datetimes",
    "event_ids",
    "events",
    "first_tokens",
    "headers",
    "json_scalars",
    "json_values",
    "patterns",
    "small_patterns",
    "small_topics",
    "tokens",
    "topics",
]

#: The characters a topic token may hold (a first token may also start with ``$``).
TOKEN_CHARACTERS: Final = string.ascii_letters + string.digits + "_-"

#: Tokens for :func:`small_topics` and :func:`small_patterns`: few, so that matches are common.
SMALL_TOKENS: Final = ("a", "b", "c")

#: First tokens for :func:`small_topics` and :func:`small_patterns`, with a reserved one.
SMALL_FIRST_TOKENS: Final = ("a", "b", "c", "$s")

#: The integers orjson (and so an event's ``data``) can hold: 64-bit signed or unsigned.
JSON_INT_MIN: Final = -(2**63)
JSON_INT_MAX: Final = 2**64 - 1


# ---------------------------------------------------------------------------------------------
# Topics and patterns


def tokens(*, max_size: int = 8) -> SearchStrategy[str]:
    """A topic token: one or more of ``A-Z a-z 0-9 _ -``."""
    return st.text(alphabet=TOKEN_CHARACTERS, min_size=1, max_size=max_size)


def first_tokens(*, max_size: int = 8) -> SearchStrategy[str]:
    """A first token: a :func:`tokens` token, sometimes with a leading ``$`` (reserved)."""
    token = tokens(max_size=max_size)
    return st.one_of(token, token.map(lambda t: "$" + t))


def topics(
    *,
    token: SearchStrategy[str] | None = None,
    first_token: SearchStrategy[str] | None = None,
    max_tokens: int = 6,
) -> SearchStrategy[str]:
    """A valid topic (no wildcards) of 1 to *max_tokens* tokens.

    *token* draws each token, *first_token* the first one (by default :func:`tokens` and
    :func:`first_tokens`). With the defaults a topic is at most 6 * 9 characters long, far
    below ``MAX_TOPIC_LENGTH``.
    """
    rest = tokens() if token is None else token
    first = first_tokens() if first_token is None else first_token
    return st.builds(
        lambda head, tail: ".".join([head, *tail]),
        first,
        st.lists(rest, max_size=max_tokens - 1),
    )


@st.composite
def _patterns(
    draw: DrawFn, first: SearchStrategy[str], rest: SearchStrategy[str], max_tokens: int
) -> str:
    star = st.just("*")
    parts = [draw(st.one_of(first, star))]
    parts += draw(st.lists(st.one_of(rest, star), max_size=max_tokens - 1))
    if draw(st.booleans()):
        # '>' takes the place of the last token, so that '>' alone is generated too.
        parts[-1] = ">"
    return ".".join(parts)


def patterns(
    *,
    token: SearchStrategy[str] | None = None,
    first_token: SearchStrategy[str] | None = None,
    max_tokens: int = 6,
) -> SearchStrategy[str]:
    """A valid subscription pattern of 1 to *max_tokens* tokens.

    Any token may be ``*`` and the last may be ``>``; the others are drawn as in :func:`topics`.
    """
    rest = tokens() if token is None else token
    first = first_tokens() if first_token is None else first_token
    return _patterns(first, rest, max_tokens)


def small_topics(*, max_tokens: int = 4) -> SearchStrategy[str]:
    """A topic over :data:`SMALL_FIRST_TOKENS` and :data:`SMALL_TOKENS` (matches are common)."""
    return topics(
        token=st.sampled_from(SMALL_TOKENS),
        first_token=st.sampled_from(SMALL_FIRST_TOKENS),
        max_tokens=max_tokens,
    )


def small_patterns(*, max_tokens: int = 4) -> SearchStrategy[str]:
    """A pattern over :data:`SMALL_FIRST_TOKENS` and :data:`SMALL_TOKENS` (matches are common)."""
    return patterns(
        token=st.sampled_from(SMALL_TOKENS),
        first_token=st.sampled_from(SMALL_FIRST_TOKENS),
        max_tokens=max_tokens,
    )


# ---------------------------------------------------------------------------------------------
# Event contents


def json_scalars() -> SearchStrategy[Any]:
    """``None``, a bool, a 64-bit int, a finite float, or a str (any Unicode but surrogates)."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=JSON_INT_MIN, max_value=JSON_INT_MAX),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    )


def json_values(*, max_leaves: int = 20) -> SearchStrategy[Any]:
    """A JSON value: :func:`json_scalars`, nested in lists and str-keyed dicts.

    It compares equal to itself after an orjson round trip (NaN, which does not, is excluded).
    """
    return st.recursive(
        json_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def headers() -> SearchStrategy[dict[str, str]]:
    """Event headers: a small dict of str to str."""
    return st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4)


def aware_utc_datetimes() -> SearchStrategy[datetime]:
    """An aware datetime in UTC, with microseconds."""
    return st.datetimes(timezones=st.just(UTC))


def aware_datetimes() -> SearchStrategy[datetime]:
    """An aware datetime at a fixed offset from UTC (whole minutes, under a day)."""
    offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    # Keep away from the ends of the datetime range, where converting to UTC overflows.
    return st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets
    )


def event_ids() -> SearchStrategy[str]:
    """An event id: a fresh :func:`~trio_realtime.new_event_id`, or any non-empty str."""
    return st.one_of(st.builds(new_event_id), st.text(min_size=1, max_size=40))


def events(
    data: SearchStrategy[Any] | None = None, *, explicit_type: bool = True
) -> SearchStrategy[Event]:
    """An :class:`~trio_realtime.Event`, each optional field drawn or left to its default.

    *data* draws the payload (by default :func:`json_values`); pass ``st.builds(SomeClass, …)``
    for a typed payload. ``type``, when drawn, is ``"type:"`` and some text, never a
    registered event type name (so a JSON payload stays JSON through a CloudEvents round
    trip); with ``explicit_type=False`` it is always left to its default (the topic, or the
    registered name of a typed payload, which a round trip needs to restore the class).
    """
    # The strategies are built once, here, not on every draw: that is several times faster.
    required: dict[str, SearchStrategy[Any]] = {
        "topic": topics(),
        "data": json_values() if data is None else data,
    }
    optional: dict[str, SearchStrategy[Any]] = {
        "id": event_ids(),
        "type": st.text(min_size=1, max_size=20).map(lambda t: "type:" + t),
        "source": st.text(min_size=1, max_size=20),
        "time": aware_utc_datetimes(),
        "headers": headers(),
        "seq": st.none() | st.integers(min_value=0, max_value=2**63 - 1),
        "reply_to": st.none() | tokens().map(lambda t: "_inbox." + t),
    }
    if not explicit_type:
        del optional["type"]

    @st.composite
    def draw_event(draw: DrawFn) -> Event:
        kwargs = {name: draw(strategy) for name, strategy in required.items()}
        for name, strategy in optional.items():
            if draw(st.booleans()):
                kwargs[name] = draw(strategy)
        return Event(**kwargs)

    return draw_event()
