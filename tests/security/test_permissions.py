"""Permissions: covers and overlaps against a brute-force oracle; rules, decisions, config.

The oracle enumerates every topic up to :data:`DEPTH` tokens over a tiny alphabet (the
patterns' tokens plus one they never use) and applies the permission model's ``$`` rule: a
pattern whose first token is a wildcard does not reach reserved topics.

Hypothesis runs these properties under one of two profiles, chosen with the environment variable
``HYPOTHESIS_PROFILE``: ``ci`` (the default, :data:`CI_EXAMPLES` examples) or ``long``
(:data:`LONG_EXAMPLES`). They are local to this module: registering them with Hypothesis would
replace its built-in ``ci`` profile, which it loads for the whole suite on a CI machine.
"""

from __future__ import annotations

import itertools
import os
import re
import tomllib
from functools import cache
from typing import Final

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import patterns, tokens

from trio_realtime import InvalidTopic, topic_matches
from trio_realtime.security import (
    Permissions,
    ResponsePermission,
    SubscribeDecision,
    TopicRules,
    covers,
    overlaps,
)
from trio_realtime.security._permissions import INBOX_FILTER, RESERVED_FILTER

# ---------------------------------------------------------------------------------------------
# The oracle

#: Tokens of the patterns drawn, after the first.
TOKENS: Final = ("a", "b")
#: First tokens of the patterns drawn: one reserved.
FIRST_TOKENS: Final = ("a", "b", "$s")
#: A token no pattern names, so that a wildcard always matches something no literal does.
OTHER: Final = "other"
#: Longest topic enumerated: one more than the longest pattern, so that a '>' is seen matching
#: more tokens than any pattern has.
MAX_PATTERN_TOKENS: Final = 4
DEPTH: Final = MAX_PATTERN_TOKENS + 1

CI_EXAMPLES: Final = 2_000
LONG_EXAMPLES: Final = 100_000
_PROFILES: Final = {
    "ci": settings(max_examples=CI_EXAMPLES, deadline=None),
    "long": settings(max_examples=LONG_EXAMPLES, deadline=None),
}
PROFILE: Final = _PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "ci")]


def _all_topics() -> tuple[str, ...]:
    rest = (*TOKENS, OTHER)
    found = []
    for depth in range(1, DEPTH + 1):
        for first in (*FIRST_TOKENS, OTHER):
            found += [
                ".".join((first, *tail)) for tail in itertools.product(rest, repeat=depth - 1)
            ]
    return tuple(found)


TOPICS: Final = _all_topics()


def _all_patterns() -> tuple[str, ...]:
    found = [">"]
    for n in range(1, MAX_PATTERN_TOKENS + 1):
        firsts = (*FIRST_TOKENS, "*")
        middles = [(*TOKENS, "*")] * (n - 2)
        lasts = (*TOKENS, "*", ">") if n > 1 else ((),)
        found += [
            ".".join((first, *middle, *((last,) if n > 1 else ())))
            for first in firsts
            for middle in itertools.product(*middles)
            for last in lasts
        ]
    return tuple(found)


#: Every pattern of 1 to 4 tokens over the alphabet.
ALL_PATTERNS: Final = _all_patterns()


def reaches(pattern: str, topic: str) -> bool:
    """The permission model's match: NATS matching, but a leading wildcard skips ``$`` topics."""
    if pattern[0] in "*>" and topic.startswith("$"):
        return False
    return topic_matches(pattern, topic)


@cache
def reach(pattern: str) -> frozenset[str]:
    """Every enumerated topic *pattern* reaches."""
    return frozenset(topic for topic in TOPICS if reaches(pattern, topic))


def small_patterns() -> st.SearchStrategy[str]:
    return patterns(
        token=st.sampled_from(TOKENS),
        first_token=st.sampled_from(FIRST_TOKENS),
        max_tokens=MAX_PATTERN_TOKENS,
    )


def test_the_oracle_enumerates_every_pattern_once() -> None:
    """The enumeration holds 213 distinct valid patterns and 484 topics."""
    assert len(set(ALL_PATTERNS)) == len(ALL_PATTERNS) == 1 + 4 + 16 + 48 + 144
    assert len(TOPICS) == 4 * (1 + 3 + 9 + 27 + 81)
    assert {"a", ">", "*", "$s.>", "*.a.*.>", "a.b.b.b"} <= set(ALL_PATTERNS)


