"""``POST /api/audio/transcribe-with-speakers``: one upload, transcribed by the speech-to-text
service and diarized by the diarization server, merged into speaker turns (the earlier
dashboard's shape)::

    {duration, language, speakers_detected, segments: [{start_ms, end_ms, speaker, text}]}

A new turn starts on a change of speaker or after more than 1.5 s of silence. The upload (the
client's multipart body, as sent) is spooled once (memory up to 8 MB, then a temporary file) and
sent to both; the transcription request gets ``response_format=verbose_json`` appended, for
timestamps. The diarization server (``proxy_diarization_url``) takes the same multipart body and
answers ``{"segments": [{"start", "end", "speaker"}]}`` in seconds (pyannote's shape).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Any

import aiohttp
import msgspec

from app.errors import BadRequest, SparkError
from app.proxy.errors import Busy, UnknownModel, UpstreamUnreachable

SILENCE_S = 1.5
SPOOL_IN_MEMORY = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


class Piece(msgspec.Struct):
    start: float
    end: float
    text: str = ""


class SpeakerSpan(msgspec.Struct):
    start: float
    end: float
    speaker: str


class Transcript(msgspec.Struct):
    text: str = ""
    duration: float | None = None
    language: str | None = None
    segments: list[Piece] = msgspec.field(default_factory=list)
    words: list[Piece] | None = None


class Diarization(msgspec.Struct):
    segments: list[SpeakerSpan] = msgspec.field(default_factory=list)


def speaker_of(piece: Piece, spans: list[SpeakerSpan]) -> str:
    """The speaker overlapping ``piece`` the most; the nearest one when none overlaps."""
    best, best_overlap = None, 0.0
    for span in spans:
        overlap = min(piece.end, span.end) - max(piece.start, span.start)
        if overlap > best_overlap:
            best, best_overlap = span.speaker, overlap
    if best is not None:
        return best
    if not spans:
        return "SPEAKER_00"
    mid = (piece.start + piece.end) / 2
    return min(spans, key=lambda s: min(abs(mid - s.start), abs(mid - s.end))).speaker


def merge(transcript: Transcript, diarization: Diarization) -> dict[str, Any]:
    """Speaker turns from timed text (words when the transcriber gave them, else segments)."""
    pieces = transcript.words or transcript.segments
    turns: list[dict[str, Any]] = []
    for piece in sorted(pieces, key=lambda p: p.start):
        text = piece.text.strip()
        if not text:
            continue
        speaker = speaker_of(piece, diarization.segments)
        last = turns[-1] if turns else None
        if (
            last is not None
            and last["speaker"] == speaker
            and piece.start * 1000 - last["end_ms"] <= SILENCE_S * 1000
        ):
            last["end_ms"] = round(piece.end * 1000)
            last["text"] = f"{last['text']} {text}"
        else:
            turns.append({"start_ms": round(piece.start * 1000), "end_ms": round(piece.end * 1000),
                          "speaker": speaker, "text": text})  # fmt: skip
    duration = transcript.duration
    if duration is None:
        duration = max((p.end for p in pieces), default=0.0)
    return {
        "duration": duration,
        "language": transcript.language,
        "speakers_detected": len({t["speaker"] for t in turns}),
        "segments": turns,
    }


class Upload:
    """The client's multipart body, spooled, re-sendable, with form fields appendable."""

    def __init__(self, spool: IO[bytes], size: int, boundary: bytes):
        self.spool, self.size, self.boundary = spool, size, boundary
        spool.seek(max(0, size - 512))
        tail = spool.read()
        closing = tail.rfind(b"--" + boundary + b"--")
        if closing < 0:
            raise BadRequest("body: not a complete multipart form", code="BAD_MULTIPART")
        self.end = max(0, size - 512) + closing  # where the closing boundary starts

    def with_fields(self, fields: list[tuple[str, str]]) -> tuple[AsyncIterator[bytes], int]:
        extra = (
            b"".join(
                b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                % (self.boundary, name.encode(), value.encode())
                for name, value in fields
            )
            + b"--%s--\r\n" % self.boundary
        )

        async def chunks() -> AsyncIterator[bytes]:
            left, at = self.end, 0
            while left > 0:
                self.spool.seek(at)
                data = self.spool.read(min(READ_CHUNK, left))
                at, left = at + len(data), left - len(data)
                yield data
            yield extra

        return chunks(), self.end + len(extra)


async def spool_upload(stream: AsyncIterator[bytes], content_type: str) -> Upload:
    m = _BOUNDARY.search(content_type)
    if not content_type.startswith("multipart/form-data") or not m:
        raise BadRequest("body: expected multipart/form-data with a file", code="BAD_MULTIPART")
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
    size = 0
    async for chunk in stream:
        spool.write(chunk)
        size += len(chunk)
    return Upload(spool, size, m.group(1).encode())


async def post_json(
    client: aiohttp.ClientSession, url: str, upload: Upload, fields: list[tuple[str, str]],
    kind: type[Any], what: str,
) -> Any:  # fmt: skip
    body, length = upload.with_fields(fields)
    headers = {
        "content-type": f"multipart/form-data; boundary={upload.boundary.decode()}",
        "content-length": str(length),
    }
    try:
        async with client.post(url, data=body, headers=headers) as resp:
            raw = await resp.read()
            if resp.status >= 500:
                raise Busy(f"{what} failed (HTTP {resp.status})", retry_after=60,
                           code="UPSTREAM_FAILING")  # fmt: skip
            if resp.status >= 400:
                raise SparkError(f"{what} refused the upload (HTTP {resp.status})",
                                 code="UPSTREAM_REFUSED", status=502)  # fmt: skip
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnreachable(f"{what} unreachable") from exc
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SparkError(f"{what} answered an unexpected shape", code="UPSTREAM_SHAPE",
                         status=502) from exc  # fmt: skip


async def transcribe_with_speakers(
    client: aiohttp.ClientSession,
    stt_base: str | None,
    diarization_url: str | None,
    stream: AsyncIterator[bytes],
    content_type: str,
) -> dict[str, Any]:
    if stt_base is None:
        raise UnknownModel("no speech-to-text service configured (services.yaml, kind stt)")
    if not diarization_url:
        raise Busy("no diarization server configured (setting proxy_diarization_url)",
                   retry_after=3600, code="DIARIZATION_UNAVAILABLE")  # fmt: skip
    upload = await spool_upload(stream, content_type)
    try:
        transcript, diarization = await asyncio.gather(
            post_json(client, f"{stt_base}/v1/audio/transcriptions", upload,
                      [("response_format", "verbose_json"),
                       ("timestamp_granularities[]", "segment")],
                      Transcript, "speech to text"),
            post_json(client, diarization_url, upload, [], Diarization, "diarization"),
        )  # fmt: skip
    finally:
        upload.spool.close()
    return merge(transcript, diarization)
