"""The compact multipart answer (app/signer/compact.py): expanded, it is byte for byte the full
answer for the same frozen clock; it fits one NATS message; a damaged one is a clear 502."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.aio.msg import Msg

from app import contracts as c
from app.errors import SparkError
from app.signer import compact
from app.signer import shapes as s
from app.signer.chunks import HEADROOM, ChunkWriter, Reply
from app.signer.service import Audit, Signed
from app.signer.sigv4 import Credentials, Presigner

MIB = 2**20
NOW, TTL = 1_790_000_000.0, 604_800
SECRET = "wJalr/XUtnFEMI+K7MDENG=bPxRfiCY"


def signed(
    parts: int,
    key: str = "projects/ns-a/m/model.bin",
    upload_id: str = "u+1/=",
    presigner: Presigner | None = None,
) -> Signed:
    p = presigner or Presigner(Credentials("AKIDEXAMPLE", SECRET), "us-east-1", "http://h:9000")
    head = s.MultipartAnswer(
        uri=f"s3://bkt/{key}", upload_id=upload_id, part_size_bytes=64 * MIB, part_urls=[],
        complete_url=p.complete_url("bkt", key, upload_id, TTL, NOW),
        abort_url=p.abort_url("bkt", key, upload_id, TTL, NOW),
        list_parts_url=p.list_parts_url("bkt", key, upload_id, TTL, NOW),
        expires_at="2026-09-28T12:53:20Z",
    )  # fmt: skip
    return Signed(Audit("ns-a", "bkt", key, "multipart_put", parts, "e"), head, p, parts, TTL, NOW)


def compact_body(sg: Signed) -> bytes:
    return b"".join(sg.compact_pieces())


@pytest.mark.parametrize("parts", [1, 2, 999, 1000, 1001, 10_000])
def test_expanded_equals_the_full_answer(parts: int) -> None:
    sg = signed(parts)
    full = sg.body()
    assert compact.expand(compact_body(sg)) == full
    # and the full answer is the one-shot encoding of every part URL
    p, head = sg.presigner, sg.answer
    assert p is not None and isinstance(head, s.MultipartAnswer)
    urls = p.part_urls("bkt", sg.audit.key, head.upload_id, parts, TTL, NOW)
    assert full == msgspec.json.encode(msgspec.structs.replace(head, part_urls=urls))


@pytest.mark.parametrize(
    ("key", "upload_id", "presigner"),
    [
        ("projects/ns-a/with space/ünï cödé+=~%.bin", 'id"with\\quote', None),
        (
            "projects/ns-a/x.bin",
            "2~abc",
            Presigner(
                Credentials("AKIDEXAMPLE", SECRET, "session/+=token"),
                "eu-west-3",
                "https://store.example:8443",
                "virtual",
            ),
        ),
    ],
)
def test_expanded_equals_full_for_awkward_keys_ids_and_endpoints(
    key: str, upload_id: str, presigner: Presigner | None
) -> None:
    sg = signed(321, key, upload_id, presigner)
    assert compact.expand(compact_body(sg)) == sg.body()


def test_compact_form_of_10000_parts_fits_one_message_and_holds_no_secret() -> None:
    data = compact_body(signed(10_000))
    assert len(data) <= 2**20 - HEADROOM  # NATS's default max payload, less the headroom
    head, _, signatures = data.partition(b"\n")
    assert len(signatures) == 10_000 * compact.SIGNATURE_BYTES
    decoded = msgspec.json.decode(head)
    assert decoded["parts"] == 10_000 and decoded["answer"]["partUrls"] == []
    assert decoded["partUrl"]["prefix"].endswith("&partNumber=")
    assert decoded["partUrl"]["suffix"].endswith("&X-Amz-Signature=")
    assert SECRET.encode() not in data


def test_single_answers_have_no_compact_form() -> None:
    single = Signed(
        Audit("ns-a", "bkt", "k", "single_put", 0, "e"),
        s.SingleAnswer("single_put", "PUT", "http://h/bkt/k?x", {}, "e", "s3://bkt/k"),
    )
    assert not single.multipart
    with pytest.raises(TypeError):
        list(single.compact_pieces())


def _good() -> bytes:
    return compact_body(signed(3))


def _swap_head(data: bytes, **changes: object) -> bytes:
    head, _, signatures = data.partition(b"\n")
    decoded = msgspec.json.decode(head)
    decoded.update(changes)
    return msgspec.json.encode(decoded) + b"\n" + signatures


MALFORMED = {
    "empty": b"",
    "no newline": b'{"answer":{}}',
    "head not json": b"{not json\n" + bytes(96),
    "head of another shape": b'{"kind":"s3_multipart"}\n' + bytes(96),
    "one signature short": _good()[:-32],
    "half a signature short": _good()[:-16],
    "one byte extra": _good() + b"x",
    "one signature extra": _good() + bytes(32),
    "no parts": _swap_head(_good(), parts=0)[:-96],
    "too many parts": _swap_head(_good(), parts=10_001),
    "part urls already filled": _swap_head(
        _good(), answer={**msgspec.json.decode(_good().partition(b"\n")[0])["answer"],
                         "partUrls": ["x"]}
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_compact_answer_is_bad_compact_502(name: str) -> None:
    with pytest.raises(SparkError) as info:
        compact.expand(MALFORMED[name])
    assert (info.value.code, info.value.status) == ("BAD_COMPACT", 502)
    assert "X-Amz" not in info.value.message and "http" not in info.value.message


async def test_form_header_rides_on_every_message_and_the_reply_sees_it() -> None:
    sent: list[tuple[bytes, dict[str, str]]] = []

    async def publish(data: bytes, headers: dict[str, str]) -> None:
        sent.append((data, headers))

    writer = ChunkWriter(publish, HEADROOM + 1100, {c.ANSWER_HEADER: c.ANSWER_COMPACT})
    await writer.write(bytes(2500))
    await writer.close()
    assert len(sent) == 3
    assert all(h[c.ANSWER_HEADER] == c.ANSWER_COMPACT for _, h in sent)
    msgs = [Msg(_client=None, data=d, headers=h) for d, h in sent]  # type: ignore[arg-type]
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    for m in msgs[1:]:
        queue.put_nowait(m)
    reply = Reply(msgs[0], queue, wait_s=0.5)
    assert reply.compact and await reply.body() == bytes(2500)
    plain = Msg(_client=None, data=b"{}", headers={c.CHUNK_HEADER: "0"})  # type: ignore[arg-type]
    assert not Reply(plain, asyncio.Queue(), wait_s=0.5).compact