# ---------------------------------------------------------------------------------------------
# covers and overlaps: examples


@pytest.mark.parametrize(
    "pattern", ["a.>", "a.b.>", "a.*.*", ">", "*.b.c", "a.*", "a.b", "a.b.c.d"]
)
def test_wildcard_widening_is_not_covered(pattern: str) -> None:
    """An allow of a.b.* covers none of the wider patterns of the issue's attack list."""
    assert not covers("a.b.*", pattern)


@pytest.mark.parametrize("pattern", ["a.b.c", "a.b.*"])
def test_narrower_patterns_are_covered(pattern: str) -> None:
    """An allow of a.b.* covers a.b.c and itself."""
    assert covers("a.b.*", pattern)


def test_greater_than_in_the_pattern_needs_greater_than_in_the_rule() -> None:
    """a.b.> lies under a.> and a.b.> only; NATS would accept it under a.b.* too."""
    assert covers("a.>", "a.b.>")
    assert covers("a.b.>", "a.b.>")
    assert covers("*.>", "a.b.>")
    assert not covers("a.b.*", "a.b.>")
    assert not covers("a.b.*.>", "a.b.>")
    assert not covers("a.b", "a.b.>")


def test_greater_than_covers_a_non_empty_tail() -> None:
    """a.> covers a.b and a.*.c, but not a itself."""
    assert covers("a.>", "a.b")
    assert covers("a.>", "a.*.c")
    assert not covers("a.>", "a")


@pytest.mark.parametrize("rule", [">", "*.>", "*", "*.*"])
def test_a_leading_wildcard_never_covers_reserved_topics(rule: str) -> None:
    """$sys patterns lie under no rule that starts with a wildcard."""
    assert not covers(rule, "$sys.>")
    assert not covers(rule, "$sys.connect")
    assert not overlaps(rule, "$sys.>")
    assert not overlaps("$sys.connect", rule)


def test_reserved_topics_are_granted_by_reserved_rules() -> None:
    """$sys.> covers $sys.> and $sys.connect; it does not cover > or other $ topics."""
    assert covers("$sys.>", "$sys.>")
    assert covers("$sys.>", "$sys.connect")
    assert covers("$sys.*", "$sys.connect")
    assert not covers("$sys.>", ">")
    assert not covers("$sys.>", "$other.x")


def test_a_leading_wildcard_covers_a_leading_wildcard() -> None:
    """> covers >: neither reaches $ topics in the model."""
    assert covers(">", ">")
    assert covers(">", "*.a")
    assert covers("*", "*")
    assert overlaps(">", "*")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("a.*", "*.b", True),
        ("a.>", "a", False),
        ("a.>", "a.b.c", True),
        ("a.b", "a.c", False),
        ("a.*.c", "a.b.>", True),
        ("a.*", "a.*.*", False),
        ("*.*.>", "a.b", False),
        ("$s.>", "$s.a", True),
        ("$s.>", "$t.>", False),
    ],
)
def test_overlaps_examples(a: str, b: str, expected: bool) -> None:
    """overlaps is true exactly when some topic matches both (either way round)."""
    assert overlaps(a, b) is expected
    assert overlaps(b, a) is expected


@pytest.mark.parametrize(
    ("rule", "pattern"), [("a..b", "a"), ("a", "a.>.b"), ("a", ""), ("a b", "a")]
)
def test_invalid_patterns_are_refused(rule: str, pattern: str) -> None:
    """covers and overlaps raise InvalidTopic for a pattern that breaks the grammar."""
    with pytest.raises(InvalidTopic):
        covers(rule, pattern)
    with pytest.raises(InvalidTopic):
        overlaps(rule, pattern)


# ---------------------------------------------------------------------------------------------
# covers and overlaps: against the oracle


