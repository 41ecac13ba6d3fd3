"""The ``[TYPE_N]`` token grammar, shared by scrub, rehydrate and the streaming rehydrator."""

from __future__ import annotations

import re

TOKEN_RE = re.compile(r"\[([A-Z][A-Z0-9]{0,19})_([1-9][0-9]{0,8})\]")
"""A complete token; anything else in brackets is plain text."""

PARTIAL_RE = re.compile(r"\[(?:[A-Z][A-Z0-9]{0,19}(?:_[0-9]{0,9})?)?\Z")
"""A text tail that may still become a token when more text arrives."""

MAX_TOKEN_LEN = 32
"""Longest token (``[`` + 20-char type + ``_`` + 9 digits + ``]``): the streaming hold-back."""

DROPPED = "[REDACTED]"
"""What a dropped tier-1 value becomes: names no kind and matches no token."""

LITERAL = "LITERAL"
"""Type of a token-shaped text already in the input: it is neutralised into a token of its
own, so a forged ``[PERSON_1]`` is only ever rehydrated as the literal text it was."""

TYPES = ("PERSON", "ORG", "FUND", "EMAIL", "LOCATION", "URL", "PHONE", "AMOUNT", "DATE",
         "ADDRESS", "NUMBER", LITERAL)  # fmt: skip


def make(kind: str, n: int) -> str:
    return f"[{kind}_{n}]"


def tokens_in(text: str) -> list[str]:
    return [m.group(0) for m in TOKEN_RE.finditer(text)]
