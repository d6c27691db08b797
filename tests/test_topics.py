"""Topic grammar, NATS matching and the PatternIndex trie (trio_realtime._topics)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from strategies import (
    SMALL_FIRST_TOKENS,
    SMALL_TOKENS,
    patterns,
    small_patterns,
    small_topics,
    topics,
)

import trio_realtime
from trio_realtime import (
    InvalidTopic,
    _topics,
    topic_matches,
    validate_pattern,
    validate_topic,
)
from trio_realtime._topics import MAX_TOPIC_LENGTH, PatternIndex, TopicTree, is_reserved

# ---------------------------------------------------------------------------------------------
# Validation: examples for every rule

VALID_TOPICS = [
    "a",
    "orders",
    "orders.created",
    "a.b.c.d.e.f.g",
    "AZ.az.09.__.--",
    "a-b_c.D-E_F",
    "0.1.2",
    "$sys",
    "$sys.stats",
    "$SYS.a-b.c_d",
    "_inbox.k3j4h5",
    "x" * MAX_TOPIC_LENGTH,
    ".".join(["ab"] * 341),  # 1022 characters, 341 tokens
]

VALID_ONLY_AS_PATTERNS = [
    "*",
    ">",
    "a.*",
    "a.>",
    "*.*",
    "*.>",
    "*.b.>",
    "a.*.c",
    "$sys.>",
    "$sys.*",
    "_inbox.*",
    "*.stats",
]

# (text, a substring of the rule it breaks). Each is invalid both as a topic and as a pattern.
INVALID_EITHER = [
    ("", "must not be empty"),
    (".", "tokens must not be empty"),
    (".a", "tokens must not be empty"),
    ("a.", "tokens must not be empty"),
    ("a..b", "tokens must not be empty"),
    ("a...b", "tokens must not be empty"),
    ("a b", "may contain only letters, digits, '_' and '-'"),
    (" a", "may contain only letters"),
    ("a ", "may contain only letters"),
    ("a.b c", "may contain only letters"),
    ("a/b", "may contain only letters"),
    ("a#b", "may contain only letters"),
    ("a.#", "may contain only letters"),
    ("a+b", "may contain only letters"),
    ("a.+", "may contain only letters"),
    ("a:b", "may contain only letters"),
    ("a,b", "may contain only letters"),
    ("a\tb", "may contain only letters"),
    ("a\n", "may contain only letters"),
    ("café", "may contain only letters"),
    ("a.ü", "may contain only letters"),
    ("日本", "may contain only letters"),
    ("a.\N{SNOWMAN}", "may contain only letters"),
    ("a\N{NO-BREAK SPACE}b", "may contain only letters"),
    ("a.$b", "may contain only letters"),  # '$' only leads the first token
    ("a.b.$c", "may contain only letters"),
    ("a$", "may contain only letters"),
    ("$", "may contain only letters"),
    ("$.a", "may contain only letters"),
    ("$$sys", "may contain only letters"),
    ("s$ys", "may contain only letters"),
    ("a*", "may contain only letters"),  # wildcards stand alone
    ("*a", "may contain only letters"),
    ("a.b*", "may contain only letters"),
    ("**", "may contain only letters"),
    (">b", "may contain only letters"),
    ("a.b>", "may contain only letters"),
    (">>", "may contain only letters"),
    ("a.*>", "may contain only letters"),
    ("$*", "may contain only letters"),
    ("$>", "may contain only letters"),
    ("x" * (MAX_TOPIC_LENGTH + 1), f"at most {MAX_TOPIC_LENGTH} characters"),
    ("a." * 600, f"at most {MAX_TOPIC_LENGTH} characters"),
]

# Invalid as topics only (they are valid patterns): wildcards in a published topic.
WILDCARD_TOPICS = [
    ("*", "must not contain the wildcard '*'"),
    (">", "must not contain the wildcard '>'"),
    ("a.*", "must not contain the wildcard '*'"),
    ("a.>", "must not contain the wildcard '>'"),
    ("*.b", "must not contain the wildcard '*'"),
    ("$sys.>", "must not contain the wildcard '>'"),
]

# Invalid as patterns (and as topics, for the wildcard): '>' anywhere but last.
MISPLACED_FULL_WILDCARD = [
    (">.a", "'>' may only be the last token"),
    ("a.>.b", "'>' may only be the last token"),
    ("a.>.>", "'>' may only be the last token"),
    (">.*", "'>' may only be the last token"),
]

NOT_STR = [None, 1, 1.5, b"a.b", ["a"], ("a",), {"a": 1}, object()]

Validator = Callable[[Any], str]


def _assert_invalid(validate: Validator, text: object, rule: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate(text)
    message = str(caught.value)
    assert rule in message
    assert rule in caught.value.rule
    if isinstance(text, str) and len(text) > MAX_TOPIC_LENGTH:
        # An over-long topic is named by its beginning only.
        assert repr(text[:40])[:-1] in message
    else:
        assert repr(text) in message
        assert caught.value.topic == text


@pytest.mark.parametrize("topic", VALID_TOPICS)
def test_validate_topic_accepts_and_returns_valid_topics(topic: str) -> None:
    """A valid topic passes validate_topic (twice: the second time from its cache) unchanged."""
    assert validate_topic(topic) is topic
    assert validate_topic(topic) is topic


@pytest.mark.parametrize("pattern", VALID_TOPICS + VALID_ONLY_AS_PATTERNS)
def test_validate_pattern_accepts_topics_and_wildcard_patterns(pattern: str) -> None:
    """Every valid topic is a valid pattern, and so are standalone '*' and a final '>'."""
    assert validate_pattern(pattern) is pattern


@pytest.mark.parametrize(("topic", "rule"), INVALID_EITHER + WILDCARD_TOPICS)
def test_validate_topic_rejects_naming_topic_and_rule(topic: str, rule: str) -> None:
    """An invalid topic raises InvalidTopic whose message names the topic and the broken rule."""
    _assert_invalid(validate_topic, topic, rule)


@pytest.mark.parametrize(("pattern", "rule"), INVALID_EITHER + MISPLACED_FULL_WILDCARD)
def test_validate_pattern_rejects_naming_pattern_and_rule(pattern: str, rule: str) -> None:
    """An invalid pattern raises InvalidTopic whose message names the pattern and the rule."""
    _assert_invalid(validate_pattern, pattern, rule)


@pytest.mark.parametrize(("topic", "rule"), MISPLACED_FULL_WILDCARD)
def test_validate_topic_rejects_any_wildcard(topic: str, rule: str) -> None:
    """A topic with a misplaced '>' is rejected for holding a wildcard at all."""
    _assert_invalid(validate_topic, topic, "must not contain the wildcard")


@pytest.mark.parametrize("validate", [validate_topic, validate_pattern])
@pytest.mark.parametrize("value", NOT_STR, ids=lambda v: type(v).__name__)
def test_validators_reject_non_str(validate: Validator, value: object) -> None:
    """Non-str input (hashable or not) raises InvalidTopic naming its type, not another error."""
    _assert_invalid(validate, value, f"must be a str, not {type(value).__name__}")


def test_validate_topic_cache_is_bounded_and_never_admits_invalid_topics() -> None:
    """Validating many distinct topics keeps the cache bounded; invalid ones are never cached."""
    for i in range(_topics._VALID_CACHE_SIZE + 100):
        assert validate_topic(f"cache.t{i}") == f"cache.t{i}"
    assert 0 < len(_topics._valid_topics) <= _topics._VALID_CACHE_SIZE
    for _ in range(2):
        with pytest.raises(InvalidTopic):
            validate_topic("cache.*")
    assert "cache.*" not in _topics._valid_topics


def test_invalid_topic_is_a_realtime_error_and_a_value_error() -> None:
    """InvalidTopic derives from both RealtimeError and ValueError."""
    assert issubclass(InvalidTopic, trio_realtime.RealtimeError)
    assert issubclass(InvalidTopic, ValueError)
    with pytest.raises(ValueError, match="tokens must not be empty"):
        validate_topic("a..b")


def test_rule_text_for_a_bad_first_token_mentions_dollar() -> None:
    """The rule for a bad first token mentions the allowed leading '$'; later tokens do not."""
    with pytest.raises(InvalidTopic, match=re.escape("leading '$' in the first token")):
        validate_topic("a b.c")
    with pytest.raises(InvalidTopic) as caught:
        validate_topic("a.b c")
    assert "'$'" not in caught.value.rule


def test_rule_text_for_a_glued_wildcard_in_a_pattern() -> None:
    """In a pattern, the rule for 'a*' says wildcards must stand alone."""
    with pytest.raises(InvalidTopic, match="wildcards '\\*' and '>' must stand alone"):
        validate_pattern("a*")


def test_is_reserved() -> None:
    """A topic is reserved for the broker exactly when its first token starts with '$'."""
    assert is_reserved("$sys")
    assert is_reserved("$sys.stats")
    assert not is_reserved("sys.stats")
    assert not is_reserved("_inbox.x")


_TOKEN_RE = r"[A-Za-z0-9_\-]+"
_TOPIC_RE = re.compile(rf"\$?{_TOKEN_RE}(?:\.{_TOKEN_RE})*")
_PATTERN_TOKEN = rf"(?:{_TOKEN_RE}|\*)"
_PATTERN_RE = re.compile(rf">|(?:\$?{_TOKEN_RE}|\*)(?:\.{_PATTERN_TOKEN})*(?:\.>)?")

# Small alphabet: every character class the grammar cares about, and some it forbids.
_GRAMMAR_SOUP = st.text(alphabet="ab9_-.$*> /#+é\n", max_size=12)


def _accepts(validate: Validator, text: str) -> bool:
    try:
        validate(text)
    except InvalidTopic:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(_GRAMMAR_SOUP)
def test_validators_agree_with_a_reference_grammar(text: str) -> None:
    """On arbitrary short text, both validators accept exactly what a regex of the grammar does."""
    assert _accepts(validate_topic, text) == (_TOPIC_RE.fullmatch(text) is not None)
    assert _accepts(validate_pattern, text) == (_PATTERN_RE.fullmatch(text) is not None)


@settings(max_examples=100, deadline=None)
@given(topics(), patterns())
def test_generated_topics_and_patterns_are_valid(topic: str, pattern: str) -> None:
    """The shared strategies produce only valid topics and patterns."""
    assert validate_topic(topic) == topic
    assert validate_pattern(pattern) == pattern


# ---------------------------------------------------------------------------------------------
# Matching

MATCH_CASES = [
    # (pattern, topic, matches)
    ("a", "a", True),
    ("a", "b", False),
    ("a", "a.b", False),
    ("a.b", "a", False),
    ("a.b", "a.b", True),
    ("a.b", "a.c", False),
    ("a.b", "A.b", False),  # case-sensitive
    # '*' is exactly one token
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*.b", "a.b", True),
    ("*.b", "a.c", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("*.*", "a.b.c", False),
    ("*.*.*", "a.b.c", True),
    # '>' is one or more trailing tokens
    (">", "a", True),
    (">", "a.b", True),
    (">", "a.b.c.d.e", True),
    ("a.>", "a", False),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c", True),
    ("a.>", "b.c", False),
    ("a.b.>", "a.b", False),
    ("a.b.>", "a.b.c", True),
    ("*.>", "a", False),
    ("*.>", "a.b", True),
    ("*.>", "a.b.c", True),
    ("a.*.>", "a.b", False),
    ("a.*.>", "a.b.c", True),
    ("*.b.>", "a.b.c", True),
    ("*.b.>", "a.c.c", False),
    # NATS semantics: '$' and '_inbox' topics are matched like any other.
    (">", "$sys.stats", True),
    ("*.stats", "$sys.stats", True),
    ("*.*", "$sys.stats", True),
    ("$sys.>", "$sys.stats", True),
    ("$sys.*", "$sys.stats", True),
    ("sys.*", "$sys.stats", False),
    ("$sys", "sys", False),
    ("_inbox.*", "_inbox.x1", True),
    (">", "_inbox.x1", True),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCH_CASES)
def test_topic_matches_nats_semantics(pattern: str, topic: str, expected: bool) -> None:
    """topic_matches follows NATS: '*' is one token, a final '>' is one or more tokens."""
    assert topic_matches(pattern, topic) is expected


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [("a..b", "a"), ("a.>.b", "a.b.c"), ("a", "a.*"), ("a", "a.>"), ("a", ""), ("a", "a b")],
)
def test_topic_matches_validates_both_arguments(pattern: str, topic: str) -> None:
    """topic_matches raises InvalidTopic for a bad pattern or a topic with wildcards."""
    with pytest.raises(InvalidTopic):
        topic_matches(pattern, topic)


def reference_matches(pattern: str, topic: str) -> bool:
    """Independent NATS matcher: translate the pattern into a regular expression."""
    parts = []
    for token in pattern.split("."):
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(token))
    return re.fullmatch(r"\.".join(parts), topic) is not None


@settings(max_examples=200, deadline=None)
@given(small_patterns(), small_topics())
def test_topic_matches_agrees_with_reference_on_small_alphabet(pattern: str, topic: str) -> None:
    """Over a small token alphabet (frequent matches), topic_matches equals the reference."""
    assert topic_matches(pattern, topic) == reference_matches(pattern, topic)


@settings(max_examples=100, deadline=None)
@given(patterns(), topics())
def test_topic_matches_agrees_with_reference_on_whole_grammar(pattern: str, topic: str) -> None:
    """Over the whole grammar (rare matches), topic_matches equals the reference."""
    assert topic_matches(pattern, topic) == reference_matches(pattern, topic)


@settings(max_examples=50, deadline=None)
@given(topics())
def test_a_topic_matches_itself_and_the_catch_alls(topic: str) -> None:
    """A topic matches itself as a pattern, '>' and the all-'*' pattern of its length."""
    assert topic_matches(topic, topic)
    assert topic_matches(">", topic)
    assert topic_matches(".".join("*" * (topic.count(".") + 1)), topic)


def test_small_alphabet_strategies_make_matches_common() -> None:
    """Sanity check on the strategies: the small alphabet really produces many matches."""
    assert SMALL_TOKENS == ("a", "b", "c")
    assert "$s" in SMALL_FIRST_TOKENS
    hits = 0

    @settings(max_examples=100, deadline=None, database=None)
    @given(small_patterns(), small_topics())
    def count(pattern: str, topic: str) -> None:
        nonlocal hits
        hits += topic_matches(pattern, topic)

    count()
    assert hits >= 10


# ---------------------------------------------------------------------------------------------
# PatternIndex


def test_pattern_index_basics() -> None:
    """add/match/remove/len on a hand-built index, with items deduplicated per pattern."""
    index: PatternIndex[str] = PatternIndex()
    assert len(index) == 0
    assert index.match("a") == []
    assert index.match_all() == []
    index.add("a.b", "exact")
    index.add("a.*", "star")
    index.add("a.>", "full")
    index.add(">", "all")
    index.add("a.b", "exact")  # again: no-op
    index.add("*.b", "exact")  # same item, second pattern
    assert len(index) == 5
    assert sorted(index.match("a.b")) == ["all", "exact", "full", "star"]
    assert sorted(index.match("a.b.c")) == ["all", "full"]
    assert sorted(index.match("a")) == ["all"]
    assert sorted(index.match("x.b")) == ["all", "exact"]
    assert sorted(index.match_all()) == ["all", "exact", "full", "star"]
    assert index.remove("a.b", "exact") is True
    assert index.remove("a.b", "exact") is False
    assert sorted(index.match("a.b")) == ["all", "exact", "full", "star"]  # still via '*.b'
    assert index.remove("*.b", "exact") is True
    assert sorted(index.match("a.b")) == ["all", "full", "star"]
    assert index.remove(">", "nope") is False
    assert index.remove("q.r.s", "all") is False
    assert len(index) == 3


def test_pattern_index_add_validates_the_pattern() -> None:
    """PatternIndex.add raises InvalidTopic for a bad pattern and indexes nothing."""
    index: PatternIndex[int] = PatternIndex()
    for bad in ["", "a..b", "a.>.b", "a*", "a.$b"]:
        with pytest.raises(InvalidTopic):
            index.add(bad, 1)
    assert len(index) == 0
    assert index.match_all() == []


def test_pattern_index_remove_of_malformed_pattern_is_false() -> None:
    """Removing under a pattern that could never have been added just returns False."""
    index: PatternIndex[int] = PatternIndex()
    index.add("a.b", 1)
    for bad in ["", "a..b", "a.>.b", "a.b.>", ">", "*", "a.*"]:
        assert index.remove(bad, 1) is False
    assert index.match("a.b") == [1]


class PatternIndexMachine(RuleBasedStateMachine):
    """PatternIndex against a model: a set of (pattern, item) pairs matched by brute force."""

    added = Bundle("added")

    def __init__(self) -> None:
        super().__init__()
        self.index: PatternIndex[int] = PatternIndex()
        self.model: set[tuple[str, int]] = set()

    @rule(target=added, pattern=small_patterns(), item=st.integers(0, 5))
    def add(self, pattern: str, item: int) -> tuple[str, int]:
        self.index.add(pattern, item)
        self.model.add((pattern, item))
        return (pattern, item)

    @rule(pair=consumes(added))
    def remove_added(self, pair: tuple[str, int]) -> None:
        # The bundle may hold a pair twice (added twice) or one already removed at random.
        assert self.index.remove(*pair) == (pair in self.model)
        self.model.discard(pair)

    @rule(pattern=small_patterns(), item=st.integers(0, 5))
    def remove_random(self, pattern: str, item: int) -> None:
        assert self.index.remove(pattern, item) == ((pattern, item) in self.model)
        self.model.discard((pattern, item))

    @rule(topic=small_topics())
    def match(self, topic: str) -> None:
        found = self.index.match(topic)
        assert len(found) == len(set(found)), "match() must return each item once"
        expected = {item for pattern, item in self.model if topic_matches(pattern, topic)}
        assert set(found) == expected

    @rule()
    def remove_everything(self) -> None:
        for pattern, item in sorted(self.model):
            assert self.index.remove(pattern, item) is True
            assert self.index.remove(pattern, item) is False
        self.model.clear()
        assert len(self.index) == 0
        assert self.index.match_all() == []
        assert self.index.match(">") == []
        # White box: the trie pruned every node it grew (no leak under pattern churn).
        assert self.index._root.is_empty()

    @invariant()
    def length_and_contents(self) -> None:
        assert len(self.index) == len(self.model)
        everything = self.index.match_all()
        assert len(everything) == len(set(everything))
        assert set(everything) == {item for _, item in self.model}


def test_pattern_index_matches_brute_force_under_random_operations() -> None:
    """After random add/remove sequences, match() is exactly the brute-force set, len() is right."""
    run_state_machine_as_test(
        PatternIndexMachine,
        settings=settings(max_examples=40, stateful_step_count=30, deadline=None),
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(small_patterns(), st.integers(0, 9)), max_size=30), small_topics())
def test_pattern_index_match_then_remove_all_leaves_it_empty(
    entries: list[tuple[str, int]], topic: str
) -> None:
    """Bulk-add, match by brute force, then remove every entry: the index ends empty."""
    index: PatternIndex[int] = PatternIndex()
    for pattern, item in entries:
        index.add(pattern, item)
    assert len(index) == len(set(entries))
    expected = {item for pattern, item in entries if topic_matches(pattern, topic)}
    assert set(index.match(topic)) == expected
    for pattern, item in entries:
        index.remove(pattern, item)
    assert len(index) == 0
    assert index.match_all() == []
    assert index.match(topic) == []
    assert all(index.remove(pattern, item) is False for pattern, item in entries)
    assert index._root.is_empty()  # white box: nothing left behind


# ---------------------------------------------------------------------------------------------
# PatternIndex cost, counted (not timed): instrument the trie and count the nodes a match visits.


class _CountingDict(dict[str, Any]):
    """A trie node's children, counting every child looked up or iterated over."""

    touched = 0

    def get(self, key: str, default: Any = None) -> Any:
        _CountingDict.touched += 1
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        _CountingDict.touched += 1
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        _CountingDict.touched += len(self)
        return super().__iter__()

    def keys(self) -> Any:
        _CountingDict.touched += len(self)
        return super().keys()

    def values(self) -> Any:
        _CountingDict.touched += len(self)
        return super().values()

    def items(self) -> Any:
        _CountingDict.touched += len(self)
        return super().items()