def test_covers_and_overlaps_agree_with_the_oracle_on_every_small_pair() -> None:
    """All 213 x 213 pairs of patterns over the small alphabet, each against the oracle."""
    wrong = []
    for rule, pattern in itertools.product(ALL_PATTERNS, repeat=2):
        if covers(rule, pattern) is not (reach(pattern) <= reach(rule)):
            wrong.append(("covers", rule, pattern))
        if overlaps(rule, pattern) is not bool(reach(pattern) & reach(rule)):
            wrong.append(("overlaps", rule, pattern))
    assert not wrong, wrong[:20]


@PROFILE
@given(rule=small_patterns(), pattern=small_patterns())
def test_covers_is_containment_of_the_topics_reached(rule: str, pattern: str) -> None:
    """covers(R, P) if and only if every topic P reaches is reached by R."""
    assert covers(rule, pattern) is (reach(pattern) <= reach(rule))


@PROFILE
@given(a=small_patterns(), b=small_patterns())
def test_overlaps_is_a_topic_reached_by_both(a: str, b: str) -> None:
    """overlaps(A, B) if and only if some topic is reached by both."""
    assert overlaps(a, b) is bool(reach(a) & reach(b))


@st.composite
def generalisations(draw: st.DrawFn, pattern: str) -> str:
    """A pattern built from *pattern* by widening tokens to '*' and a tail to '>'."""
    parts = pattern.split(".")
    parts = [("*" if draw(st.booleans()) and p != ">" else p) for p in parts]
    cut = draw(st.integers(0, len(parts)))
    if cut < len(parts):
        parts = [*parts[:cut], ">"]
    return ".".join(parts)


@st.composite
def instances(draw: st.DrawFn, pattern: str) -> str:
    """A topic *pattern* reaches: each wildcard replaced by tokens."""
    out = []
    for part in pattern.split("."):
        if part == "*":
            out.append(draw(tokens()))
        elif part == ">":
            out += draw(st.lists(tokens(), min_size=1, max_size=3))
        else:
            out.append(part)
    if pattern[0] in "*>" and out[0].startswith("$"):  # pragma: no cover - tokens() has no '$'
        out[0] = out[0][1:]
    return ".".join(out)


@PROFILE
@given(st.data())
def test_a_covering_rule_reaches_every_topic_of_the_pattern(data: st.DataObject) -> None:
    """Over the whole grammar: if covers(R, P), R reaches each topic P reaches; if R and P do
    not overlap, R reaches none of them."""
    pattern = data.draw(patterns(), label="pattern")
    rule = data.draw(st.one_of(generalisations(pattern), patterns()), label="rule")
    topic = data.draw(instances(pattern), label="topic")
    assert reaches(pattern, topic)
    if covers(rule, pattern):
        assert reaches(rule, topic)
        assert overlaps(rule, pattern)
    if not overlaps(rule, pattern):
        assert not reaches(rule, topic)


# ---------------------------------------------------------------------------------------------
# Rules


def test_topic_rules_parse_group_restricted_entries() -> None:
    """'svc.price group=pricing' is the pattern svc.price restricted to the group pricing."""
    rules = TopicRules(allow=["svc.price group=pricing", "a.>"])
    assert rules.allow == ("svc.price group=pricing", "a.>")
    assert rules.allow_entries == (("svc.price", "pricing"), ("a.>", None))


@pytest.mark.parametrize(
    "entry",
    ["a..b", "a.>.b", "", "svc.price group=", "svc.price team=x", "svc.price group=a b", "a.b "],
)
def test_topic_rules_refuse_bad_allow_entries(entry: str) -> None:
    """A bad pattern or group form is an InvalidTopic at construction."""
    with pytest.raises(InvalidTopic):
        TopicRules(allow=[entry])


def test_deny_entries_take_no_group() -> None:
    """The group form restricts allow entries only."""
    with pytest.raises(InvalidTopic, match="only a subscribe allow entry"):
        TopicRules(deny=["svc.price group=pricing"])


def test_topic_rules_want_a_list_not_a_string() -> None:
    """A bare str would be read as its characters: refused."""
    with pytest.raises(TypeError, match="list of patterns"):
        TopicRules(allow="a.>")


