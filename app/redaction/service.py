"""The gateway as one object the routes and the /v1 proxy share: the map, the NER client and
the audit events (counts only). Values never reach a log line, an event or an error."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from app import contracts as c
from app.config import Settings
from app.redaction.errors import BadRedactionRequest
from app.redaction.mapstore import MapStore, load_or_create_key
from app.redaction.ner import NerClient
from app.redaction.rehydrate import rehydrate_chat_response, rehydrate_text
from app.redaction.schema import Policy, RehydrateRequest, ScrubRequest, decode_policy
from app.redaction.scrub import (
    Scrubbed,
    placeholder_text,
    plan,
    refuse_tier1,
    render,
    tier2_values,
)
from app.redaction.stream import SseRehydrator
from app.redaction.tokens import TOKEN_RE

log = logging.getLogger(__name__)

POLICY_HEADER = "x-spark-redaction"
MAP_HEADER = "x-spark-redaction-map"
KEY_FILE = "redaction.key"
MAP_FILE = "redaction_maps.db"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def map_path(settings: Settings) -> Path:
    return Path(settings.redaction_map_db or Path(settings.data_dir) / MAP_FILE).expanduser()


def ner_url(settings: Settings) -> str:
    """The configured NER endpoint, else the gateway's own /v1 (the fleet's models)."""
    if settings.redaction_ner_url:
        return settings.redaction_ner_url
    host = settings.bind_host if settings.bind_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.bind_port}/v1"


class Redactor:
    """/scrub, /rehydrate and redacted chat over one map store (opened on first use) and one
    NER client; ``bus`` (optional) carries the audit events."""

    def __init__(self, settings: Settings, bus: Any = None) -> None:
        self.settings = settings
        self.bus = bus
        self._store: MapStore | None = None
        self._store_lock = threading.Lock()
        self.ner = NerClient(ner_url(settings), settings.redaction_ner_model,
                             settings.redaction_ner_timeout_s)  # fmt: skip

    # --- the map -------------------------------------------------------------------------

    def store(self) -> MapStore:
        """The map store, opened on first use (a bad path fails that call, not the app)."""
        with self._store_lock:  # first calls may race in worker threads
            if self._store is None:
                s = self.settings
                secret = s.redaction_key or load_or_create_key(Path(s.data_dir) / KEY_FILE)
                store = MapStore(map_path(s), secret, s.redaction_ttl_s)
                store.check()
                self._store = store
            return self._store

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # --- scrub ---------------------------------------------------------------------------

    def _use_ner(self, policy: Policy) -> bool:
        if policy.ner == "llm":
            return True
        return policy.ner == "auto" and bool(self.settings.redaction_ner_model)

    async def _names(self, texts: list[str], policy: Policy) -> tuple[tuple[str, str], ...]:
        """Names the NER model adds (empty without NER). Fails closed: NerUnavailable."""
        if not self._use_ner(policy):
            return ()

        def shown() -> list[str]:
            return [placeholder_text(p) for p in plan(texts, policy)]

        found = await self.ner.find(await self._run(shown))
        return tuple(dict.fromkeys(pair for per_text in found for pair in per_text))

    async def scrub_texts(
        self, texts: list[str], policy: Policy
    ) -> tuple[list[Scrubbed], str, float]:
        """Scrub texts into one map (new, or ``policy.map_handle``): (results, handle, expiry).
        Refusals (NER, tier 1, unknown map) happen before anything is written; the work runs
        in a worker thread (a large document does not stall the event loop)."""
        extra = await self._names(texts, policy)

        def work() -> tuple[list[Scrubbed], str, float]:
            store = self.store()
            planned = plan(texts, policy, extra)
            if policy.tier1_action == "reject":  # before a map is opened or extended
                refuse_tier1(planned)
            handle, expires = store.open_map(policy.map_handle)
            tokens = store.assign(handle, tier2_values(planned))
            return [render(p, tokens) for p in planned], handle, expires

        result: tuple[list[Scrubbed], str, float] = await self._run(work)
        return result

    async def scrub(self, req: ScrubRequest) -> dict[str, Any]:
        try:
            results, handle, expires = await self.scrub_texts([i.text for i in req.items], req)
        except Exception as exc:
            await self._refused(req, exc)
            raise
        distinct = {t for r in results for t in r.tokens_used}
        stats = {
            "tier1_dropped": sum(r.tier1_dropped for r in results),
            "tier2_tokenized": sum(r.tier2_tokenized for r in results),
            "distinct_entities": len(distinct),
        }
        await self.audit("scrub", {**_who(req), "ner": req.ner, **stats})
        return {
            "task_id": req.task_id,
            "map_handle": handle,
            "items": [
                {"id": item.id, "scrubbed_text": r.text, "tokens_used": r.tokens_used}
                for item, r in zip(req.items, results, strict=True)
            ],
            "stats": stats,
            "expires_at": iso(expires),
        }

    # --- rehydrate -----------------------------------------------------------------------

    async def values(self, handle: str, tokens: list[str] | None = None) -> dict[str, str]:
        store = await self._run(self.store)
        result: dict[str, str] = await self._run(store.values, handle, tokens)
        return result

    async def rehydrate(self, req: RehydrateRequest) -> dict[str, Any]:
        texts = [i.body() for i in req.items]
        tokens = [m.group(0) for t in texts for m in TOKEN_RE.finditer(t)]
        values = await self.values(req.map_handle, tokens)
        items, restored, unknown = [], 0, 0
        try:
            for item, text in zip(req.items, texts, strict=True):
                out, n, missing = rehydrate_text(text, values, strict=req.strict)
                items.append({"id": item.id, "text": out, "tokens_restored": n})
                restored, unknown = restored + n, unknown + len(missing)
        except Exception as exc:
            await self._refused(req, exc)
            raise
        stats = {"tokens_restored": restored, "unknown_tokens": unknown}
        await self.audit("rehydrate", {**_who(req), **stats})
        return {
            "task_id": req.task_id,
            "map_handle": req.map_handle,
            "items": items,
            "stats": stats,
        }

    # --- redacted chat -------------------------------------------------------------------

    async def scrub_messages(
        self, body: dict[str, Any], policy: Policy
    ) -> tuple[dict[str, Any], str]:
        """A chat request with every message text scrubbed (string content, text parts, tool
        call arguments) into one map: (new body, map handle). Raises on any failure: the
        caller refuses the request, never forwards it raw."""
        slots: list[tuple[dict[str, Any], str]] = []
        for msg in body.get("messages") or []:
            if not isinstance(msg, dict):
                raise BadRedactionRequest("messages: each must be an object")
            if isinstance(msg.get("content"), str):
                slots.append((msg, "content"))
            elif isinstance(msg.get("content"), list):
                for part in msg["content"]:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        slots.append((part, "text"))
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    slots.append((fn, "arguments"))
        if isinstance(body.get("prompt"), str):
            slots.append((body, "prompt"))
        results, handle, _ = await self.scrub_texts([h[k] for h, k in slots], policy)
        for (holder, key), r in zip(slots, results, strict=True):
            holder[key] = r.text
        counts = {
            "messages": len(slots),
            "tier1_dropped": sum(r.tier1_dropped for r in results),
            "tier2_tokenized": sum(r.tier2_tokenized for r in results),
        }
        await self.audit("chat", counts)
        return body, handle

    async def stream_rehydrator(self, handle: str) -> SseRehydrator:
        return SseRehydrator(await self.values(handle))

    async def rehydrate_response(self, body: Any, handle: str) -> Any:
        return rehydrate_chat_response(body, await self.values(handle))

    # --- audit ---------------------------------------------------------------------------

    async def _refused(self, req: ScrubRequest | RehydrateRequest, exc: Exception) -> None:
        kinds = getattr(exc, "kinds", None)
        code = getattr(exc, "code", "error")
        await self.audit(
            "refused", {**_who(req), "code": code, **({"kinds": kinds} if kinds else {})}
        )

    async def audit(self, kind: str, data: dict[str, Any]) -> None:
        """Counts only, on ``spark.evt.redaction.<kind>``; best effort (never fails a call)."""
        bus = self.bus
        if bus is None:
            return
        event = c.Event(kind=kind, ts=time.time(), data=data)
        try:
            await bus.js.publish(c.evt_redaction(kind), msgspec.json.encode(event), timeout=2.0)
        except Exception as exc:
            log.warning("redaction audit event not published: %s", type(exc).__name__)


def _who(req: ScrubRequest | RehydrateRequest) -> dict[str, Any]:
    return {"task_id": req.task_id, "actor": req.actor, "items": len(req.items)}


def policy_from_headers(headers: Any) -> Policy | None:
    """The chat policy a request asks for: ``X-Spark-Redaction: on`` (defaults) or a JSON
    object of /scrub's fields; ``X-Spark-Redaction-Map`` reuses a map. None: none asked."""
    raw = (headers.get(POLICY_HEADER) or "").strip()
    if not raw or raw.lower() in ("off", "0", "false", "no"):
        return None
    policy = Policy() if raw.lower() in ("on", "1", "true", "yes") else decode_policy(raw.encode())
    return _with_map(policy, headers)


def policy_for(settings: Settings, headers: Any) -> Policy | None:
    """The policy of a /v1 chat request: the client's configured one (``redaction_clients``,
    by its bearer token) is enforced — no header turns it off —, else what the headers ask."""
    auth = (headers.get("authorization") or "").strip()
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    configured = settings.redaction_clients.get(token) if token else None
    if configured is None:
        return policy_from_headers(headers)
    raw = configured.strip()
    policy = Policy() if raw == "on" else decode_policy(raw.encode())
    return _with_map(policy, headers)


def _with_map(policy: Policy, headers: Any) -> Policy:
    handle = (headers.get(MAP_HEADER) or "").strip()
    if handle:
        policy.map_handle = handle
    return policy
