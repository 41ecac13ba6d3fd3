"""Redaction gateway benchmark (issue 6). Not a test: it prints figures.

1. Scrub of a 4 KB prompt naming 20 known entities, rules only: p50 / p99, the pure engine
   (in-memory map) and with the encrypted SQLite map (what /scrub does, minus HTTP).
2. Streaming rehydration: the extra time each SSE chunk spends in the rehydrator (p50 / p99),
   and how long a split token is held back (in chunks and characters).
3. Throughput on a 1 MB document: scrub (rules only, in-memory map) and rehydrate, in MB/s.

    .venv/bin/python bench/redaction.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.redaction.mapstore import MapStore
from app.redaction.rehydrate import rehydrate_text
from app.redaction.schema import KnownEntities, Policy
from app.redaction.scrub import MemoryMap, scrub_texts
from app.redaction.stream import SseRehydrator
from tests.redaction_corpus import KNOWN, corpus, prompt_4k


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scrub_4k(runs: int) -> None:
    text, entities = prompt_4k()
    policy = Policy(known_entities=KnownEntities(**entities), ner="rules_only")
    mem = MemoryMap()
    for _ in range(50):
        scrub_texts([text], policy, mem.assign)
    pure: list[float] = []
    cpu0 = time.process_time()
    for _ in range(runs):
        t = time.perf_counter()
        scrub_texts([text], policy, MemoryMap().assign)
        pure.append(time.perf_counter() - t)
    cpu_each = (time.process_time() - cpu0) / runs
    with tempfile.TemporaryDirectory() as tmp:
        store = MapStore(Path(tmp) / "maps.db", "bench-key", ttl_s=3600)
        handle, _ = store.open_map(None)
        stored: list[float] = []
        for _ in range(runs):
            t = time.perf_counter()
            scrub_texts([text], policy, lambda found: store.assign(handle, found))
            stored.append(time.perf_counter() - t)
        fresh: list[float] = []
        for _ in range(min(runs, 500)):
            t = time.perf_counter()
            h, _ = store.open_map(None)
            scrub_texts([text], policy, lambda found, h=h: store.assign(h, found))
            fresh.append(time.perf_counter() - t)
        store.close()
    (r,) = scrub_texts([text], policy, MemoryMap().assign)
    print(f"scrub 4 KB, 20 known entities, rules only ({r.tier2_tokenized} tokens, {runs} runs)")
    for name, xs in (("pure engine (in-memory map)", pure),
                     ("+ SQLite map, existing map", stored),
                     ("+ SQLite map, new map each time", fresh)):  # fmt: skip
        print(f"  {name:34s} p50 {pct(xs, 0.5) * 1e3:7.3f} ms   p99 {pct(xs, 0.99) * 1e3:7.3f} ms")
    print(
        f"  pure engine, CPU time per scrub (mean; not counting waits for a core) "
        f"{cpu_each * 1e3:.3f} ms"
    )


def stream(runs: int) -> None:
    (doc,) = corpus(1, seed=2, tier1=False)
    mem = MemoryMap()
    (r,) = scrub_texts([doc.text], Policy(known_entities=KnownEntities(**KNOWN)), mem.assign)
    answer = r.text * 4
    head = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    events = []
    for i in range(0, len(answer), 4):  # about one model token per chunk
        choice = {"index": 0, "delta": {"content": answer[i : i + 4]}, "finish_reason": None}
        events.append(b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n")
    per_chunk: list[float] = []
    held_chunks: list[int] = []
    for _ in range(max(1, runs // 200)):
        rh = SseRehydrator(mem.values)
        held = 0
        for ev in events:
            t = time.perf_counter()
            rh.feed(ev)
            per_chunk.append(time.perf_counter() - t)
            pending = any(x.pending for x in rh.texts.values())
            held = held + 1 if pending else 0
            if pending:
                held_chunks.append(held)
        rh.close()
    passthrough: list[float] = []
    for ev in events:
        t = time.perf_counter()
        json.loads(ev[6:])
        passthrough.append(time.perf_counter() - t)
    tokens = len(r.tokens_used)
    print(f"streaming rehydration ({len(events)} chunks of 4 characters, {tokens} distinct tokens)")
    print(f"  extra time per chunk             p50 {pct(per_chunk, .5) * 1e6:7.1f} µs   "
          f"p99 {pct(per_chunk, .99) * 1e6:7.1f} µs")  # fmt: skip
    print(f"  (a bare JSON decode of a chunk   p50 {pct(passthrough, 0.5) * 1e6:7.1f} µs)")
    longest = max(held_chunks) if held_chunks else 0
    print(f"  hold-back: only chunks ending inside a token; longest {longest} chunk(s), "
          f"at most 31 characters by the token grammar")  # fmt: skip


def throughput() -> None:
    docs = corpus(2000, seed=5, tier1=False)
    text = "\n\n".join(d.text for d in docs)
    text = text[:1_000_000]
    mb = len(text.encode()) / 1e6
    policy = Policy(known_entities=KnownEntities(**KNOWN), ner="rules_only")
    mem = MemoryMap()
    t = time.perf_counter()
    (r,) = scrub_texts([text], policy, mem.assign)
    scrub_s = time.perf_counter() - t
    t = time.perf_counter()
    back, _restored, _ = rehydrate_text(r.text, mem.values)
    re_s = time.perf_counter() - t
    assert back == text
    print(f"1 MB document ({mb:.2f} MB, {r.tier2_tokenized} values tokenised)")
    print(f"  scrub (rules only)      {mb / scrub_s:7.2f} MB/s  ({scrub_s * 1e3:.0f} ms)")
    print(
        f"  rehydrate               {mb / re_s:7.2f} MB/s  ({re_s * 1e3:.0f} ms), exact round trip"
    )


def reference() -> None:
    """How fast this machine runs Python, to scale the figures: lower-casing 4 KB."""
    text, _ = prompt_4k()
    xs = []
    for _ in range(2000):
        t = time.perf_counter()
        text.lower()
        xs.append(time.perf_counter() - t)
    print(f"reference: str.lower() of the 4 KB prompt p50 {pct(xs, 0.5) * 1e6:.1f} µs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args()
    scrub_4k(args.runs)
    stream(args.runs)
    throughput()
    reference()
    load = os.getloadavg()[0]
    print(
        f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load:.2f}: "
        "wall-clock figures include waiting for a core on a shared machine)"
    )


if __name__ == "__main__":
    main()