def test_publish_rules_take_no_group() -> None:
    """A group-restricted entry in the publish rules is a ValueError."""
    with pytest.raises(ValueError, match="only a subscribe allow entry may name a queue group"):
        Permissions(publish=TopicRules(allow=["a group=x"]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max": 0}, "max must be an integer >= 1"),
        ({"max": True}, "max must be an integer >= 1"),
        ({"max": 1.5}, "max must be an integer >= 1"),
        ({"expires": 0}, "expires must be a number of seconds > 0"),
        ({"expires": float("nan")}, "expires must be a number of seconds > 0"),
        ({"expires": "60"}, "expires must be a number of seconds > 0"),
    ],
)
def test_response_permission_is_validated(kwargs: dict[str, object], message: str) -> None:
    """max is an integer >= 1 and expires a positive number of seconds."""
    with pytest.raises(ValueError, match=message):
        ResponsePermission(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Permissions


def test_everything_is_unrestricted_and_grants_reserved_topics() -> None:
    """everything() says yes to every check, $ topics included, with nothing to filter."""
    everything = Permissions.everything()
    assert everything.unrestricted
    assert everything.may_publish("$sys.x")
    decision = everything.check_subscribe("$sys.>", None)
    assert decision.allowed
    assert decision.filter == ()
    assert everything.check_subscribe(">", "any").filter == ()


def test_unrestricted_permissions_have_no_deny_rules() -> None:
    """A deny rule would be ignored: refused instead."""
    with pytest.raises(ValueError, match="deny"):
        Permissions(publish=TopicRules(deny=["a"]), unrestricted=True)


def test_nothing_allows_nothing() -> None:
    """nothing() refuses every publish, subscription and reply."""
    nothing = Permissions.nothing()
    assert not nothing.unrestricted
    assert not nothing.may_publish("a")
    assert not nothing.check_subscribe("a", None).allowed
    assert nothing.allow_responses is None


def test_publish_deny_wins() -> None:
    """A topic matching both an allow and a deny pattern may not be published to."""
    permissions = Permissions(publish=TopicRules(allow=["orders.>"], deny=["orders.audit.>"]))
    assert permissions.may_publish("orders.new")
    assert not permissions.may_publish("orders.audit.x")
    assert not permissions.may_publish("other")


def test_publish_to_reserved_topics_only_through_reserved_rules() -> None:
    """> and *.> grant no $ topic; $sys.> does."""
    wide = Permissions(publish=TopicRules(allow=[">", "*.>"]))
    assert wide.may_publish("a.b")
    assert not wide.may_publish("$sys.x")
    reserved = Permissions(publish=TopicRules(allow=["$sys.>"], deny=[">"]))
    assert reserved.may_publish("$sys.x")
    assert not reserved.may_publish("a.b")


def test_may_publish_refuses_invalid_topics() -> None:
    """A wildcard is not a topic."""
    with pytest.raises(InvalidTopic):
        Permissions.nothing().may_publish("a.*")


def test_subscribe_inside_a_deny_pattern_is_refused() -> None:
    """A pattern a deny rule covers is refused, naming the rule."""
    permissions = Permissions(subscribe=TopicRules(allow=[">"], deny=["orders.secret.>"]))
    decision = permissions.check_subscribe("orders.secret.*", None)
    assert decision == SubscribeDecision(
        allowed=False, reason="the subscribe deny rule 'orders.secret.>' covers 'orders.secret.*'"
    )


def test_subscribe_overlapping_a_deny_pattern_is_filtered() -> None:
    """A pattern that merely overlaps deny patterns is accepted; their topics are withheld."""
    permissions = Permissions(
        subscribe=TopicRules(allow=["orders.>"], deny=["orders.secret", "orders.*.audit", "x.>"])
    )
    decision = permissions.check_subscribe("orders.>", None)
    assert decision.allowed
    assert decision.filter == ("orders.secret", "orders.*.audit")
    assert decision.delivers("orders.new")
    assert not decision.delivers("orders.secret")
    assert not decision.delivers("orders.eu.audit")
    assert decision.delivers("orders.secret.more")
    assert not permissions.may_receive("orders.eu.audit", decision.filter)
    assert permissions.may_receive("orders.new", decision.filter)


def test_subscribe_clear_of_deny_patterns_has_no_filter() -> None:
    """No deny pattern overlaps: accepted, with an empty filter."""
    permissions = Permissions(subscribe=TopicRules(allow=["a.>"], deny=["b.>"]))
    decision = permissions.check_subscribe("a.*", None)
    assert decision.allowed
    assert decision.filter == ()
    assert decision.reason == "the subscribe allow rule 'a.>' covers 'a.*'"
    assert decision.delivers("a.x")
    assert permissions.may_receive("a.x", decision.filter)


@pytest.mark.parametrize("pattern", ["a.>", "a.b.>", "a.*.*", ">", "*.b.c"])
def test_subscribe_wider_than_the_allow_rule_is_refused(pattern: str) -> None:
    """The issue's wildcard widening: allow a.b.*, none of these may be subscribed."""
    permissions = Permissions(subscribe=TopicRules(allow=["a.b.*"]))
    decision = permissions.check_subscribe(pattern, None)
    assert not decision.allowed
    assert decision.reason.startswith(f"no subscribe allow rule covers {pattern!r}")
    assert "'a.b.*'" in decision.reason  # the rule it reaches beyond


def test_a_refused_decision_delivers_nothing() -> None:
    """delivers is False for every topic on a refused subscription."""
    decision = Permissions.nothing().check_subscribe("a", None)
    assert not decision.delivers("a")


def test_group_restricted_entries_need_their_group() -> None:
    """svc.price group=pricing admits svc.price in the group pricing, and nothing else."""
    permissions = Permissions(subscribe=TopicRules(allow=["svc.price group=pricing", "pub.>"]))
    assert permissions.check_subscribe("svc.price", "pricing").allowed
    without = permissions.check_subscribe("svc.price", None)
    assert not without.allowed
    assert without.reason == (
        "the subscribe allow rule 'svc.price' admits 'svc.price' only in queue group "
        "'pricing', not without a queue group"
    )
    other = permissions.check_subscribe("svc.price", "thieves")
    assert not other.allowed
    assert other.reason.endswith("not in queue group 'thieves'")
    assert permissions.check_subscribe("pub.x", "any").allowed
    assert permissions.check_subscribe("pub.x", None).allowed


def test_an_unrestricted_entry_admits_any_group() -> None:
    """Group restrictions narrow their own entry: another entry covering the pattern admits
    any group, or none."""
    permissions = Permissions(subscribe=TopicRules(allow=["svc.price group=pricing", "svc.*"]))
    assert permissions.check_subscribe("svc.price", None).allowed
    assert permissions.check_subscribe("svc.price", "other").allowed


def test_reserved_topics_only_through_reserved_subscribe_rules() -> None:
    """$sys through >: refused; $sys.> needs an allow that starts with $."""
    wide = Permissions(subscribe=TopicRules(allow=[">"]))
    assert not wide.check_subscribe("$sys.>", None).allowed
    assert not wide.check_subscribe("$sys.connect", None).allowed
    reserved = Permissions(subscribe=TopicRules(allow=[">", "$sys.>"]))
    decision = reserved.check_subscribe("$sys.>", None)
    assert decision.allowed
    assert decision.filter == ()


def test_a_leading_wildcard_subscription_gets_no_reserved_topic() -> None:
    """An accepted > is delivered no $ topic, even to a user who may subscribe $sys.>."""
    permissions = Permissions(subscribe=TopicRules(allow=[">", "$sys.>"]))
    for pattern in [">", "*.x", "*"]:
        decision = permissions.check_subscribe(pattern, None)
        assert decision.allowed
        assert decision.filter == (RESERVED_FILTER, INBOX_FILTER)
        assert not decision.delivers("$sys.x")
        assert not permissions.may_receive("$sys.x", decision.filter)
    assert permissions.check_subscribe(">", None).delivers("a.b")


INBOX = "_inbox.0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "pattern", [INBOX, f"{INBOX}.>", f"{INBOX}.*", f"{INBOX}.7", f"{INBOX}.a.b"]
)
def test_a_connection_may_subscribe_to_its_own_inbox(pattern: str) -> None:
    """Its own inbox, and patterns under it, are accepted without any rule."""
    decision = Permissions.nothing().check_subscribe(pattern, None, inbox=INBOX)
    assert decision.allowed
    assert decision.filter == ()


