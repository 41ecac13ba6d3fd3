"""Known entities: unicode-folded, case-insensitive, whole-word, longest match first.

Text and entities are folded the same way (NFKD, combining marks dropped, casefold), so
``MÜLLER``, ``Müller`` and ``Muller`` all meet ``Müller``. Matches are mapped back to the
original text, whose exact surface becomes the token's value (round trips stay exact).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple


class EntityMatch(NamedTuple):
    start: int
    end: int
    kind: str


_LETTERS = {"ł": "l", "ø": "o", "đ": "d", "ħ": "h", "\u0131": "i", "ŧ": "t", "ŀ": "l", "æ": "ae",
            "œ": "oe", "þ": "th"}  # fmt: skip
"""Latin letters NFKD does not decompose, spelled as people type them without the accent."""
OTHER = "\x1a"
"""What a non-ASCII character that is neither letter nor digit (a currency sign, a dash, a
curly quote) folds to: the folded text then stays ASCII (fast to search), and it is no word
character, like the original."""


@lru_cache(maxsize=8192)
def fold_char(ch: str) -> str:
    decomposed = unicodedata.normalize("NFKD", ch)
    base = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    base = "".join(_LETTERS.get(c, c) for c in base)
    return "".join(c if c.isascii() or c.isalnum() else OTHER for c in base)


_ASCII_BYTES = bytes(range(128))


def non_ascii(text: str) -> set[str]:
    """The distinct non-ASCII characters of a text: its UTF-8 bytes without the ASCII ones
    (no multi-byte sequence has one) decode to exactly those, at C speed."""
    raw = text.encode("utf-8", "surrogatepass").translate(None, _ASCII_BYTES)
    return set(raw.decode("utf-8", "surrogatepass"))


def fold(
    text: str, lowered: str | None = None, others: set[str] | None = None
) -> tuple[str, list[int] | None]:
    """The folded text and, when folding changed its length, each folded char's source index
    (None: positions are the same in both). ``lowered`` (``text.lower()``) and ``others``
    (its distinct non-ASCII characters): when the caller has them already."""
    low = text.lower() if lowered is None else lowered
    if low.isascii():
        return low, None
    if len(low) != len(text):  # a lower-casing that changes length (İ): char by char
        return _fold_each(text)
    # each distinct non-ASCII character whose fold keeps the length (é → e) is replaced in
    # one pass over the text; the others (ß → ss, a lone combining mark) are spliced in
    folds = {ch: fold_char(ch) for ch in (non_ascii(low) if others is None else others)}
    splice: list[int] = []
    for ch, f in folds.items():
        if len(f) == 1:
            low = low.replace(ch, f)
            continue
        pos = low.find(ch)
        while pos != -1:
            splice.append(pos)
            pos = low.find(ch, pos + 1)
    if not splice:
        return low, None
    splice.sort()
    parts: list[str] = []
    index: list[int] = []
    pos = 0
    for i in splice:
        f = folds[low[i]]
        parts += (low[pos:i], f)
        index.extend(range(pos, i))
        index.extend([i] * len(f))
        pos = i + 1
    parts.append(low[pos:])
    index.extend(range(pos, len(low)))
    return "".join(parts), index


def _fold_each(text: str) -> tuple[str, list[int]]:
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        f = ch.lower() if ch.isascii() else fold_char(ch)
        chars.append(f)
        index.extend([i] * len(f))
    return "".join(chars), index


def fold_key(value: str) -> str:
    return " ".join(fold(value)[0].split())


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _group(first: str, keys: list[str]) -> re.Pattern[str]:
    """One pattern for the keys that start with the word ``first`` (longest key first): the
    word (a whole word: no word character before it), then each key's other words (any
    whitespace between) as alternatives, tried in that order: one call per occurrence."""
    head = re.escape(first)
    if _is_word(first[0]):
        head += r"(?<!\w" + re.escape(first) + ")"
    rests = []
    for key in keys:
        rest = "".join(r"\s+" + re.escape(part) for part in key.split()[1:])
        rests.append("(" + rest + (r"(?!\w)" if _is_word(key[-1]) else "") + ")")
    return re.compile(head + "(?:" + "|".join(rests) + ")")


class EntityMatcher:
    """Known entities grouped by the first word of their folded form: each first word is
    looked for with a plain substring search (fast), then its group's pattern confirms one
    of the keys there (whitespace runs, word boundaries). The longest key that matches at a
    position wins."""

    def __init__(self, entities: tuple[tuple[str, str], ...]) -> None:
        by_key: dict[str, str] = {}
        for kind, value in entities:
            key = fold_key(value)
            if key:
                by_key.setdefault(key, kind)
        by_first: dict[str, list[str]] = {}
        for key in sorted(by_key, key=len, reverse=True):
            by_first.setdefault(key.split(" ", 1)[0], []).append(key)
        self.groups: list[tuple[str, re.Pattern[str], tuple[str, ...], str | None]] = [
            (first, _group(first, keys), ("", *(by_key[k] for k in keys)),
             keys[0] if len(keys) == 1 else None)
            for first, keys in by_first.items()
        ]  # fmt: skip
        """(first word, pattern, the type of each alternative by its group number, the key
        when it is the group's only one)."""

    def find(self, text: str) -> list[EntityMatch]:
        """Every candidate match, overlaps included (the caller resolves them)."""
        return [EntityMatch(*m) for m in self.matches(text)]

    def matches(
        self, text: str, lowered: str | None = None, others: set[str] | None = None
    ) -> list[tuple[int, int, str]]:
        """``find`` as plain (start, end, type) tuples; ``lowered`` and ``others`` as for
        ``fold``, when the caller has them already."""
        if not self.groups:
            return []
        folded, index = fold(text, lowered, others)
        out: list[tuple[int, int, str]] = []
        n = len(text)
        last = len(folded) - 1
        for first, pattern, kinds, only in self.groups:
            head, tail = _is_word(first[0]), only is not None and _is_word(only[-1])
            pos = folded.find(first)
            while pos != -1:
                kind = None
                if head and pos and _is_word(folded[pos - 1]):
                    pass  # not a whole word: no key of the group matches here
                elif only is not None and folded.startswith(only, pos):
                    # the key as written (one space between words): the pattern would match
                    # exactly this, if no word character follows
                    b = pos + len(only)
                    if not (tail and b <= last and _is_word(folded[b])):
                        kind = kinds[1]
                else:
                    m = pattern.match(folded, pos)
                    if m:
                        b, kind = m.end(), kinds[m.lastindex or 0]
                if kind is not None:
                    a, b = (pos, b) if index is None else (index[pos], index[b - 1] + 1)
                    # a decomposed accent belongs to the matched letter (every combining mark
                    # is U+0300 or above: the comparison spares most lookups)
                    while b < n and text[b] >= "\u0300" and unicodedata.combining(text[b]):
                        b += 1
                    out.append((a, b, kind))
                pos = folded.find(first, pos + 1)
        return out


@lru_cache(maxsize=256)
def matcher(entities: tuple[tuple[str, str], ...]) -> EntityMatcher:
    """Compiled matchers are cached: clients resend the same entity lists call after call."""
    return EntityMatcher(entities)
