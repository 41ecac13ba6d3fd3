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


_ASCII_RUNS = re.compile(r"[\x00-\x7f]+")


def fold(text: str) -> tuple[str, list[int] | None]:
    """The folded text and, when folding changed its length, each folded char's source index
    (None: positions are the same in both)."""
    low = text.lower()
    if low.isascii():
        return low, None
    if len(low) != len(text):  # a lower-casing that changes length (İ): char by char
        return _fold_each(text)
    # each distinct non-ASCII character whose fold keeps the length (é → e) is replaced in
    # one pass over the text; the others (ß → ss, a lone combining mark) are spliced in
    folds = {ch: fold_char(ch) for ch in set(_ASCII_RUNS.sub("", low))}
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


def _pattern(folded: str) -> str:
    body = r"\s+".join(re.escape(part) for part in folded.split())
    head = r"(?<!\w)" if folded[0].isalnum() or folded[0] == "_" else ""
    tail = r"(?!\w)" if folded[-1].isalnum() or folded[-1] == "_" else ""
    return head + body + tail


class EntityMatcher:
    """Known entities by the first word of their folded form: each is looked for with a plain
    substring search (fast), then confirmed by its own anchored pattern (whitespace runs,
    word boundaries). The longest candidate at a position wins."""

    def __init__(self, entities: tuple[tuple[str, str], ...]) -> None:
        by_key: dict[str, str] = {}
        for kind, value in entities:
            key = fold_key(value)
            if key:
                by_key.setdefault(key, kind)
        self.by_first: dict[str, list[tuple[re.Pattern[str], str]]] = {}
        for key in sorted(by_key, key=len, reverse=True):
            first = key.split(" ", 1)[0]
            self.by_first.setdefault(first, []).append((re.compile(_pattern(key)), by_key[key]))

    def find(self, text: str) -> list[EntityMatch]:
        if not self.by_first:
            return []
        folded, index = fold(text)
        out: list[EntityMatch] = []
        for first, candidates in self.by_first.items():
            pos = folded.find(first)
            while pos != -1:
                for pattern, kind in candidates:
                    m = pattern.match(folded, pos)
                    if m:
                        out.append(self._span(text, index, m.start(), m.end(), kind))
                        break
                pos = folded.find(first, pos + 1)
        return out

    @staticmethod
    def _span(text: str, index: list[int] | None, a: int, b: int, kind: str) -> EntityMatch:
        if index is not None:
            a, b = index[a], index[b - 1] + 1
        while b < len(text) and unicodedata.combining(text[b]):
            b += 1  # a decomposed accent belongs to the matched letter
        return EntityMatch(a, b, kind)


@lru_cache(maxsize=256)
def matcher(entities: tuple[tuple[str, str], ...]) -> EntityMatcher:
    """Compiled matchers are cached: clients resend the same entity lists call after call."""
    return EntityMatcher(entities)
