"""The /v1 proxy against real parts: the official ``openai`` client → the web front (uvicorn) →
stub OpenAI-compatible upstreams (real processes), with model placement in a real NATS KV
bucket. Streaming without buffering, disconnect → upstream cancelled, 404 / 502 / 413 / 503,
``/v1/models`` aggregation, SPARK_UPSTREAMS routing, aliases, speech and embeddings."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app import catalog, services
from app import contracts as c
from app.bus import connect
from app.config import HostConfig, Settings
from tests import stack
from tests.servers import free_port
from tests.upstreams import StubUpstream, place, write_catalog, write_services

HOST = "gpu1"
REPLY = "one two three four five six"


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty catalog and services file the tests fill in."""
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV, *services.BUNDLED_ENV,
                 *services.OVERRIDES_ENV, *services.DISABLED_ENV):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    write_catalog(tmp_path / "models.yaml", {})
    write_services(tmp_path / "services.yaml", {})
    monkeypatch.setenv("MODELS_YAML", str(tmp_path / "models.yaml"))
    monkeypatch.setenv("MODELS_OVERRIDES", str(tmp_path / "models.overrides.yaml"))
    monkeypatch.setenv("SERVICES_YAML", str(tmp_path / "services.yaml"))
    monkeypatch.setenv("SERVICES_OVERRIDES", str(tmp_path / "services.overrides.yaml"))
    return tmp_path


@pytest.fixture
def stubs() -> Iterator[list[StubUpstream]]:
    started: list[StubUpstream] = []
    yield started
    for stub in started:
        stub.close()


def stub(started: list[StubUpstream], model: str, *args: str, **kw: Any) -> StubUpstream:
    s = StubUpstream(model, "--reply", REPLY, *args, **kw).start()
    started.append(s)
    return s


def settings_for(tmp: Path, nats_url: str, **kw: Any) -> Settings:
    host = HostConfig(alias=HOST, address="127.0.0.1", transport="local")
    return stack.make_settings(tmp / "data", nats_url, [host], **kw)


@pytest.fixture
async def front(files: Path, nats_server: Any) -> AsyncIterator[Any]:
    """``await front(**settings)`` → (base URL, bus); everything closed at the end."""
    opened: list[Any] = []

    async def open_front(**kw: Any) -> tuple[str, Any]:
        settings = settings_for(files, nats_server.url, **kw)
        bus = await connect(settings, name="test-proxy")
        web = stack.web(settings)
        base = await web.__aenter__()
        opened.append((web, bus))
        return base, bus

    yield open_front
    for web, bus in reversed(opened):
        await web.__aexit__(None, None, None)
        await bus.close()


async def routed(base: str, name: str) -> None:
    """Wait until the front routes ``name`` (the KV watch is asynchronous)."""

    async def check() -> bool:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{base}/v1/models")
        return any(m["id"] == name and m["state"] == "loaded" for m in r.json()["data"])

    await stack.wait_for(check, timeout=10)


async def test_openai_clients_sync_and_async_streaming_and_not(
    front: Any, stubs: list[StubUpstream], files: Path
) -> None:
    up = stub(stubs, "org/Model-A", served=["a"])
    write_catalog(files / "models.yaml", {"a": {"repo": "org/Model-A", "aliases": ["alpha"]}})
    base, bus = await front()
    await place(bus, HOST, "a", up.port, served_name="a", aliases=["alpha"])
    await routed(base, "alpha")
    messages: Any = [{"role": "user", "content": "hi"}]

    def sync_calls() -> list[str]:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        out = [client.chat.completions.create(model="a", messages=messages).choices[0]
               .message.content or ""]  # fmt: skip
        chunks = client.chat.completions.create(model="alpha", messages=messages, stream=True)
        out.append("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices))
        out.append(client.completions.create(model="a", prompt="hi").choices[0].text)
        return out

    assert await asyncio.to_thread(sync_calls) == [REPLY, REPLY, REPLY]

    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    got = await client.chat.completions.create(model="alpha", messages=messages)
    assert got.choices[0].message.content == REPLY and got.usage is not None
    stream = await client.completions.create(model="a", prompt="hi", stream=True)
    assert "".join([ch.choices[0].text async for ch in stream]) == REPLY
    stream2 = await client.chat.completions.create(
        model="a", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    usage = [ch.usage async for ch in stream2 if ch.usage]
    assert usage and usage[0].completion_tokens == 6
    await client.close()

    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{base}/api/proxy/stats")).json()["models"]
    assert stats["a"]["requests"] == 4 and stats["alpha"]["requests"] == 2
    assert stats["a"]["errors"] == 0 and stats["a"]["completion_tokens"] >= 6
    assert stats["a"]["ttfb_ms_p50"] is not None


async def test_stream_is_forwarded_as_it_arrives(front: Any, stubs: list[StubUpstream]) -> None:
    """A slow upstream (0.3 s between tokens): each chunk reaches the client when the upstream
    sends it, not when the response ends."""
    up = stub(stubs, "slow", "--token-delay", "0.3")
    base, bus = await front()
    await place(bus, HOST, "slow", up.port)
    await routed(base, "slow")
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    arrivals: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        t0 = time.perf_counter()
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.perf_counter() - t0)
    total = arrivals[-1]
    assert total >= 6 * 0.3 - 0.05  # the upstream's own pace
    assert arrivals[0] < 0.25, arrivals  # the role chunk: sent before the first token delay
    # each token arrives about one delay after the previous one, not all at the end
    tokens = arrivals[1:7]
    gaps = [b - a for a, b in itertools.pairwise(tokens)]
    assert all(0.15 < g < 0.6 for g in gaps), gaps
    assert tokens[0] < total - 1.2


async def test_client_disconnect_cancels_upstream(front: Any, stubs: list[StubUpstream]) -> None:
    up = stub(stubs, "long", "--token-delay", "0.2", "--reply", " ".join(["w"] * 100))
    base, bus = await front()
    await place(bus, HOST, "long", up.port)
    await routed(base, "long")
    body = {"model": "long", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
            seen = 0
            async for line in r.aiter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    break
            assert up.running() == 1
    # the stream would run 20 s more; the upstream stops within a couple of token delays
    t0 = time.monotonic()
    await stack.wait_for(lambda: up.running() == 0, timeout=5, every=0.1)
    assert time.monotonic() - t0 < 3


async def test_unknown_model_404_lists_available(
    front: Any, stubs: list[StubUpstream], files: Path
) -> None:
    up = stub(stubs, "a")
    write_catalog(files / "models.yaml", {
        "a": {"repo": "org/a"}, "b": {"repo": "org/b", "on_demand": True},
        "c": {"repo": "org/c"},
    })  # fmt: skip
    base, bus = await front()
    await place(bus, HOST, "a", up.port)
    await routed(base, "a")
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="nope", messages=[])
    body = info.value.response.json()
    assert body["code"] == "UNKNOWN_MODEL"
    assert "available: a, b" in body["error"]
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="c", messages=[])
    assert info.value.response.json()["code"] == "MODEL_NOT_LOADED"
    await client.close()