def _instrument(index: PatternIndex[Any]) -> None:
    stack = [index._root]
    while stack:
        node = stack.pop()
        node.children = _CountingDict(node.children)
        stack.extend(node.children.values())
        if node.star is not None:
            stack.append(node.star)


def _visits(index: PatternIndex[Any], topic: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Trie nodes touched by index.match(topic): recursive calls plus children looked at."""
    calls = 0
    original = PatternIndex._collect

    def counting_collect(self: PatternIndex[Any], *args: Any) -> None:
        nonlocal calls
        calls += 1
        original(self, *args)

    _instrument(index)
    _CountingDict.touched = 0
    with monkeypatch.context() as patched:
        patched.setattr(PatternIndex, "_collect", counting_collect)
        index.match(topic)
    return calls + _CountingDict.touched


MATCHING = ["orders.eu.created", "orders.*.created", "orders.>", "*.eu.*", ">"]


def _index(non_matching: int) -> PatternIndex[str]:
    index: PatternIndex[str] = PatternIndex()
    for pattern in MATCHING:
        index.add(pattern, pattern)
    makers: list[Callable[[int], str]] = [
        "orders.us{}.created".format,  # siblings of the matching literal path
        "orders.*.c{}".format,  # siblings under the matching '*' branch
        "*.x{}.>".format,  # siblings under the root '*'
        "p{}.>".format,  # siblings of 'orders' at the root
        "orders.eu.created.t{}".format,  # deeper than the topic
    ]
    for i in range(non_matching):
        index.add(makers[i % len(makers)](i), f"n{i}")
    return index


def test_pattern_index_match_cost_does_not_grow_with_non_matching_patterns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Matching visits the same few trie nodes with 10 or 10,000 non-matching patterns indexed."""
    topic = "orders.eu.created"
    small, big = _index(10), _index(10_000)
    assert len(big) == len(MATCHING) + 10_000
    assert sorted(small.match(topic)) == sorted(big.match(topic)) == sorted(MATCHING)
    small_visits = _visits(small, topic, monkeypatch)
    big_visits = _visits(big, topic, monkeypatch)
    assert big_visits == small_visits
    # Bounded by the topic's depth and the wildcard branches that match, not by len(index).
    assert big_visits <= 20


def test_visit_counter_sees_every_step() -> None:
    """The instrumentation is live: going deeper along indexed paths costs more visits."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        topics = ["orders", "orders.eu", "orders.eu.created"]
        counts = [_visits(_index(10), topic, monkeypatch) for topic in topics]
    assert all(a < b for a, b in pairwise(counts))


# ---------------------------------------------------------------------------------------------
# TopicTree: values by topic, found by pattern (the retained values' index)


@given(
    st.lists(small_topics(), max_size=30),
    st.lists(small_topics(), max_size=10),
    small_patterns(),
)
def test_topic_tree_matches_like_topic_matches(
    topics_set: list[str], removed: list[str], pattern: str
) -> None:
    """TopicTree.match(pattern) finds exactly the held topics that topic_matches accepts."""
    tree: TopicTree[str] = TopicTree()
    held: set[str] = set()
    for topic in topics_set:
        tree.set(topic, topic)
        held.add(topic)
    for topic in removed:
        assert tree.pop(topic) == (topic if topic in held else None)
        held.discard(topic)
    assert len(tree) == len(held)
    assert sorted(tree.match(pattern)) == sorted(t for t in held if topic_matches(pattern, t))
    for topic in held:
        assert tree.get(topic) == topic


def test_topic_tree_prunes_removed_topics() -> None:
    """Removing every topic leaves an empty root: churn does not leak nodes."""
    tree: TopicTree[int] = TopicTree()
    for i in range(100):
        tree.set(f"a.b{i}.c.d", i)
    tree.set("a.b1", -1)
    for i in range(100):
        assert tree.pop(f"a.b{i}.c.d") == i
    assert tree.match(">") == [-1]
    assert tree.pop("a.b1") == -1
    assert tree.pop("a.b1") is None
    assert len(tree) == 0
    assert not tree._root.children


def _tree_visits(tree: TopicTree[Any], pattern: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Nodes touched by tree.match(pattern): recursive calls plus children looked at."""
    calls = 0
    original = TopicTree._walk

    def counting_walk(self: TopicTree[Any], *args: Any) -> None:
        nonlocal calls
        calls += 1
        original(self, *args)

    stack = [tree._root]
    while stack:
        node = stack.pop()
        node.children = _CountingDict(node.children)
        stack.extend(node.children.values())
    _CountingDict.touched = 0
    with monkeypatch.context() as patched:
        patched.setattr(TopicTree, "_walk", counting_walk)
        found = tree.match(pattern)
    return calls + _CountingDict.touched + len(found)


def _retained_tree(others: int) -> TopicTree[str]:
    tree: TopicTree[str] = TopicTree()
    for topic in ("orders.eu.created", "orders.eu.paid", "users.1.name"):
        tree.set(topic, topic)
    for i in range(others):
        tree.set(f"sensors.s{i}.temperature", str(i))
    return tree


def test_topic_tree_match_cost_grows_with_matches_not_with_topics_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 7, finding 5: finding retained values for a subscribe costs the same with 10 or
    30,000 other retained topics held."""
    small, big = _retained_tree(10), _retained_tree(30_000)
    for pattern in ("orders.eu.created", "orders.*.paid", "orders.>", "users.*.name"):
        assert sorted(small.match(pattern)) == sorted(big.match(pattern))
        assert _tree_visits(big, pattern, monkeypatch) == _tree_visits(small, pattern, monkeypatch)
        assert _tree_visits(big, pattern, monkeypatch) <= 20
    # Matching everything costs what it finds.
    assert len(big.match("sensors.*.temperature")) == 30_000
