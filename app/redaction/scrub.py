"""Scrubbing as pure functions: detect spans, then render the text with each tier-2 span's
token and each tier-1 span dropped. Token assignment (the map) is passed in, so this runs
the same against SQLite, in memory (benchmarks) or in tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from app.redaction.detectors import Span, detect
from app.redaction.entities import matcher
from app.redaction.errors import Tier1Detected
from app.redaction.schema import Policy
from app.redaction.tokens import DROPPED

Assign = Callable[[Iterable[tuple[str, str]]], Mapping[tuple[str, str], str]]
"""(type, value) pairs → their tokens (existing or new) in one map."""


class Planned(NamedTuple):
    text: str
    spans: list[Span]


class Scrubbed(NamedTuple):
    text: str
    tokens_used: list[str]
    tier1_dropped: int
    tier2_tokenized: int


def plan(
    texts: list[str], policy: Policy, extra: tuple[tuple[str, str], ...] = ()
) -> list[Planned]:
    """Spans of every text. ``extra``: names the NER model found (type, value)."""
    entities = matcher(policy.known_entities.pairs() + extra)
    b = policy.bucket
    return [Planned(t, detect(t, entities, amounts=b.amounts, dates=b.dates)) for t in texts]


def refuse_tier1(planned: list[Planned]) -> None:
    """``tier1_action: reject``: raise naming only the kinds found."""
    kinds = [s.kind for p in planned for s in p.spans if s.tier == 1]
    if kinds:
        raise Tier1Detected(kinds)


def tier2_values(planned: list[Planned]) -> list[tuple[str, str]]:
    return [
        (kind, text[start:end])
        for text, spans in planned
        for start, end, tier, kind in spans
        if tier == 2
    ]


def render(p: Planned, tokens: Mapping[tuple[str, str], str]) -> Scrubbed:
    parts: list[str] = []
    used: dict[str, None] = {}
    pos = dropped = tokenized = 0
    text = p.text
    for start, end, tier, kind in p.spans:
        if tier == 0:
            continue
        parts.append(text[pos:start])
        if tier == 1:
            parts.append(DROPPED)
            dropped += 1
        else:
            token = tokens[(kind, text[start:end])]
            parts.append(token)
            used[token] = None
            tokenized += 1
        pos = end
    parts.append(text[pos:])
    return Scrubbed("".join(parts), list(used), dropped, tokenized)


def scrub_texts(
    texts: list[str], policy: Policy, assign: Assign, extra: tuple[tuple[str, str], ...] = ()
) -> list[Scrubbed]:
    """Plan, refuse or drop tier 1, assign tokens, render. Nothing is assigned when refused."""
    planned = plan(texts, policy, extra)
    if policy.tier1_action == "reject":
        refuse_tier1(planned)
    tokens = assign(tier2_values(planned))
    return [render(p, tokens) for p in planned]


def placeholder_text(p: Planned) -> str:
    """The text with every span replaced by its kind alone: what the NER model is shown, so
    no value found by the rules reaches it."""
    parts: list[str] = []
    pos = 0
    for s in p.spans:
        if s.tier == 0:
            continue
        parts.append(p.text[pos : s.start])
        parts.append(DROPPED if s.tier == 1 else f"[{s.kind}]")
        pos = s.end
    parts.append(p.text[pos:])
    return "".join(parts)


class MemoryMap:
    """An in-memory token map (benchmarks, tests): the same numbering as the SQLite map."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, str], str] = {}
        self.counts: dict[str, int] = {}

    def assign(self, found: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        for pair in found:
            if pair not in self.tokens:
                n = self.counts[pair[0]] = self.counts.get(pair[0], 0) + 1
                self.tokens[pair] = f"[{pair[0]}_{n}]"
        return self.tokens

    @property
    def values(self) -> dict[str, str]:
        return {token: value for (_, value), token in self.tokens.items()}