async def test_upstream_down_is_502(front: Any) -> None:
    base, bus = await front()
    await place(bus, HOST, "gone", free_port())
    await routed(base, "gone")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(f"{base}/v1/chat/completions",
                              json={"model": "gone", "messages": []})  # fmt: skip
    assert r.status_code == 502
    assert r.json()["code"] == "UPSTREAM_UNREACHABLE"
    assert set(r.json()) == {"error", "code"}


async def test_models_aggregated_and_spark_upstreams_routing(
    front: Any, stubs: list[StubUpstream], files: Path
) -> None:
    local = stub(stubs, "org/A", served=["a"])
    external = stub(stubs, "ext/Model", served=["ext-1", "ext-2"])
    write_catalog(files / "models.yaml", {
        "a": {"repo": "org/A"}, "b": {"repo": "org/B", "on_demand": True, "aliases": ["bee"]},
        "c": {"repo": "org/C"},
    })  # fmt: skip
    write_services(files / "services.yaml", {
        "speech": {"image": "x/y", "port": local.port, "kind": "stt", "host": HOST},
    })  # fmt: skip
    base, bus = await front(upstreams=[external.url])
    await place(bus, HOST, "a", local.port)
    await routed(base, "a")
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    listed = {m.id: m.model_dump() for m in (await client.models.list()).data}
    assert listed["a"]["state"] == "loaded" and listed["a"]["host"] == HOST
    assert listed["b"]["state"] == "loadable" and listed["b"]["aliases"] == ["bee"]
    assert listed["c"]["state"] == "stopped"
    assert listed["ext-1"]["state"] == listed["ext-2"]["state"] == "loaded"
    assert listed["ext-1"]["source"] == "upstream"
    assert listed["speech"]["state"] == "service"
    for model in ("ext-1", "ext-2"):
        got = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        assert got.model == model and got.choices[0].message.content == REPLY
    await client.close()


async def test_embeddings_rerank_and_speech(
    front: Any, stubs: list[StubUpstream], files: Path
) -> None:
    emb_svc, tts_svc = stub(stubs, "bge"), stub(stubs, "tts", "--token-delay", "0.05")
    write_services(files / "services.yaml", {  # one port per service (a clash is refused)
        "bge": {"image": "x/y", "port": emb_svc.port, "kind": "embeddings", "host": HOST},
        "kokoro": {"image": "x/y", "port": tts_svc.port, "kind": "tts", "host": HOST},
    })  # fmt: skip
    base, _ = await front()
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    emb = await client.embeddings.create(model="bge-m3", input=["a", "bb"])
    assert [len(d.embedding) for d in emb.data] == [4, 4]
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{base}/v1/rerank", json={
            "query": "red apple", "documents": ["blue sky", "red apple pie"], "top_n": 1,
        })  # fmt: skip
    assert r.json() == {"results": [{"index": 1, "relevance_score": 1.0}]}
    async with client.audio.speech.with_streaming_response.create(
        model="kokoro", voice="af", input="hello"
    ) as resp:
        audio = b"".join([chunk async for chunk in resp.iter_bytes()])
    assert len(audio) == 8 * 4096 and audio[-1] == 7
    await client.close()


