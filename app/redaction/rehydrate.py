"""Rehydration in one pass: each complete token is swapped for its value; values are never
scanned again, so a value that looks like a token stays text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from app.redaction.errors import UnknownTokens
from app.redaction.tokens import TOKEN_RE


def rehydrate_text(
    text: str, values: Mapping[str, str], *, strict: bool = False, json_escape: bool = False
) -> tuple[str, int, list[str]]:
    """(text, tokens restored, unknown tokens). ``strict``: UnknownTokens if any is unknown.
    ``json_escape``: values go inside a JSON string (tool-call arguments)."""
    if "[" not in text:
        return text, 0, []
    restored = 0
    unknown: list[str] = []

    def swap(m: Any) -> str:
        nonlocal restored
        token = m.group(0)
        value = values.get(token)
        if value is None:
            unknown.append(token)
            return str(token)
        restored += 1
        return json.dumps(value, ensure_ascii=False)[1:-1] if json_escape else value

    out = TOKEN_RE.sub(swap, text)
    if strict and unknown:
        raise UnknownTokens(unknown)
    return out, restored, unknown


def rehydrate_chat_response(body: Any, values: Mapping[str, str]) -> Any:
    """A non-streamed chat (or completions) answer with its texts rehydrated in place:
    ``choices[].message.content``, ``choices[].text`` and tool-call arguments."""
    if not isinstance(body, dict):
        return body
    for choice in body.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            choice["text"] = rehydrate_text(choice["text"], values)[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            message["content"] = rehydrate_text(message["content"], values)[0]
        for call in message.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                fn["arguments"] = rehydrate_text(fn["arguments"], values, json_escape=True)[0]
    return body