@pytest.mark.parametrize(
    "pattern",
    ["_inbox.>", "_inbox.*", "_inbox.*.>", "_inbox", "_inbox.other", "_inbox.other.>", f"{INBOX}x"],
)
def test_no_rule_grants_another_inbox(pattern: str) -> None:
    """Anything else under _inbox is refused, even for a user who may subscribe to >."""
    permissions = Permissions(subscribe=TopicRules(allow=[">"]))
    decision = permissions.check_subscribe(pattern, None, inbox=INBOX)
    assert not decision.allowed
    assert "only to its own inbox" in decision.reason
    assert not permissions.check_subscribe(pattern, None).allowed  # (no inbox at all)


def test_a_leading_wildcard_subscription_gets_no_inbox_topic() -> None:
    """> is accepted, and delivers neither another's replies nor the connection's own."""
    permissions = Permissions(subscribe=TopicRules(allow=[">"]))
    decision = permissions.check_subscribe(">", None, inbox=INBOX)
    assert decision.allowed
    assert not decision.delivers("_inbox.other.1")
    assert not decision.delivers(f"{INBOX}.1")
    assert decision.delivers("inbox.x")
    assert decision.delivers("_inboxes.x")


@pytest.mark.parametrize(
    ("entry", "kind"),
    [("_inbox.>", "publish"), ("_inbox.*", "subscribe"), ("_inbox.x group=g", "subscribe")],
)
def test_rules_may_not_name_inboxes(entry: str, kind: str) -> None:
    """An entry under _inbox, allow or deny, is an error that says how inboxes work instead."""
    with pytest.raises(ValueError, match="rules cannot name inboxes"):
        Permissions.from_dict({kind: {"allow": [entry]}})
    if " " not in entry:
        with pytest.raises(ValueError, match="rules cannot name inboxes"):
            Permissions.from_dict({kind: {"deny": [entry]}})
        with pytest.raises(InvalidTopic, match="rules cannot name inboxes"):
            TopicRules(deny=[entry])