async def test_transcription_streamed_through_and_413(
    front: Any, stubs: list[StubUpstream], files: Path
) -> None:
    svc = stub(stubs, "aux")
    write_services(files / "services.yaml", {
        "parakeet": {"image": "x/y", "port": svc.port, "kind": "stt", "host": HOST},
    })  # fmt: skip
    base, _ = await front(proxy_upload_max_bytes=1_000_000)
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    audio = bytes(range(256)) * 2000  # 512 000 bytes: over the global 1 MB? no; over 413? no
    got = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio))
    assert got.text.startswith("received ")
    assert int(got.text.split()[1]) > len(audio)  # the whole multipart body arrived

    big = bytes(1_200_000)
    with pytest.raises(openai.APIStatusError) as info:  # Content-Length over the limit
        await client.audio.transcriptions.create(model="whisper-1", file=("b.wav", big))
    assert info.value.status_code == 413
    await client.close()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(20):
            yield bytes(100_000)

    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{base}/v1/audio/transcriptions",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
    assert r.status_code == 413 and r.json()["code"] == "BODY_TOO_LARGE"


async def test_speech_upstream_500_is_503_with_retry_after_and_a_probe(
    front: Any, stubs: list[StubUpstream], files: Path
) -> None:
    svc = stub(stubs, "aux", "--fail-mode", "wedge")
    write_services(files / "services.yaml", {
        "kokoro": {"image": "x/y", "port": svc.port, "kind": "tts", "host": HOST},
    })  # fmt: skip
    base, bus = await front()
    deep = await bus.nc.subscribe(c.cmd_health_deep("kokoro"))  # the health leader's subject
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{base}/v1/audio/speech", json={"model": "kokoro", "input": "hi", "voice": "af"}
        )
    assert r.status_code == 503 and r.headers["retry-after"] == "60"
    await deep.next_msg(timeout=10)  # a deep probe was asked for at once
    assert r.json()["code"] == "UPSTREAM_FAILING"

    async def probe_job() -> bool:
        return any(
            j.action == "service"
            and j.args.get("op") == "status"
            and j.args.get("name") == "kokoro"
            for j in await bus.list_jobs()
        )

    await stack.wait_for(probe_job, timeout=10)


async def test_transcribe_with_speakers(
    front: Any, stubs: list[StubUpstream], files: Path
) -> None:
    svc = stub(stubs, "aux")
    write_services(files / "services.yaml", {
        "parakeet": {"image": "x/y", "port": svc.port, "kind": "stt", "host": HOST},
    })  # fmt: skip
    base, _ = await front(proxy_diarization_url=f"{svc.url}/v1/audio/diarization")
    audio = bytes(range(256)) * 4000  # 1 MB
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{base}/api/audio/transcribe-with-speakers",
                            files={"file": ("talk.wav", audio, "audio/wav")},
                            data={"model": "parakeet"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json() == {
            "duration": 9.0, "language": "en", "speakers_detected": 2,
            "segments": [
                {"start_ms": 0, "end_ms": 2000, "speaker": "SPEAKER_00",
                 "text": "hello there how are you"},
                {"start_ms": 4000, "end_ms": 5000, "speaker": "SPEAKER_01",
                 "text": "fine thanks"},
                {"start_ms": 7000, "end_ms": 8000, "speaker": "SPEAKER_01", "text": "and you"},
            ],
        }  # fmt: skip
    base2, _ = await front()  # no diarization server configured
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{base2}/api/audio/transcribe-with-speakers",
                            files={"file": ("talk.wav", b"x" * 10, "audio/wav")})  # fmt: skip
    assert r.status_code == 503 and r.json()["code"] == "DIARIZATION_UNAVAILABLE"
    assert "retry-after" in r.headers


async def test_no_model_field_goes_to_the_only_model_served(
    front: Any, stubs: list[StubUpstream]
) -> None:
    up = stub(stubs, "only")
    base, bus = await front()
    await place(bus, HOST, "only", up.port)
    await routed(base, "only")
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{base}/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == REPLY


async def test_figures_are_published_on_the_bus(nats_server: Any, tmp_path: Path) -> None:
    from app import contracts as c
    from app.proxy.metrics import Metrics

    settings = settings_for(tmp_path, nats_server.url)
    bus = await connect(settings, name="test-metrics")
    sub = await bus.nc.subscribe(c.evt_proxy("stats"))
    metrics = Metrics(publish_every_s=0.1)
    metrics.started("m")
    metrics.finished("m", ok=True, ttfb_s=0.002, total_s=1.0, tokens=40)
    metrics.start(bus)
    try:
        msg = await sub.next_msg(timeout=5)
    finally:
        await metrics.stop()
        await bus.close()
    event = c.decode_event(msg.data)
    assert event.kind == "stats"
    assert event.data["m"]["requests"] == 1 and event.data["m"]["tokens_per_s"] == 40.0
    assert event.data["m"]["ttfb_ms_p50"] == 2.0
