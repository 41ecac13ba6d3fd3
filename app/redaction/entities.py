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

_NON_ASCII = re.compile(r"[^\x00-\x7f]")


class EntityMatch(NamedTuple):
    start: int
    end: int
    kind: str


@lru_cache(maxsize=8192)
def fold_char(ch: str) -> str:
    decomposed = unicodedata.normalize("NFKD", ch)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def fold(text: str) -> tuple[str, list[int] | None]:
    """The folded text and, when folding changed its length, each folded char's source index
    (None: positions are the same in both)."""
    if text.isascii():
        return text.lower(), None
    same_length = True

    def one(m: re.Match[str]) -> str:
        nonlocal same_length
        f = fold_char(m.group())
        if len(f) != 1:
            same_length = False
        return f

    folded = _NON_ASCII.sub(one, text).lower()
    if same_length:
        return folded, None
    parts: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        f = ch.lower() if ch.isascii() else fold_char(ch)
        parts.append(f)
        index.extend([i] * len(f))
    return "".join(parts), index


def fold_key(value: str) -> str:
    return " ".join(fold(value)[0].split())


def _pattern(folded: str) -> str:
    body = r"\s+".join(re.escape(part) for part in folded.split())
    head = r"(?<!\w)" if folded[0].isalnum() or folded[0] == "_" else ""
    tail = r"(?!\w)" if folded[-1].isalnum() or folded[-1] == "_" else ""
    return head + body + tail


class EntityMatcher:
    """One compiled alternation over every known entity (longest first)."""

    def __init__(self, entities: tuple[tuple[str, str], ...]) -> None:
        by_key: dict[str, str] = {}
        for kind, value in entities:
            key = fold_key(value)
            if key:
                by_key.setdefault(key, kind)
        self.kinds: list[str] = []
        alternatives: list[str] = []
        for key in sorted(by_key, key=len, reverse=True):
            self.kinds.append(by_key[key])
            alternatives.append(f"({_pattern(key)})")
        self.regex = re.compile("|".join(alternatives)) if alternatives else None

    def find(self, text: str) -> list[EntityMatch]:
        if self.regex is None:
            return []
        folded, index = fold(text)
        out: list[EntityMatch] = []
        for m in self.regex.finditer(folded):
            a, b = m.span()
            if index is not None:
                a, b = index[a], index[b - 1] + 1
            while b < len(text) and unicodedata.combining(text[b]):
                b += 1  # a decomposed accent belongs to the matched letter
            out.append(EntityMatch(a, b, self.kinds[(m.lastindex or 1) - 1]))
        return out


@lru_cache(maxsize=256)
def matcher(entities: tuple[tuple[str, str], ...]) -> EntityMatcher:
    """Compiled matchers are cached: clients resend the same entity lists call after call."""
    return EntityMatcher(entities)