def test_publish_rules_never_grant_an_inbox() -> None:
    """Even > does not let a user publish to an inbox (replies are the broker's to allow)."""
    permissions = Permissions(publish=TopicRules(allow=[">"]))
    assert permissions.may_publish("a.b")
    assert not permissions.may_publish("_inbox.other.1")
    assert Permissions.everything().may_publish("_inbox.other.1")


def test_check_subscribe_refuses_invalid_patterns() -> None:
    """A bad pattern raises InvalidTopic."""
    with pytest.raises(InvalidTopic):
        Permissions.nothing().check_subscribe("a..b", None)


# ---------------------------------------------------------------------------------------------
# Caching


def _fresh(permissions: Permissions) -> Permissions:
    return attrs.evolve(permissions)


def test_caching_does_not_change_answers() -> None:
    """Over more topics than the caches hold, twice over, the cached answers are the
    uncached ones."""
    permissions = Permissions(
        publish=TopicRules(allow=["a.>", "$s.*", "*.b"], deny=["a.b.>", "*.*.c"]),
        subscribe=TopicRules(allow=[">"], deny=["*.*.c", "a.b"]),
    )
    decision = permissions.check_subscribe(">", None)
    assert decision.filter == ("*.*.c", "a.b", RESERVED_FILTER, INBOX_FILTER)
    topics = [
        f"{first}.{i}.{last}" for first in ("a", "b", "$s") for i in range(2000) for last in "bc"
    ]
    topics += ["a.b", "a.b.b", "$s.b", "b.b"]
    expected_publish = [_fresh(permissions).may_publish(t) for t in topics]
    expected_receive = [
        not reaches("*.*.c", t) and not reaches("a.b", t) and not t.startswith("$") for t in topics
    ]
    for _ in range(2):
        assert [permissions.may_publish(t) for t in topics] == expected_publish
        assert [decision.delivers(t) for t in topics] == expected_receive
        assert [permissions.may_receive(t, decision.filter) for t in topics] == expected_receive
    assert any(expected_publish)
    assert not all(expected_publish)
    assert permissions == _fresh(permissions)  # caches take no part in equality


