"""Topics, patterns and the pattern index.

The grammar is NATS's subject grammar, so that a NATS or Redis backplane maps one to one:

* a topic is tokens separated by ``.``; a token is one or more of ``A-Z a-z 0-9 _ -``;
* the first token may start with ``$``: such topics are reserved for the broker (``$sys.…``);
* a pattern may also use ``*`` as a whole token (exactly one token) and ``>`` as the last token
  (one or more tokens);
* a published topic has no wildcards.

Matching is NATS's exactly: ``$`` topics and ``_inbox.`` topics are matched by wildcards like
any other topic.
"""

from __future__ import annotations

import re
from typing import Final, Generic, TypeVar

from ._errors import InvalidTopic

__all__ = [
    "INBOX_PREFIX",
    "MAX_TOPIC_LENGTH",
    "PatternIndex",
    "TopicTree",
    "is_reserved",
    "is_transient",
    "topic_matches",
    "validate_pattern",
    "validate_topic",
]

#: Reply topics start with this prefix: a requester subscribes ``_inbox.<unique>`` and sets it
#: as the request's ``reply_to``.
INBOX_PREFIX: Final = "_inbox."
#: Longest topic or pattern accepted, in characters.
MAX_TOPIC_LENGTH: Final = 1024

_TOKEN: Final = re.compile(r"[A-Za-z0-9_\-]+")
_FIRST_TOKEN: Final = re.compile(r"\$?[A-Za-z0-9_\-]+")

# Valid topics seen recently; publishing revalidates the same few topics over and over.
_valid_topics: dict[str, None] = {}
_VALID_CACHE_SIZE: Final = 4096

T = TypeVar("T")


def _check(text: object, *, pattern: bool) -> str:
    kind = "pattern" if pattern else "topic"
    if not isinstance(text, str):
        raise InvalidTopic(text, f"a {kind} must be a str, not {type(text).__name__}")
    if not text:
        raise InvalidTopic(text, f"a {kind} must not be empty")
    if len(text) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(
            text[:40] + "…", f"a {kind} must be at most {MAX_TOPIC_LENGTH} characters long"
        )
    tokens = text.split(".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            raise InvalidTopic(
                text, "tokens must not be empty (no leading, trailing or double '.')"
            )
        if token == "*" or token == ">":
            if not pattern:
                raise InvalidTopic(
                    text, f"a published topic must not contain the wildcard {token!r}"
                )
            if token == ">" and i != last:
                raise InvalidTopic(text, "the wildcard '>' may only be the last token")
            continue
        if (_FIRST_TOKEN if i == 0 else _TOKEN).fullmatch(token) is None:
            raise InvalidTopic(
                text,
                f"token {token!r} may contain only letters, digits, '_' and '-'"
                + (" (and a leading '$' in the first token)" if i == 0 else "")
                + (", and wildcards '*' and '>' must stand alone" if pattern else ""),
            )
    return text


def validate_topic(topic: str) -> str:
    """Check that *topic* can be published to, and return it.

    Raises:
        InvalidTopic: naming the topic and the rule it broke (for example, it contains a
            wildcard, an empty token, or a character outside ``A-Z a-z 0-9 _ -``).
    """
    # Check the type first: an unhashable non-str must raise InvalidTopic (from _check), not
    # the TypeError a dict lookup would raise.
    if type(topic) is str and topic in _valid_topics:
        return topic
    _check(topic, pattern=False)
    if len(_valid_topics) >= _VALID_CACHE_SIZE:
        _valid_topics.clear()
    _valid_topics[topic] = None
    return topic


def validate_pattern(pattern: str) -> str:
    """Check that *pattern* can be subscribed to, and return it.

    A pattern is a topic that may also use ``*`` (one token) and a final ``>`` (one or more
    tokens).

    Raises:
        InvalidTopic: naming the pattern and the rule it broke.
    """
    return _check(pattern, pattern=True)


def is_reserved(topic: str) -> bool:
    """Whether *topic* is reserved for the broker (its first token starts with ``$``).

    Clients may subscribe to such topics but not publish to them, nor ask for replies there.
    """
    return topic.startswith("$")


