"""With API tokens on, a client's spark-control token stops at the front: the /v1 proxy does not
pass it to the model server (an external SPARK_UPSTREAMS server here, which records what it got).
Without tokens, a client's Authorization (a model server's own --api-key) still passes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.access.tokens import ApiToken
from app.config import HostConfig
from tests import stack

APP = "app-token-0123456789abcdefg"
MODEL = "outside-model"


class Upstream:
    """A minimal OpenAI-compatible server that records each request's Authorization."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {k.lower(): v for k, _, v in (h.partition(": ") for h in lines[1:] if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        path = lines[0].split(" ")[1]
        if path == "/v1/models":
            out: Any = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
        else:
            self.seen.append(headers.get("authorization"))
            req = json.loads(body)
            out = {"id": "c1", "object": "chat.completion", "model": req["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "hi"}}]}  # fmt: skip
        data = json.dumps(out).encode()
        head_out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        writer.write(head_out + b"Content-Length: %d\r\n\r\n" % len(data) + data)
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("tokens_on", [True, False])
async def test_the_proxy_keeps_our_tokens_to_itself(
    tmp_path: Path, nats_server: Any, unique: str, tokens_on: bool
) -> None:
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    host = HostConfig(alias=f"gpu-{unique}", address="localhost", transport="local")
    extra: dict[str, Any] = {"upstreams": [f"http://127.0.0.1:{port}"], "upstream_poll_s": 0.5}
    if tokens_on:
        extra["api_tokens"] = [ApiToken(name="app", scopes=["inference"], token=APP)]
    settings = stack.make_settings(tmp_path / "data", nats_server.url, [host], **extra)
    key = APP if tokens_on else "the-model-servers-own-key"
    async with server, stack.web(settings) as base:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)

        async def listed() -> bool:
            return MODEL in [m.id async for m in client.models.list()]

        await stack.wait_for(listed, timeout=20)
        answer = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}]
        )
        assert answer.choices[0].message.content == "hi"
        if tokens_on:
            assert up.seen == [None]  # our token never left the front
            r = await httpx.AsyncClient().post(f"{base}/v1/chat/completions", json={})
            assert r.status_code == 401
        else:
            assert up.seen == [f"Bearer {key}"]
