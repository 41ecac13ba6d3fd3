"""Redacted chat through the /v1 proxy's seams: the request's messages are scrubbed before it
is forwarded (any failure refuses it: never forwarded raw), the answer is rehydrated on the
way back — streamed answers event by event, holding back only a possibly split token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from app.redaction.errors import BadRedactionRequest
from app.redaction.rehydrate import rehydrate_chat_response
from app.redaction.schema import Policy
from app.redaction.service import Redactor
from app.redaction.stream import SseRehydrator


class ChatRedaction:
    """The two transforms of one request; ``handle`` is its map once the body is scrubbed."""

    def __init__(self, redactor: Redactor, policy: Policy) -> None:
        self.redactor = redactor
        self.policy = policy
        self.handle: str | None = None
        self.stream = False
        self.values: Mapping[str, str] = {}

    async def body(self, raw: bytes) -> bytes:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise BadRedactionRequest("body: expected a JSON object") from exc
        if not isinstance(body, dict):
            raise BadRedactionRequest("body: expected a JSON object")
        self.stream = bool(body.get("stream"))
        scrubbed, self.handle = await self.redactor.scrub_messages(body, self.policy)
        self.values = await self.redactor.values(self.handle)
        return json.dumps(scrubbed, ensure_ascii=False).encode()

    def chunks(self, upstream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return self._sse(upstream) if self.stream else self._whole(upstream)

    async def _sse(self, upstream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        rh = SseRehydrator(self.values)
        async for chunk in upstream:
            out = rh.feed(chunk)
            if out:
                yield out
        tail = rh.close()
        if tail:
            yield tail

    async def _whole(self, upstream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        raw = b"".join([chunk async for chunk in upstream])
        try:
            body: Any = json.loads(raw)
        except ValueError:
            yield raw
            return
        yield json.dumps(rehydrate_chat_response(body, self.values), ensure_ascii=False).encode()