def is_transient(topic: str) -> bool:
    """Whether *topic* is left out of the store by default: reserved (``$…``) or an inbox."""
    return topic.startswith(("$", INBOX_PREFIX))


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether *topic* matches *pattern*, with NATS semantics.

    ``*`` matches exactly one token and ``>`` (last only) matches one or more tokens. Both
    arguments are validated first.

    Raises:
        InvalidTopic: if *pattern* is not a valid pattern or *topic* not a valid topic.
    """
    validate_pattern(pattern)
    validate_topic(topic)
    return _matches(pattern.split("."), topic.split("."))


def _matches(ptokens: list[str], ttokens: list[str]) -> bool:
    for i, p in enumerate(ptokens):
        if p == ">":
            return len(ttokens) > i
        if i >= len(ttokens) or (p != "*" and p != ttokens[i]):
            return False
    return len(ptokens) == len(ttokens)


class _Node(Generic[T]):
    __slots__ = ("children", "full", "here", "star")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        # Items whose pattern ends here, and items whose pattern ends with '>' here.
        self.here: dict[T, None] = {}
        self.full: dict[T, None] = {}

    def is_empty(self) -> bool:
        return not (self.children or self.star or self.here or self.full)


class PatternIndex(Generic[T]):
    """Items keyed by pattern, found by topic: a token trie.

    The cost of :meth:`match` grows with the depth of the topic (and the number of wildcard
    branches that actually match), not with the number of items indexed. Items are kept in
    insertion order per pattern and must be hashable; the same item may be added under several
    patterns.
    """

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: str, item: T) -> None:
        """Index *item* under *pattern* (validated)."""
        validate_pattern(pattern)
        node = self._root
        tokens = pattern.split(".")
        for token in tokens[:-1]:
            node = self._child(node, token)
        last = tokens[-1]
        if last == ">":
            target = node.full
        else:
            node = self._child(node, last)
            target = node.here
        if item not in target:
            target[item] = None
            self._count += 1

    @staticmethod
    def _child(node: _Node[T], token: str) -> _Node[T]:
        if token == "*":
            if node.star is None:
                node.star = _Node()
            return node.star
        child = node.children.get(token)
        if child is None:
            child = node.children[token] = _Node()
        return child

    def remove(self, pattern: str, item: T) -> bool:
        """Remove *item* from under *pattern*; return whether it was there."""
        tokens = pattern.split(".")
        path: list[tuple[_Node[T], str]] = []
        node: _Node[T] | None = self._root
        for token in tokens[:-1] if tokens[-1] == ">" else tokens:
            assert node is not None
            path.append((node, token))
            node = node.star if token == "*" else node.children.get(token)
            if node is None:
                return False
        assert node is not None
        target = node.full if tokens[-1] == ">" else node.here
        if item not in target:
            return False
        del target[item]
        self._count -= 1
        # Prune empty nodes so that a churn of patterns does not leak memory.
        while path and node.is_empty():
            parent, token = path.pop()
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]
            node = parent
        return True

    def match_all(self) -> list[T]:
        """Every item indexed, each once."""
        found: dict[T, None] = {}
        stack = [self._root]
        while stack:
            node = stack.pop()
            found.update(node.here)
            found.update(node.full)
            stack.extend(node.children.values())
            if node.star is not None:
                stack.append(node.star)
        return list(found)

    def match(self, topic: str) -> list[T]:
        """The items whose pattern matches *topic* (not validated), each once."""
        found: dict[T, None] = {}
        tokens = topic.split(".")
        self._collect(self._root, tokens, 0, found)
        return list(found)

    def _collect(self, node: _Node[T], tokens: list[str], i: int, found: dict[T, None]) -> None:
        n = len(tokens)
        while True:
            if i == n:
                if node.here:
                    found.update(node.here)
                return
            if node.full:  # '>' here matches the one or more tokens that remain
                found.update(node.full)
            if node.star is not None:
                self._collect(node.star, tokens, i + 1, found)
            child = node.children.get(tokens[i])
            if child is None:
                return
            node = child
            i += 1


class _TopicNode(Generic[T]):
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[str, _TopicNode[T]] = {}
        self.value: T | None = None

    def is_empty(self) -> bool:
        return self.value is None and not self.children


class TopicTree(Generic[T]):
    """Values keyed by topic, found by pattern: the reverse of :class:`PatternIndex`.

    :meth:`match` walks only the branches a pattern can match: a literal token follows one
    child, ``*`` every child at its level, ``>`` the whole subtree below. Its cost grows with
    the topics matched (and the wildcard branches tried), not with the number of topics held.
    Values must not be None.
    """

    __slots__ = ("_root", "_size")

    def __init__(self) -> None:
        self._root: _TopicNode[T] = _TopicNode()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def get(self, topic: str) -> T | None:
        """The value of *topic*, or None."""
        node: _TopicNode[T] | None = self._root
        for token in topic.split("."):
            assert node is not None
            node = node.children.get(token)
            if node is None:
                return None
        assert node is not None
        return node.value

    def set(self, topic: str, value: T) -> None:
        """Set the value of *topic* (a topic, not a pattern)."""
        node = self._root
        for token in topic.split("."):
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = _TopicNode()
            node = child
        if node.value is None:
            self._size += 1
        node.value = value

    def pop(self, topic: str) -> T | None:
        """Remove *topic* and return its value (None if it had none)."""
        path: list[tuple[_TopicNode[T], str]] = []
        node: _TopicNode[T] | None = self._root
        for token in topic.split("."):
            assert node is not None
            path.append((node, token))
            node = node.children.get(token)
            if node is None:
                return None
        assert node is not None
        value = node.value
        if value is None:
            return None
        node.value = None
        self._size -= 1
        # Prune empty nodes so that a churn of topics does not leak memory.
        while path and node.is_empty():
            parent, token = path.pop()
            del parent.children[token]
            node = parent
        return value

    def match(self, pattern: str) -> list[T]:
        """The values of the topics *pattern* (not validated) matches, in no set order."""
        found: list[T] = []
        self._walk(self._root, pattern.split("."), 0, found)
        return found

    def _walk(self, node: _TopicNode[T], tokens: list[str], i: int, found: list[T]) -> None:
        n = len(tokens)
        while i < n:
            token = tokens[i]
            if token == ">":
                stack = list(node.children.values())
                while stack:
                    below = stack.pop()
                    if below.value is not None:
                        found.append(below.value)
                    stack.extend(below.children.values())
                return
            if token == "*":
                for below in node.children.values():
                    self._walk(below, tokens, i + 1, found)
                return
            child = node.children.get(token)
            if child is None:
                return
            node = child
            i += 1
        if node.value is not None:
            found.append(node.value)
