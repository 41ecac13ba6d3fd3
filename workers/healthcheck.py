"""HTTP checks of one endpoint: the light check of every poll and the deep probe of the schedule.

Light: vLLM ``/health``, a service's declared health path; 2xx is up, no answer is down.
Deep (a synthetic request through the real code path): vLLM ``/v1/models`` then a 1-token
completion ("no model loaded" is idle, not a failure); speech to text a second of silence;
text to speech one word; embeddings one short input; anything else its health path. An HTTP 500
or a wedge pattern in the answer (``cudaErrorUnknown``, ``CUBLAS_STATUS_``, …) is ``wedged``: the
health loop may restart the container. Nothing here writes state or events.
"""

from __future__ import annotations

import io
import re
import time
import wave
from dataclasses import dataclass

import httpx

from app import contracts as c
from workers.lifecycle import WEDGE_PATTERNS

HTTP_ERRORS = (httpx.HTTPError, ValueError)
_RUNNING = re.compile(r"^vllm:num_requests_running(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.M)


@dataclass(frozen=True)
class Target:
    """What the loop checks: an endpoint's base URL and how to talk to it."""

    name: str
    kind: str  # llm | stt | tts | embeddings | vectordb | other
    host: str
    base_url: str | None
    health_path: str = "/health"
    served: str | None = None
    """The served model name (vLLM); None: nothing is recorded as running there."""


def silence_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV of silence (the speech probe's upload)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return buf.getvalue()


def wedged_text(text: str) -> bool:
    return any(p in text for p in WEDGE_PATTERNS)


def _result(state: str, check: str, t0: float, status: int | None = None,
            error: str | None = None) -> c.DeepProbe:  # fmt: skip
    ms = round((time.monotonic() - t0) * 1000, 1)
    return c.DeepProbe(state=state, at=c.now(), ms=ms, check=check, status_code=status,
                       error=error[:300] if error else None)  # fmt: skip


def _judge(r: httpx.Response, check: str, t0: float) -> c.DeepProbe:
    """2xx ok; 500 or a wedge pattern in the body wedged; anything else failed."""
    if 200 <= r.status_code < 300:
        return _result("ok", check, t0, r.status_code)
    body = r.text[:4000]
    found = next((p for p in WEDGE_PATTERNS if p in body), None)
    if r.status_code == 500 or found:
        return _result("wedged", check, t0, r.status_code, found or "HTTP 500")
    return _result("failed", check, t0, r.status_code, f"HTTP {r.status_code}")


async def light(client: httpx.AsyncClient, t: Target) -> c.DeepProbe:
    """One GET of the health path: ok, failed (an HTTP error status) or down (no answer)."""
    t0 = time.monotonic()
    if t.base_url is None:
        return _result("idle", "none", t0)
    try:
        r = await client.get(f"{t.base_url}{t.health_path}")
    except HTTP_ERRORS as exc:
        return _result("down" if t.served or t.kind != "llm" else "idle", "health", t0,
                       error=type(exc).__name__)  # fmt: skip
    if t.kind == "llm" and t.served is None:
        return _result("idle", "health", t0, r.status_code)
    return _judge(r, "health", t0)


async def requests_running(client: httpx.AsyncClient, t: Target) -> float:
    """vLLM's ``vllm:num_requests_running`` (0 when unknown): a vLLM serving is busy."""
    if t.kind != "llm" or t.base_url is None:
        return 0.0
    try:
        r = await client.get(f"{t.base_url}/metrics")
    except HTTP_ERRORS:
        return 0.0
    return sum(float(m) for m in _RUNNING.findall(r.text)) if r.status_code == 200 else 0.0


async def deep(client: httpx.AsyncClient, t: Target) -> c.DeepProbe:
    """The synthetic request of the endpoint's kind."""
    t0 = time.monotonic()
    if t.base_url is None:
        return _result("idle", "none", t0)
    try:
        if t.kind == "llm":
            return await _deep_vllm(client, t, t0)
        if t.kind == "stt":
            files = {"file": ("silence.wav", silence_wav(), "audio/wav")}
            r = await client.post(f"{t.base_url}/v1/audio/transcriptions", files=files)
            return _judge(r, "transcription", t0)
        if t.kind == "tts":
            r = await client.post(f"{t.base_url}/v1/audio/speech",
                                  json={"input": "ok", "response_format": "wav"})  # fmt: skip
            return _judge(r, "speech", t0)
        if t.kind == "embeddings":
            r = await client.post(f"{t.base_url}/v1/embeddings", json={"input": "ping"})
            return _judge(r, "embedding", t0)
        return _judge(await client.get(f"{t.base_url}{t.health_path}"), "health", t0)
    except HTTP_ERRORS as exc:
        return _result("down", "connect", t0, error=type(exc).__name__)


async def _deep_vllm(client: httpx.AsyncClient, t: Target, t0: float) -> c.DeepProbe:
    try:
        r = await client.get(f"{t.base_url}/v1/models")
    except HTTP_ERRORS as exc:
        if t.served is None:
            return _result("idle", "models", t0, error=type(exc).__name__)
        return _result("down", "models", t0, error=type(exc).__name__)
    if r.status_code != 200:
        return _judge(r, "models", t0)
    try:
        data = r.json().get("data") or []
        ids = [m.get("id") for m in data if isinstance(m, dict)]
    except (ValueError, AttributeError):
        ids = []
    if not ids:
        return _result("idle", "models", t0, r.status_code, "no model loaded")
    model = t.served if t.served in ids else ids[0]
    r = await client.post(f"{t.base_url}/v1/completions",
                          json={"model": model, "prompt": "ping", "max_tokens": 1})  # fmt: skip
    return _judge(r, "completion", t0)