def test_decisions_compare_by_value() -> None:
    """Equal decisions are equal whatever their caches hold, and hashable."""
    permissions = Permissions(subscribe=TopicRules(allow=[">"], deny=["a.b"]))
    first = permissions.check_subscribe("a.*", None)
    first.delivers("a.b")
    second = permissions.check_subscribe("a.*", None)
    assert first == second
    assert hash(first) == hash(second)


# ---------------------------------------------------------------------------------------------
# The config file's shape


def test_from_dict_reads_the_issue_example() -> None:
    """The TOML of the issue, read with tomllib, gives the permissions it says."""
    document = tomllib.loads(
        """
        [users.permissions]
        publish = { allow = ["orders.>"], deny = ["orders.audit.>"] }
        subscribe = { allow = ["orders.*", "svc.price group=pricing"], deny = ["orders.secret"] }
        allow_responses = true
        """
    )
    permissions = Permissions.from_dict(document["users"]["permissions"])
    assert permissions == Permissions(
        publish=TopicRules(allow=("orders.>",), deny=("orders.audit.>",)),
        subscribe=TopicRules(
            allow=("orders.*", "svc.price group=pricing"), deny=("orders.secret",)
        ),
        allow_responses=ResponsePermission(),
    )


def test_from_dict_defaults_to_nothing() -> None:
    """An empty table allows nothing; allow_responses false is None."""
    assert Permissions.from_dict({}) == Permissions.nothing()
    assert Permissions.from_dict({"allow_responses": False}).allow_responses is None
    assert Permissions.from_dict({"publish": {"deny": ["a"]}}).publish == TopicRules(deny=("a",))


def test_from_dict_reads_a_response_table() -> None:
    """allow_responses as a table of max and expires."""
    permissions = Permissions.from_dict({"allow_responses": {"max": 3, "expires": 5}})
    assert permissions.allow_responses == ResponsePermission(max=3, expires=5.0)
    assert Permissions.from_dict({"allow_responses": {}}).allow_responses == ResponsePermission()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"subscribe": {"allow": ["a", "b", "a..b"]}},
            "permissions.subscribe.allow[2]: invalid topic 'a..b': tokens must not be empty",
        ),
        ({"publish": {"deny": ["a", 3]}}, "permissions.publish.deny[1]: expected a pattern"),
        (
            {"publish": {"allow": ["svc group=x"]}},
            "permissions.publish.allow[0]: invalid topic 'svc group=x': only a subscribe allow",
        ),
        (
            {"subscribe": {"deny": ["svc group=x"]}},
            "permissions.subscribe.deny[0]: invalid topic 'svc group=x': only a subscribe allow",
        ),
        (
            {"subscribe": {"allow": ["svc group="]}},
            "permissions.subscribe.allow[0]: invalid topic 'svc group=': expected 'PATTERN' or",
        ),
        ({"publish": {"allow": "a.>"}}, "permissions.publish.allow: expected a list of patterns"),
        ({"publish": ["a"]}, "permissions.publish: expected a table, got a list"),
        ({"publish": {"alow": ["a"]}}, "permissions.publish: unknown key 'alow'"),
        ({"subscribes": {}}, "permissions: unknown key 'subscribes'"),
        ({"allow_responses": "yes"}, "permissions.allow_responses: expected true, false or a"),
        ({"allow_responses": {"max": 0}}, "permissions.allow_responses.max: expected an integer"),
        ({"allow_responses": {"max": True}}, "permissions.allow_responses.max: expected an int"),
        (
            {"allow_responses": {"expires": -1}},
            "permissions.allow_responses.expires: expected seconds > 0, got int -1",
        ),
        ({"allow_responses": {"max": 1, "for": 2}}, "permissions.allow_responses: unknown key"),
    ],
)
def test_from_dict_errors_name_the_key_path(data: dict[str, object], message: str) -> None:
    """Each error names the key path and what is wrong with it."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        Permissions.from_dict(data)


def test_from_dict_names_where_the_table_is() -> None:
    """*where* prefixes the key path, and a non-table is refused."""
    with pytest.raises(
        ValueError, match=re.escape("users[1].permissions.subscribe: expected a table")
    ):
        Permissions.from_dict({"subscribe": 1}, where="users[1].permissions")
    with pytest.raises(ValueError, match=r"^permissions: expected a table"):
        Permissions.from_dict([])  # type: ignore[arg-type]
