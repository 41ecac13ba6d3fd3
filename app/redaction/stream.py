"""Streaming rehydration with bounded look-ahead.

``TextRehydrator`` holds back only a tail that may still become a token (``[PER``…, at most
``MAX_TOKEN_LEN`` characters); everything before it is rehydrated and released at once.
``SseRehydrator`` applies that to an OpenAI chat / completions SSE stream, byte chunks in,
byte chunks out: each event is forwarded as soon as it is complete, its
``choices[].delta.content`` (``choices[].text``, tool-call arguments) rehydrated; what is held
is released in the choice's finishing chunk, before ``[DONE]``, or at the end of the stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from app.redaction.rehydrate import rehydrate_text
from app.redaction.tokens import MAX_TOKEN_LEN, PARTIAL_RE


class TextRehydrator:
    def __init__(self, values: Mapping[str, str], *, json_escape: bool = False) -> None:
        self.values = values
        self.json_escape = json_escape
        self.pending = ""

    def feed(self, text: str) -> str:
        buf = self.pending + text if self.pending else text
        cut = buf.rfind("[")
        if cut != -1 and len(buf) - cut < MAX_TOKEN_LEN and PARTIAL_RE.match(buf, cut):
            ready, self.pending = buf[:cut], buf[cut:]
        else:
            ready, self.pending = buf, ""
        return rehydrate_text(ready, self.values, json_escape=self.json_escape)[0]

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out  # a held tail is never a complete token


_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")


def _next_event(buf: bytes) -> int:
    """End (exclusive) of the first complete event in ``buf``, or -1."""
    ends = [i + len(sep) for sep in _SEPARATORS if (i := buf.find(sep)) != -1]
    return min(ends) if ends else -1


def _data_of(event: bytes) -> bytes | None:
    """The joined ``data:`` field of an event, None when it has none."""
    lines = [ln for ln in event.splitlines() if ln.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(ln[6:] if ln.startswith(b"data: ") else ln[5:] for ln in lines)


class SseRehydrator:
    """Feed upstream bytes as they come; forward what ``feed`` returns at once."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values
        self.buf = b""
        self.texts: dict[tuple[int, str, int], TextRehydrator] = {}
        self.template: dict[str, Any] = {}

    def _text(self, key: tuple[int, str, int]) -> TextRehydrator:
        rh = self.texts.get(key)
        if rh is None:
            rh = self.texts[key] = TextRehydrator(self.values, json_escape=key[1] == "tool")
        return rh

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out: list[bytes] = []
        while (end := _next_event(self.buf)) != -1:
            event, self.buf = self.buf[:end], self.buf[end:]
            out.append(self._event(event))
        return b"".join(out)

    def close(self) -> bytes:
        """End of the upstream stream: release anything held, then any unterminated rest."""
        rest, self.buf = self.buf, b""
        if rest.strip():
            return self.feed(rest + b"\n\n") + self._flush_all()
        return self._flush_all()

    def _event(self, event: bytes) -> bytes:
        data = _data_of(event)
        if data is None:
            return event
        if data.strip() == b"[DONE]":
            return self._flush_all() + event
        try:
            obj = json.loads(data)
        except ValueError:
            return event
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return event
        self.template = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        if not self._chunk(obj):
            return event
        # the event's other fields (id:, event:, comments) are kept, the data line replaced
        kept = [ln + b"\n" for ln in event.splitlines() if ln and not ln.startswith(b"data:")]
        data_line = b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
        return b"".join(kept) + data_line

    def _chunk(self, obj: dict[str, Any]) -> bool:
        """Rehydrate one chunk in place; False when nothing in it changed."""
        changed = False
        for choice in obj["choices"]:
            if not isinstance(choice, dict):
                continue
            idx = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
            finishing = choice.get("finish_reason") is not None
            if isinstance(choice.get("text"), str):
                changed |= self._field(choice, "text", (idx, "text", 0), finishing)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content_key = (idx, "content", 0)
            if isinstance(delta.get("content"), str) or (finishing and content_key in self.texts):
                changed |= self._field(delta, "content", content_key, finishing)
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    key = (idx, "tool", int(call.get("index", 0) or 0))
                    changed |= self._field(fn, "arguments", key, finishing)
        return changed

    def _field(
        self, holder: dict[str, Any], name: str, key: tuple[int, str, int], end: bool
    ) -> bool:
        before = holder.get(name) or ""
        rh = self._text(key)
        after = rh.feed(before)
        if end:
            after += rh.flush()
        if after == before:
            return False
        holder[name] = after
        return True

    def _flush_all(self) -> bytes:
        """A chunk of its own per choice with held text (the upstream sent no finish)."""
        out: list[bytes] = []
        for (idx, field, n), rh in self.texts.items():
            held = rh.flush()
            if not held:
                continue
            if field == "text":
                choice: dict[str, Any] = {"index": idx, "text": held, "finish_reason": None}
            elif field == "tool":
                call = {"index": n, "function": {"arguments": held}}
                choice = {"index": idx, "delta": {"tool_calls": [call]}, "finish_reason": None}
            else:
                choice = {"index": idx, "delta": {"content": held}, "finish_reason": None}
            chunk = {**self.template, "choices": [choice]}
            out.append(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")
        return b"".join(out)
