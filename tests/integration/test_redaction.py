"""The redaction gateway through the real web front (uvicorn + real NATS): /scrub and
/rehydrate as the earlier gateway's clients call them, the encrypted map on disk, expiry,
clear errors, NER failing closed, and redacted chat through /v1 (streamed and not) against an
echoing upstream — with every log record and every event of the run checked for values."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from app import contracts as c
from app.config import HostConfig, Settings
from app.redaction.tokens import DROPPED
from tests import stack
from tests.redaction_corpus import KNOWN, corpus
from tests.redaction_echo import PREFIX, EchoUpstream
from tests.servers import free_port

DB = "maps.db"


@pytest.fixture
def echo() -> Iterator[EchoUpstream]:
    up = EchoUpstream(names=["Xavier Quill"]).start()
    yield up
    up.close()


def settings_for(tmp: Path, nats_url: str, **kw: Any) -> Settings:
    host = HostConfig(alias="gpu1", address="127.0.0.1", transport="local")
    kw.setdefault("redaction_map_db", str(tmp / "maps" / DB))
    kw.setdefault("redaction_key", "test-key-not-a-secret")
    return stack.make_settings(tmp / "data", nats_url, [host], **kw)


@contextlib.asynccontextmanager
async def front(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[httpx.AsyncClient, list[bytes]]]:
    """The web front, a client, and every event published on spark.evt.> meanwhile; every
    log record of the run (DEBUG up) lands in ``caplog``."""
    events: list[bytes] = []
    nc = await nats.connect(settings.nats_url)

    async def collect(msg: Any) -> None:
        events.append(msg.subject.encode() + b" " + msg.data)

    await nc.subscribe(c.EVT_WILDCARD, cb=collect)
    async with stack.web(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as cl:
        root = logging.getLogger()
        level = root.level
        root.addHandler(caplog.handler)
        root.setLevel(logging.DEBUG)
        try:
            yield cl, events
        finally:
            root.removeHandler(caplog.handler)
            root.setLevel(level)
            await nc.flush()
            await asyncio.sleep(0.1)
            await nc.close()


def values_of(docs: list[Any]) -> list[str]:
    vals = {v for d in docs for v in d.tier1 + d.tier2}
    vals |= {v for vs in KNOWN.values() for v in vs}
    return sorted(vals)


def assert_nowhere(
    values: list[str], caplog: pytest.LogCaptureFixture, events: list[bytes], *more: str | bytes
) -> None:
    logs = "\n".join(
        r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records
    )
    blobs = [logs.encode(), *events, *(m.encode() if isinstance(m, str) else m for m in more)]
    for value in values:
        for blob in blobs:
            assert value.encode() not in blob, f"a value leaked ({len(value)} chars)"
            assert json.dumps(value)[1:-1].encode() not in blob


def db_bytes(settings: Settings) -> bytes:
    folder = Path(settings.redaction_map_db or "").parent
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())


async def test_scrub_and_rehydrate_contract(
    tmp_path: Path, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, nats_server.url)
    docs = corpus(12, seed=21)
    async with front(settings, caplog) as (cl, events):
        body = {
            "task_id": "t-1",
            "actor": "tester",
            "known_entities": KNOWN,
            "tier1_action": "drop",
            "bucket": {"amounts": True, "dates": True},
            "ner": "rules_only",
            "items": [{"id": i, "text": d.text} for i, d in enumerate(docs)],
        }
        r = await cl.post("/scrub", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert set(out) == {"task_id", "map_handle", "items", "stats", "expires_at"}
        assert out["task_id"] == "t-1" and re.match(
            r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", out["expires_at"]
        )
        assert set(out["stats"]) == {"tier1_dropped", "tier2_tokenized", "distinct_entities"}
        assert out["stats"]["tier1_dropped"] >= 7 * len(docs)
        items = out["items"]
        assert [set(i) for i in items] == [{"id", "scrubbed_text", "tokens_used"}] * len(docs)
        handle = out["map_handle"]
        scrubbed_all = json.dumps(items, ensure_ascii=False)
        for value in values_of(docs):
            assert value not in scrubbed_all

        # the same values in a later call with the map_handle get the same tokens
        again = await cl.post(
            "/scrub", json={**body, "map_handle": handle, "items": body["items"][:1]}
        )
        assert again.json()["items"][0]["scrubbed_text"] == items[0]["scrubbed_text"]

        back = await cl.post(
            "/rehydrate",
            json={
                "task_id": "t-1",
                "map_handle": handle,
                "strict": True,
                "items": [{"id": i["id"], "scrubbed_text": i["scrubbed_text"]} for i in items],
            },
        )
        assert back.status_code == 200, back.text
        for doc, item in zip(docs, back.json()["items"], strict=True):
            restored = item["text"]
            assert restored.count(DROPPED) == out["items"][item["id"]]["scrubbed_text"].count(
                DROPPED
            )
            for value in doc.tier2:
                assert value in restored

        unknown = {
            "task_id": "t-1",
            "map_handle": handle,
            "items": [{"id": "x", "text": "[PERSON_999] and [PERSON_1]"}],
        }
        strict = await cl.post("/rehydrate", json={**unknown, "strict": True})
        assert strict.status_code == 422
        assert strict.json() == {
            "error": strict.json()["error"],
            "code": "unknown_tokens",
            "tokens": ["[PERSON_999]"],
        }
        lenient = await cl.post("/rehydrate", json=unknown)
        assert lenient.json()["items"][0]["text"].startswith("[PERSON_999] and ")

        missing = await cl.post("/rehydrate", json={**unknown, "map_handle": "rm_" + "x" * 24})
        assert missing.status_code == 404 and missing.json()["code"] == "map_not_found"
        bad = await cl.post("/scrub", json={"items": [{"id": 1}]})
        assert bad.status_code == 400 and bad.json()["code"] == "bad_request"

    kinds = [e.split(b" ", 1)[0] for e in events]
    assert b"spark.evt.redaction.scrub" in kinds and b"spark.evt.redaction.rehydrate" in kinds
    scrub_evt = json.loads(
        next(e for e in events if e.startswith(b"spark.evt.redaction.scrub")).split(b" ", 1)[1]
    )
    assert scrub_evt["data"]["tier1_dropped"] == out["stats"]["tier1_dropped"]
    assert_nowhere(values_of(docs), caplog, events, db_bytes(settings))


async def test_reject_names_kinds_only_and_writes_nothing(
    tmp_path: Path, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, nats_server.url)
    (doc,) = corpus(1, seed=4)
    async with front(settings, caplog) as (cl, events):
        r = await cl.post(
            "/scrub",
            json={"task_id": 9, "tier1_action": "reject", "items": [{"id": "a", "text": doc.text}]},
        )
        assert r.status_code == 422
        body = r.json()
        assert body["code"] == "tier1_detected"
        assert set(body) == {"error", "code", "kinds"}
        assert set(body["kinds"]) == {
            "iban",
            "card",
            "routing",
            "ssn",
            "passport",
            "account",
            "swift",
        }
    with sqlite3.connect(settings.redaction_map_db or "") as db:
        assert db.execute("SELECT COUNT(*) FROM maps").fetchone() == (0,)
    assert any(e.startswith(b"spark.evt.redaction.refused") for e in events)
    assert_nowhere(values_of([doc]), caplog, events, r.content)


async def test_expired_map(
    tmp_path: Path, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, nats_server.url, redaction_ttl_s=0.5)
    async with front(settings, caplog) as (cl, _):
        r = await cl.post("/scrub", json={"items": [{"id": 1, "text": "Mail ana@example.org"}]})
        handle = r.json()["map_handle"]
        rh = {"map_handle": handle, "items": [{"id": 1, "text": "[EMAIL_1]"}]}
        assert (await cl.post("/rehydrate", json=rh)).json()["items"][0][
            "text"
        ] == "ana@example.org"
        await asyncio.sleep(0.7)
        gone = await cl.post("/rehydrate", json=rh)
        assert gone.status_code == 404 and gone.json()["code"] == "map_not_found"
        reuse = await cl.post(
            "/scrub", json={"map_handle": handle, "items": [{"id": 1, "text": "x"}]}
        )
        assert reuse.status_code == 404


async def test_unwritable_map_path_is_a_clear_error(
    tmp_path: Path, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    path = tmp_path / "a-file" / "maps.db"
    settings = settings_for(tmp_path, nats_server.url, redaction_map_db=str(path))
    async with front(settings, caplog) as (cl, _):
        for _ in range(2):  # the app keeps serving; each call says why
            r = await cl.post("/scrub", json={"items": [{"id": 1, "text": "ana@example.org"}]})
            assert r.status_code == 503
            assert r.json()["code"] == "map_unavailable"
            assert str(path) in r.json()["error"] and "REDACTION_MAP_DB" in r.json()["error"]
            assert "ana@example.org" not in r.text
        assert (await cl.get("/v1/models")).status_code == 200


async def test_missing_map_folder_created_and_default_location(
    tmp_path: Path, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, nats_server.url, redaction_map_db=None, redaction_key=None)
    async with front(settings, caplog) as (cl, _):
        r = await cl.post("/scrub", json={"items": [{"id": 1, "text": "ana@example.org"}]})
        assert r.status_code == 200
    assert (tmp_path / "data" / "redaction_maps.db").is_file()
    assert (tmp_path / "data" / "redaction.key").stat().st_mode & 0o077 == 0


async def test_ner_unavailable_fails_closed(
    tmp_path: Path, nats_server: Any, echo: EchoUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = settings_for(
        tmp_path,
        nats_server.url,
        redaction_ner_url=dead,
        redaction_ner_model="echo",
        upstreams=[echo.url],
    )
    text = "Xavier Quill (ana@example.org) called."
    async with front(settings, caplog) as (cl, events):
        for mode in ("llm", "auto"):
            r = await cl.post("/scrub", json={"ner": mode, "items": [{"id": 1, "text": text}]})
            assert r.status_code == 422, r.text
            assert set(r.json()) == {"error", "code"} and r.json()["code"] == "ner_unavailable"
        ok = await cl.post("/scrub", json={"ner": "rules_only", "items": [{"id": 1, "text": text}]})
        assert ok.status_code == 200
        # redacted chat: refused, and the upstream never called
        chat = await cl.post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": text}]},
            headers={"X-Spark-Redaction": json.dumps({"ner": "llm"})},
        )
        assert chat.status_code == 422 and chat.json()["code"] == "ner_unavailable"
        assert echo.chat_requests() == []
    with sqlite3.connect(settings.redaction_map_db or "") as db:
        assert db.execute("SELECT COUNT(*) FROM maps").fetchone() == (1,)  # the rules_only one
    assert_nowhere(["Xavier Quill", "ana@example.org"], caplog, events)


async def test_ner_finds_unknown_names_without_seeing_values(
    tmp_path: Path, nats_server: Any, echo: EchoUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, nats_server.url, redaction_ner_url=echo.url + "/v1")
    text = "Jürgen Müller met Xavier Quill; IBAN DE89 3704 0044 0532 0130 00, on S3 and EKS."
    async with front(settings, caplog) as (cl, events):
        r = await cl.post(
            "/scrub",
            json={
                "ner": "llm",
                "known_entities": {"persons": ["Jürgen Müller"]},
                "items": [{"id": 1, "text": text}],
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["items"][0]["scrubbed_text"] == (
            "[PERSON_1] met [PERSON_2]; IBAN [REDACTED], on S3 and EKS."
        )
    (ner_request,) = echo.requests
    shown = ner_request["messages"][-1]["content"]
    assert "Müller" not in shown and "DE89" not in shown and "Xavier Quill" in shown
    assert_nowhere(["Jürgen Müller", "Xavier Quill", "DE89 3704"], caplog, events)


def sse_text(raw: bytes) -> str:
    out = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for ch in json.loads(event[6:])["choices"]:
                out.append((ch.get("delta") or {}).get("content") or "")
    return "".join(out)


async def test_redacted_chat_streamed_and_not(
    tmp_path: Path, nats_server: Any, echo: EchoUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, nats_server.url, upstreams=[echo.url])
    (doc,) = corpus(1, seed=8, tier1=False)
    policy = json.dumps({"known_entities": KNOWN, "ner": "rules_only"})
    ask = {
        "model": "echo",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": doc.text},
        ],
    }
    async with front(settings, caplog) as (cl, events):
        plain = await cl.post(
            "/v1/chat/completions", json=ask, headers={"X-Spark-Redaction": policy}
        )
        assert plain.status_code == 200, plain.text
        handle = plain.headers["x-spark-redaction-map"]
        answer = plain.json()["choices"][0]["message"]["content"]
        assert answer == PREFIX + doc.text

        echo.delay_s = 0.005
        chunks: list[bytes] = []
        seen: list[float] = []  # when rehydrated text arrived
        loop = asyncio.get_running_loop()
        async with cl.stream(
            "POST",
            "/v1/chat/completions",
            json={**ask, "stream": True},
            headers={"X-Spark-Redaction": policy, "X-Spark-Redaction-Map": handle},
        ) as resp:
            assert resp.status_code == 200
            async for chunk in resp.aiter_raw():
                chunks.append(chunk)
                if sse_text(chunk):
                    seen.append(loop.time())
        assert sse_text(b"".join(chunks)) == answer
        # forwarded as it came (LiteLLM's guardrail buffered it all): text arrived all along
        assert len(seen) > 20 and seen[0] < seen[-1] - 0.5
        echo.delay_s = 0.0

        # what the model saw: tokens only, the same ones in both calls (one map)
        sent = [r["messages"][-1]["content"] for r in echo.chat_requests()]
        assert sent[0] == sent[1] and "[PERSON_1]" in sent[0]
        for value in doc.tier2 + [v for vs in KNOWN.values() for v in vs]:
            assert value not in json.dumps(echo.chat_requests(), ensure_ascii=False)

        # tier 1 refused before forwarding
        before = len(echo.chat_requests())
        refused = await cl.post(
            "/v1/chat/completions",
            json={
                "model": "echo",
                "messages": [{"role": "user", "content": "card 4111 1111 1111 1111"}],
            },
            headers={"X-Spark-Redaction": json.dumps({"tier1_action": "reject"})},
        )
        assert refused.status_code == 422 and refused.json()["kinds"] == ["card"]
        assert len(echo.chat_requests()) == before

        # no header: passthrough, untouched
        raw = await cl.post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "[PERSON_1] stays"}]},
        )
        assert raw.json()["choices"][0]["message"]["content"] == PREFIX + "[PERSON_1] stays"
    assert any(e.startswith(b"spark.evt.redaction.chat") for e in events)
    assert_nowhere(doc.tier2, caplog, events, db_bytes(settings))


async def test_round_trip_exact_and_injected_token(
    tmp_path: Path, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, nats_server.url)
    docs = corpus(8, seed=31, tier1=False)
    async with front(settings, caplog) as (cl, events):
        items = [{"id": i, "text": d.text} for i, d in enumerate(docs)]
        r = await cl.post("/scrub", json={"known_entities": KNOWN, "items": items})
        out = r.json()
        handle = out["map_handle"]
        back = await cl.post(
            "/rehydrate",
            json={
                "map_handle": handle,
                "strict": True,
                "items": [{"id": i["id"], "text": i["scrubbed_text"]} for i in out["items"]],
            },
        )
        assert [i["text"] for i in back.json()["items"]] == [d.text for d in docs]

        # someone writes a token into the next document of the same map, then asks for it back
        name = KNOWN["persons"][0]
        first = await cl.post(
            "/scrub",
            json={
                "map_handle": handle,
                "known_entities": KNOWN,
                "items": [{"id": 1, "text": f"{name} signed."}],
            },
        )
        token = first.json()["items"][0]["tokens_used"][0]
        forged = await cl.post(
            "/scrub", json={"map_handle": handle, "items": [{"id": 2, "text": f"Who is {token}?"}]}
        )
        sent = forged.json()["items"][0]["scrubbed_text"]
        assert token not in sent and "[LITERAL_" in sent
        answer = await cl.post(
            "/rehydrate", json={"map_handle": handle, "items": [{"id": 2, "text": sent}]}
        )
        assert answer.json()["items"][0]["text"] == f"Who is {token}?"
    assert_nowhere(values_of(docs), caplog, events, db_bytes(settings))


async def test_client_policy_cannot_be_turned_off(
    tmp_path: Path, nats_server: Any, echo: EchoUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(
        tmp_path, nats_server.url, upstreams=[echo.url], redaction_clients={"tok-a": "on"}
    )
    text = "Mail ana@example.org or call +49 30 1234 5678."
    ask = {"model": "echo", "messages": [{"role": "user", "content": text}]}
    async with front(settings, caplog) as (cl, events):
        for headers in ({}, {"X-Spark-Redaction": "off"}):
            r = await cl.post(
                "/v1/chat/completions",
                json=ask,
                headers={"Authorization": "Bearer tok-a", **headers},
            )
            assert r.json()["choices"][0]["message"]["content"] == PREFIX + text
            assert r.headers["x-spark-redaction-map"].startswith("rm_")
        other = await cl.post(
            "/v1/chat/completions", json=ask, headers={"Authorization": "Bearer someone"}
        )
        assert "x-spark-redaction-map" not in other.headers
    sent = [r["messages"][-1]["content"] for r in echo.chat_requests()]
    assert sent[0] == sent[1] == "Mail [EMAIL_1] or call [PHONE_1]." and sent[2] == text
    assert_nowhere(["tok-a"], caplog, events)
