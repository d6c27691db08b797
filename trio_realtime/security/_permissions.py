"""Permissions: what a user may publish and subscribe to.

A :class:`Permissions` holds two :class:`TopicRules` (``publish`` and ``subscribe``), each a
list of *allow* patterns and a list of *deny* patterns, and an optional
:class:`ResponsePermission`. Deny wins.

Two questions about patterns answer every check:

* :func:`covers` (``rule``, ``pattern``): every topic *pattern* can match is matched by *rule*.
  A subscription is accepted only if an allow rule covers it, and refused if a deny rule does.
* :func:`overlaps` (``a``, ``b``): some topic matches both. A subscription that merely overlaps
  a deny rule is accepted, and each delivery to it is filtered.

Reserved topics (first token starting with ``$``) are granted only by rules that start with
``$`` themselves: in this model a pattern whose first token is a wildcard does not reach them.
So an allow of ``>`` grants neither ``$sys.connect`` nor a subscription to ``$sys.>``, and a
subscription to ``>`` that is accepted gets no ``$`` topic (its filter says so, see
:data:`RESERVED_FILTER`).

Inboxes (``_inbox.…``) are granted by no rule: a connection may subscribe to its own inbox
(``welcome.inbox``) and nowhere else under ``_inbox``, a subscription that starts with a
wildcard gets no inbox topic (:data:`INBOX_FILTER`), and publishing to an inbox is up to the
broker (answering a request received, with :attr:`Permissions.allow_responses`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from .._errors import InvalidTopic
from .._topics import INBOX_PREFIX, PatternIndex, validate_pattern, validate_topic

__all__ = [
    "INBOX_FILTER",
    "RESERVED_FILTER",
    "Permissions",
    "ResponsePermission",
    "SubscribeDecision",
    "TopicRules",
    "covers",
    "overlaps",
]

#: The entry of :attr:`SubscribeDecision.filter` that stands for every reserved (``$``) topic:
#: a subscription whose pattern starts with a wildcard is not delivered ``$`` topics.
RESERVED_FILTER: Final = "$"
#: The entry of :attr:`SubscribeDecision.filter` that withholds every inbox topic (it is a
#: pattern like a deny rule): a subscription whose pattern starts with a wildcard is not
#: delivered other connections' replies.
INBOX_FILTER: Final = f"{INBOX_PREFIX}>"
_INBOX_TOKEN: Final = INBOX_PREFIX[:-1]

# Answers kept per topic (publish) and per filter and topic (delivery); the caches are cleared
# when full, as the bus's route cache is: a working set of topics stays cheap.
_CACHE_SIZE: Final = 4096

_GROUP_PREFIX: Final = "group="
_ENTRY_FORM: Final = "expected 'PATTERN' or 'PATTERN group=NAME'"


# ---------------------------------------------------------------------------------------------
# covers and overlaps


def _wild_first(tokens: list[str]) -> bool:
    first = tokens[0]
    return first == "*" or first == ">"


def _reserved_first(tokens: list[str]) -> bool:
    return tokens[0].startswith("$")


def _covers(rule: list[str], pattern: list[str]) -> bool:
    if _wild_first(rule) and _reserved_first(pattern):
        return False
    n = len(pattern)
    for i, r in enumerate(rule):
        if r == ">":
            return n > i  # a non-empty tail: each token of the pattern is at least one token
        if i >= n:
            return False
        p = pattern[i]
        if p == ">":  # one or more tokens: only a '>' (handled above) covers that
            return False
        if r != "*" and r != p:  # '*' covers a literal or '*'; a literal only itself
            return False
    return n == len(rule)


def _overlaps(a: list[str], b: list[str]) -> bool:
    if (_wild_first(a) and _reserved_first(b)) or (_wild_first(b) and _reserved_first(a)):
        return False
    na, nb = len(a), len(b)
    for i in range(max(na, nb)):
        x = a[i] if i < na else None
        y = b[i] if i < nb else None
        if x == ">":
            return nb > i
        if y == ">":
            return na > i
        if x is None or y is None:
            return False
        if x != "*" and y != "*" and x != y:
            return False
    return na == nb


def covers(rule: str, pattern: str) -> bool:
    """Whether every topic *pattern* can match is matched by *rule*.

    Token by token: ``>`` in *rule* covers a non-empty tail; ``*`` covers one literal token or
    ``*``; a literal covers only the same literal; a ``>`` in *pattern* is covered only by a
    ``>`` in *rule* at that position or earlier. So ``a.b.*`` covers ``a.b.c`` and ``a.b.*``,
    but not ``a.b.>`` (which NATS would accept), ``a.>`` or ``*.b.c``.

    A rule whose first token is a wildcard never covers a pattern whose first token starts
    with ``$``: only a rule that starts with ``$`` grants reserved topics.

    Raises:
        InvalidTopic: if *rule* or *pattern* is not a valid pattern.
    """
    return _covers(validate_pattern(rule).split("."), validate_pattern(pattern).split("."))


def overlaps(a: str, b: str) -> bool:
    """Whether some topic matches both patterns *a* and *b*.

    A pattern whose first token is a wildcard never overlaps one whose first token starts with
    ``$`` (wildcards do not reach reserved topics in the permission model).

    Raises:
        InvalidTopic: if *a* or *b* is not a valid pattern.
    """
    return _overlaps(validate_pattern(a).split("."), validate_pattern(b).split("."))


def _grants(index: PatternIndex[str], topic: str) -> bool:
    """Whether a pattern in *index* matches *topic*, with the ``$`` rule."""
    found = index.match(topic)
    if not found:
        return False
    if not topic.startswith("$"):
        return True
    # Only a rule starting with '$' reaches a reserved topic (a literal first token that does
    # not start with '$' cannot match one at all).
    return any(rule.startswith("$") for rule in found)


def _delivers(filter_: tuple[str, ...], topic: str) -> bool:
    reserved = topic.startswith("$")
    ttokens = topic.split(".")
    for entry in filter_:
        if entry == RESERVED_FILTER:
            if reserved:
                return False
        elif _covers(entry.split("."), ttokens):  # a topic is a pattern without wildcards
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Rules


def _check_not_inbox(entry: str, pattern: str) -> None:
    if pattern.split(".", 1)[0] == _INBOX_TOKEN:
        raise InvalidTopic(
            entry,
            "rules cannot name inboxes: each connection may subscribe to its own (welcome."
            "inbox) and to no other, and replies to requests it received with "
            "allow_responses",
        )


def _parse_entry(entry: object, *, groups: bool) -> tuple[str, str | None]:
    """``"svc.price group=pricing"`` -> ``("svc.price", "pricing")``; ``"a.*"`` -> ``("a.*",
    None)``. Raises InvalidTopic, also for an entry under ``_inbox``."""
    if not isinstance(entry, str):
        raise InvalidTopic(entry, f"a rule must be a str, not {type(entry).__name__}")
    pattern, space, rest = entry.partition(" ")
    if not space:
        validate_pattern(entry)
        _check_not_inbox(entry, entry)
        return entry, None
    if not groups:
        raise InvalidTopic(
            entry, "only a subscribe allow entry may name a queue group ('PATTERN group=NAME')"
        )
    validate_pattern(pattern)
    _check_not_inbox(entry, pattern)
    rest = rest.strip()
    group = rest.removeprefix(_GROUP_PREFIX)
    if group == rest or not group or any(c.isspace() for c in group):
        raise InvalidTopic(entry, _ENTRY_FORM)
    return pattern, group


def _to_rules(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"rules must be a list of patterns, not the str {value!r}")
    return tuple(value)


def _check_allow(instance: TopicRules, attribute: attrs.Attribute[Any], value: Any) -> None:
    for entry in value:
        _parse_entry(entry, groups=True)


def _check_deny(instance: TopicRules, attribute: attrs.Attribute[Any], value: Any) -> None:
    for entry in value:
        _parse_entry(entry, groups=False)


@attrs.frozen
class TopicRules:
    """Allow and deny patterns for one kind of action (publish, or subscribe).

    An action is permitted when an allow entry permits it and no deny entry forbids it: deny
    wins. Patterns follow the topic grammar and are checked here (:exc:`InvalidTopic`).

    A subscribe allow entry may restrict the queue group with the form
    ``"PATTERN group=NAME"`` (one space, then ``group=`` and the name): ``"svc.price
    group=pricing"`` lets the user subscribe to ``svc.price`` only as a member of the queue
    group ``pricing``, so that it can serve requests with that group and never take events (or
    requests) meant for it without being one of its members. Deny entries, and publish rules,
    take no group.
    """

    #: Patterns that permit; in subscribe rules, each may be followed by a space and
    #: ``group=NAME``.
    allow: tuple[str, ...] = attrs.field(default=(), converter=_to_rules, validator=_check_allow)
    #: Patterns that forbid.
    deny: tuple[str, ...] = attrs.field(default=(), converter=_to_rules, validator=_check_deny)

    _entries: tuple[tuple[str, str | None, list[str]], ...] = attrs.field(
        init=False, eq=False, repr=False
    )
    _deny_tokens: tuple[tuple[str, list[str]], ...] = attrs.field(init=False, eq=False, repr=False)
    _allow_index: PatternIndex[str] = attrs.field(init=False, eq=False, repr=False)
    _deny_index: PatternIndex[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        entries = []
        allow_index: PatternIndex[str] = PatternIndex()
        for entry in self.allow:
            pattern, group = _parse_entry(entry, groups=True)
            entries.append((pattern, group, pattern.split(".")))
            allow_index.add(pattern, pattern)
        deny_index: PatternIndex[str] = PatternIndex()
        for pattern in self.deny:
            deny_index.add(pattern, pattern)
        object.__setattr__(self, "_entries", tuple(entries))
        object.__setattr__(self, "_deny_tokens", tuple((d, d.split(".")) for d in self.deny))
        object.__setattr__(self, "_allow_index", allow_index)
        object.__setattr__(self, "_deny_index", deny_index)

    @property
    def allow_entries(self) -> tuple[tuple[str, str | None], ...]:
        """The allow entries parsed: ``(pattern, group)``, group None when not restricted."""
        return tuple((pattern, group) for pattern, group, _ in self._entries)

    def permits(self, topic: str) -> bool:
        """Whether *topic* (valid, not checked) matches an allow pattern and no deny pattern.

        Groups are not considered: for publish rules, which have none.
        """
        return _grants(self._allow_index, topic) and not _grants(self._deny_index, topic)


# ---------------------------------------------------------------------------------------------
# Responses


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, not {value!r}")


def _positive_seconds(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) not in (int, float) or not value > 0:
        raise ValueError(f"{attribute.name} must be a number of seconds > 0, not {value!r}")


@attrs.frozen
class ResponsePermission:
    """Leave to answer requests: to publish to the ``reply_to`` of a request received.

    Each ``reply_to`` received may be published to at most :attr:`max` times, within
    :attr:`expires` seconds of receiving the request, with no publish permission on
    ``_inbox``.
    """

    #: Replies allowed per request received (at least 1).
    max: int = attrs.field(default=1, validator=_positive_int)
    #: Seconds after the request during which replies are allowed (more than 0).
    expires: float = attrs.field(default=60.0, validator=_positive_seconds)


# ---------------------------------------------------------------------------------------------
# Permissions


@attrs.frozen
class SubscribeDecision:
    """The answer of :meth:`Permissions.check_subscribe`.

    An accepted subscription with a non-empty :attr:`filter` must have each delivery checked
    with :meth:`delivers` (or :meth:`Permissions.may_receive`): live events, retained values,
    replay and history alike.
    """

    #: Whether the subscription is accepted.
    allowed: bool
    #: The rule that refused the subscription (for the refusal message), or that allowed it.
    reason: str = ""
    #: The deliveries to withhold, as the deny patterns that overlap the subscription's
    #: pattern without covering it, and :data:`RESERVED_FILTER` and :data:`INBOX_FILTER` if
    #: its first token is a wildcard (it gets no ``$`` topic and no inbox). Empty when nothing
    #: needs filtering.
    filter: tuple[str, ...] = ()

    _cache: dict[str, bool] = attrs.field(init=False, factory=dict, eq=False, repr=False)

    def delivers(self, topic: str) -> bool:
        """Whether an event on *topic* (a topic the subscription matches) may be delivered.

        Cached per topic: cheap enough for every delivery.
        """
        if not self.filter:
            return self.allowed
        cache = self._cache
        answer = cache.get(topic)
        if answer is None:
            answer = self.allowed and _delivers(self.filter, topic)
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[topic] = answer
        return answer


def _no_groups(instance: Permissions, attribute: attrs.Attribute[Any], value: TopicRules) -> None:
    for entry in value.allow:
        if " " in entry:
            raise ValueError(
                f"publish allow entry {entry!r}: only a subscribe allow entry may name a "
                "queue group"
            )


@attrs.frozen
class Permissions:
    """What a user may do on the broker: publish, subscribe, answer requests.

    Build one with :meth:`from_dict` (the config file's shape), :meth:`everything` or
    :meth:`nothing`, or from :class:`TopicRules`. Broker sessions ask :meth:`may_publish` for
    each publish, :meth:`check_subscribe` for each subscription and then
    :meth:`SubscribeDecision.delivers` for each delivery. When :attr:`unrestricted` is true,
    every answer is yes and the broker may skip the checks altogether.
    """

    #: Topics the user may publish to.
    publish: TopicRules = attrs.field(
        factory=TopicRules, validator=[attrs.validators.instance_of(TopicRules), _no_groups]
    )
    #: Patterns the user may subscribe to (and, per allow entry, the queue group required).
    subscribe: TopicRules = attrs.field(
        factory=TopicRules, validator=attrs.validators.instance_of(TopicRules)
    )
    #: Leave to reply to requests received, or None.
    allow_responses: ResponsePermission | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(ResponsePermission)),
    )
    #: Whether every check passes, reserved (``$``) topics included, without consulting the
    #: rules (which may then hold no deny entry).
    unrestricted: bool = attrs.field(
        default=False, kw_only=True, validator=attrs.validators.instance_of(bool)
    )

    _publish_cache: dict[str, bool] = attrs.field(init=False, factory=dict, eq=False, repr=False)
    _receive_cache: dict[tuple[str, ...], dict[str, bool]] = attrs.field(
        init=False, factory=dict, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if self.unrestricted and (self.publish.deny or self.subscribe.deny):
            raise ValueError("unrestricted permissions cannot have deny rules")

    @classmethod
    def everything(cls) -> Permissions:
        """Full access, reserved (``$``) topics included: :attr:`unrestricted`.

        The broker's default for anonymous clients on a loopback address.
        """
        return cls(
            publish=TopicRules(allow=(">",)),
            subscribe=TopicRules(allow=(">",)),
            allow_responses=ResponsePermission(),
            unrestricted=True,
        )

    @classmethod
    def nothing(cls) -> Permissions:
        """No access at all: no publish, no subscription, no replies."""
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, where: str = "permissions") -> Permissions:
        """Permissions from the config file's shape (a TOML table read with :mod:`tomllib`)::

            {"publish": {"allow": [...], "deny": [...]},
             "subscribe": {"allow": [...], "deny": [...]},
             "allow_responses": True | False | {"max": 1, "expires": 60}}

        Every key is optional: a missing ``publish`` or ``subscribe`` (or ``allow``) allows
        nothing; ``allow_responses = true`` is ``ResponsePermission()``. *where* names *data*
        in error messages (``users[2].permissions``, say).

        Raises:
            ValueError: naming the key path and what is wrong, such as
                ``permissions.subscribe.allow[2]: invalid topic 'a..b': …``; an unknown key is
                an error too.
        """
        table = _table(data, where, ("publish", "subscribe", "allow_responses"))
        return cls(
            publish=_rules_from(table.get("publish"), f"{where}.publish", groups=False),
            subscribe=_rules_from(table.get("subscribe"), f"{where}.subscribe", groups=True),
            allow_responses=_responses_from(
                table.get("allow_responses", False), f"{where}.allow_responses"
            ),
        )

    def may_publish(self, topic: str) -> bool:
        """Whether *topic* matches a publish allow pattern and no deny pattern (deny wins).

        An inbox topic (``_inbox.…``) is never granted by the rules, even by ``>``: a
        connection publishes there only to answer a request it received (see
        :attr:`allow_responses`), which the broker checks itself.

        Cached per topic: cheap enough for every publish.

        Raises:
            InvalidTopic: if *topic* is not a valid topic.
        """
        if self.unrestricted:
            return True
        cache = self._publish_cache
        answer = cache.get(topic)
        if answer is None:
            answer = self.publish.permits(validate_topic(topic)) and not topic.startswith(
                INBOX_PREFIX
            )
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[topic] = answer
        return answer

    def check_subscribe(
        self, pattern: str, group: str | None = None, *, inbox: str | None = None
    ) -> SubscribeDecision:
        """Decide a subscription to *pattern*, in queue group *group* (None: no group), by a
        connection whose inbox is *inbox* (None: it has none).

        A pattern under ``_inbox`` is accepted if it is *inbox* or lies under it, whatever the
        rules say, and refused otherwise. Any other pattern is refused if a deny pattern
        covers it, or if no allow entry covers it (an entry with a group admits only
        subscriptions in that group); accepted otherwise, with a
        :attr:`~SubscribeDecision.filter` of the deny patterns that merely overlap it (and,
        if it starts with a wildcard, of ``$`` topics and inboxes).

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
        """
        if self.unrestricted:
            return SubscribeDecision(allowed=True, reason="unrestricted permissions")
        tokens = validate_pattern(pattern).split(".")
        if tokens[0] == _INBOX_TOKEN:
            if inbox is not None and (
                pattern == inbox or _covers([*inbox.split("."), ">"], tokens)
            ):
                return SubscribeDecision(allowed=True, reason="the connection's own inbox")
            return SubscribeDecision(
                allowed=False,
                reason="a connection may subscribe under '_inbox' only to its own inbox "
                f"({'welcome.inbox' if inbox is None else repr(inbox)})",
            )
        rules = self.subscribe
        for deny, deny_tokens in rules._deny_tokens:
            if _covers(deny_tokens, tokens):
                return SubscribeDecision(
                    allowed=False,
                    reason=f"the subscribe deny rule {deny!r} covers {pattern!r}",
                )
        wrong_group: list[tuple[str, str]] = []
        for allow, allow_group, allow_tokens in rules._entries:
            if not _covers(allow_tokens, tokens):
                continue
            if allow_group is None or allow_group == group:
                shown = allow if allow_group is None else f"{allow} group={allow_group}"
                overlapping = [
                    deny
                    for deny, deny_tokens in rules._deny_tokens
                    if _overlaps(deny_tokens, tokens)
                ]
                if _wild_first(tokens):
                    overlapping += (RESERVED_FILTER, INBOX_FILTER)
                return SubscribeDecision(
                    allowed=True,
                    reason=f"the subscribe allow rule {shown!r} covers {pattern!r}",
                    filter=tuple(overlapping),
                )
            wrong_group.append((allow, allow_group))
        if wrong_group:
            allow, allow_group = wrong_group[0]
            asked = "without a queue group" if group is None else f"in queue group {group!r}"
            reason = (
                f"the subscribe allow rule {allow!r} admits {pattern!r} only in queue group "
                f"{allow_group!r}, not {asked}"
            )
        else:
            wider = [allow for allow, _, t in rules._entries if _overlaps(t, tokens)]
            reason = f"no subscribe allow rule covers {pattern!r}"
            if wider:
                reason += f" (it reaches beyond {', '.join(map(repr, wider[:3]))})"
        return SubscribeDecision(allowed=False, reason=reason)

    def may_receive(self, topic: str, decision_filter: tuple[str, ...]) -> bool:
        """Whether an event on *topic* may be delivered to a subscription accepted with
        *decision_filter* (its :attr:`SubscribeDecision.filter`).

        Cached per filter and topic. :meth:`SubscribeDecision.delivers` gives the same
        answer, with a cache per subscription.
        """
        if not decision_filter:
            return True
        caches = self._receive_cache
        cache = caches.get(decision_filter)
        if cache is None:
            if len(caches) >= _CACHE_SIZE:
                caches.clear()
            cache = caches[decision_filter] = {}
        answer = cache.get(topic)
        if answer is None:
            answer = _delivers(decision_filter, topic)
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[topic] = answer
        return answer


# ---------------------------------------------------------------------------------------------
# The config file's shape


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _table(data: object, where: str, keys: tuple[str, ...]) -> Mapping[str, object]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table, got {_kind(data)}")
    unknown = sorted(str(key) for key in data if key not in keys)
    if unknown:
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r} (expected {', '.join(map(repr, keys))})"
        )
    return data


def _patterns_from(value: object, where: str, *, groups: bool) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a list of patterns, got {_kind(value)}")
    for i, entry in enumerate(value):
        if not isinstance(entry, str):
            raise ValueError(f"{where}[{i}]: expected a pattern (a string), got {_kind(entry)}")
        try:
            _parse_entry(entry, groups=groups)
        except InvalidTopic as exc:
            raise ValueError(f"{where}[{i}]: {exc}") from exc
    return tuple(value)


def _rules_from(value: object, where: str, *, groups: bool) -> TopicRules:
    if value is None:
        return TopicRules()
    table = _table(value, where, ("allow", "deny"))
    return TopicRules(
        allow=_patterns_from(table.get("allow"), f"{where}.allow", groups=groups),
        deny=_patterns_from(table.get("deny"), f"{where}.deny", groups=False),
    )


def _responses_from(value: object, where: str) -> ResponsePermission | None:
    if value is True:
        return ResponsePermission()
    if value is False:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{where}: expected true, false or a table of max and expires, got {_kind(value)}"
        )
    table = _table(value, where, ("max", "expires"))
    maximum = table.get("max", 1)
    if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
        raise ValueError(f"{where}.max: expected an integer >= 1, got {_kind(maximum)}")
    expires = table.get("expires", 60.0)
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not expires > 0:
        raise ValueError(f"{where}.expires: expected seconds > 0, got {_kind(expires)}")
    return ResponsePermission(max=maximum, expires=float(expires))
