"""Signer pieces that need no server: both request shapes → one plan, the rendered answer
equals the one-shot encoding, and the chunk writer's messages."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.aio.msg import Msg

from app import contracts as c
from app.errors import BadRequest, BusUnavailable, SparkError
from app.signer import shapes as s
from app.signer.chunks import HEADROOM, ChunkWriter, Reply
from app.signer.service import Audit, Signed, plan_of
from app.signer.sigv4 import Credentials, Presigner

MIB = 2**20


def plan(body: dict[str, object]) -> s.Plan:
    return plan_of(s.decode_request(msgspec.json.encode(body)))


def test_both_shapes_make_the_same_plans() -> None:
    mp = {"kind": "multipart_put", "parts": 7, "part_size_bytes": 64 * MIB}
    hint = {"kind": "put_artifact", "multipart_hint": {"max_parts": 7, "part_size_bytes": 64 * MIB}}
    art = {"kind": "artifact", "rel_path": "p/x"}
    assert plan({"rel_path": "p/x", "op": mp}) == plan({"target": art, "op": hint})
    assert plan({"rel_path": "p/x", "op": {"kind": "single_put"}}) == plan(
        {"target": art, "op": {"kind": "put_artifact"}}
    )
    assert plan({"uri": "s3://b/k", "op": {"kind": "single_get"}}) == plan(
        {"target": {"kind": "blob", "uri": "s3://b/k"}, "op": {"kind": "get_blob"}}
    )
    assert plan({"rel_path": "p/x", "op": mp}) == s.Plan("multipart", "p/x", None, 7, 64 * MIB)


@pytest.mark.parametrize(
    ("op", "code"),
    [
        ({"kind": "multipart_put", "parts": 10_001, "part_size_bytes": 5 * MIB}, "TOO_MANY_PARTS"),
        ({"kind": "multipart_put", "parts": 0, "part_size_bytes": 5 * MIB}, "BAD_PARTS"),
        ({"kind": "multipart_put", "parts": 1, "part_size_bytes": 5 * MIB - 1}, "BAD_PART_SIZE"),
        ({"kind": "multipart_put", "parts": 1, "part_size_bytes": 5 * 2**30 + 1}, "BAD_PART_SIZE"),
    ],
)
def test_part_limits(op: dict[str, object], code: str) -> None:
    with pytest.raises(BadRequest) as info:
        plan({"rel_path": "p/x", "op": op})
    assert info.value.code == code


def test_edges_of_the_part_limits_pass() -> None:
    for parts, size in ((1, 5 * MIB), (10_000, 5 * 2**30)):
        op = {"kind": "multipart_put", "parts": parts, "part_size_bytes": size}
        assert plan({"rel_path": "p/x", "op": op}).parts == parts


def test_rendered_answer_equals_one_shot_encoding() -> None:
    p = Presigner(Credentials("AK", "SK"), "us-east-1", "http://127.0.0.1:9000")
    now, ttl = 1_790_000_000.0, 3600
    head = s.MultipartAnswer(
        uri="s3://b/k", upload_id="u+1", part_size_bytes=5 * MIB, part_urls=[],
        complete_url="c", abort_url="a", list_parts_url="l", expires_at="e",
    )  # fmt: skip
    audit = Audit("ns", "b", "k", "multipart_put", 2345, "e")
    signed = Signed(audit, head, p, 2345, ttl, now)
    full = msgspec.structs.replace(head, part_urls=p.part_urls("b", "k", "u+1", 2345, ttl, now))
    assert b"".join(signed.pieces(batch=1000)) == msgspec.json.encode(full)
    assert signed.body() == msgspec.json.encode(full)


async def test_chunk_writer_cuts_at_the_payload_limit() -> None:
    sent: list[tuple[bytes, dict[str, str]]] = []

    async def publish(data: bytes, headers: dict[str, str]) -> None:
        sent.append((data, headers))

    writer = ChunkWriter(publish, max_payload=HEADROOM + 1100)
    body = bytes(range(256)) * 10  # 2,560 bytes: 1,100 + 1,100 + 360
    for i in range(0, len(body), 300):
        await writer.write(body[i : i + 300])
    await writer.close()
    assert [len(d) for d, _ in sent] == [1100, 1100, 360]
    assert [h[c.CHUNK_HEADER] for _, h in sent] == ["0", "1", "2"]
    assert c.CHUNKS_HEADER not in sent[0][1]
    assert sent[-1][1][c.CHUNKS_HEADER] == "3"
    assert sent[-1][1][c.CHUNK_BYTES_HEADER] == str(len(body))
    assert b"".join(d for d, _ in sent) == body


def _msg(data: bytes, headers: dict[str, str]) -> Msg:
    return Msg(_client=None, data=data, headers=headers)  # type: ignore[arg-type]


async def _read(msgs: list[Msg]) -> bytes:
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    for m in msgs[1:]:
        queue.put_nowait(m)
    return await Reply(msgs[0], queue, wait_s=0.5).body()


async def test_reply_reassembles_and_refuses_gaps_and_short_bodies() -> None:
    whole = [
        _msg(b"ab", {c.CHUNK_HEADER: "0"}),
        _msg(b"cd", {c.CHUNK_HEADER: "1"}),
        _msg(b"e", {c.CHUNK_HEADER: "2", c.CHUNKS_HEADER: "3", c.CHUNK_BYTES_HEADER: "5"}),
    ]
    assert await _read(whole) == b"abcde"
    with pytest.raises(SparkError) as gap:
        await _read([whole[0], whole[2]])
    assert gap.value.code == "BAD_CHUNKS"
    last = {c.CHUNK_HEADER: "2", c.CHUNKS_HEADER: "3", c.CHUNK_BYTES_HEADER: "9"}
    short = [*whole[:2], _msg(b"e", last)]
    with pytest.raises(SparkError) as info:
        await _read(short)
    assert info.value.code == "BAD_CHUNKS"
    with pytest.raises(BusUnavailable):  # the last message never comes
        await _read(whole[:2])
    failed = _msg(b'{"error":"x","code":"INTERNAL"}', {"Nats-Service-Error": "INTERNAL"})
    with pytest.raises(SparkError) as mid:
        await _read([whole[0], failed])
    assert mid.value.code == "BAD_CHUNKS"
