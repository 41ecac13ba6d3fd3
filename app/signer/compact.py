"""The compact form of a multipart answer on the bus, and its expansion by the web front.

A 10,000-part answer is about 4.2 MB of JSON, yet its part URLs differ only in ``partNumber``
and ``X-Amz-Signature``. Asked for it (``Spark-Answer: compact``), the signer sends instead::

    <head: one line of JSON, shapes.CompactHead> 0x0A <32 raw signature bytes per part, 1 first>

about 322 KB for 10,000 parts, so one NATS message. ``expand`` turns it back into the very bytes
of the full answer. Only signatures travel, never a key: each one authorises its own URL alone.
"""

from __future__ import annotations

import binascii
import functools

import msgspec

from app.errors import SparkError
from app.signer import shapes as s
from app.signer.sigv4 import PartTemplate

SIGNATURE_BYTES = 32
_PART_URLS = b'"partUrls":[]'


def head(answer: s.MultipartAnswer, template: PartTemplate, parts: int) -> bytes:
    """The compact form's head line, newline included; ``parts`` signatures follow it."""
    line = s.CompactHead(answer, s.PartUrl(template.prefix, template.suffix), parts)
    return msgspec.json.encode(line) + b"\n"


def expand(data: bytes) -> bytes:
    """The full answer's JSON, byte for byte what the signer would have sent in full;
    SparkError ``BAD_COMPACT`` (502) when ``data`` is not a whole compact answer."""
    cut = data.find(b"\n")
    if cut < 0:
        raise _malformed("it has no head")
    view = memoryview(data)
    try:
        head = msgspec.json.decode(view[:cut], type=s.CompactHead)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _malformed("its head does not decode") from exc
    n, signatures = head.parts, view[cut + 1 :]
    if head.answer.part_urls or not 1 <= n <= s.MAX_PARTS:
        raise _malformed("its head is out of range")
    if len(signatures) != n * SIGNATURE_BYTES:
        raise _malformed("its signatures are not one per part")
    encoded = msgspec.json.encode(head.answer)
    at = encoded.index(_PART_URLS) + len(_PART_URLS) - 1
    prefix, suffix = _json_text(head.part_url.prefix), _json_text(head.part_url.suffix)
    hexes = binascii.hexlify(signatures, b" ", SIGNATURE_BYTES).split(b" ")  # one per part
    # one join of [answer head + '"' + prefix, n, suffix, hex, '","' + prefix, n, …, '"' + rest]
    pieces = [b'","' + prefix] * (4 * n)
    pieces[0] = encoded[:at] + b'"' + prefix
    pieces[1::4] = _numbers()[:n]
    pieces[2::4] = [suffix] * n
    pieces[3::4] = hexes
    pieces.append(b'"' + encoded[at:])
    return b"".join(pieces)


def _json_text(text: str) -> bytes:
    """``text`` as it appears inside a JSON string (escaping is per character, so the pieces
    of a URL escape to the pieces of the escaped URL)."""
    return msgspec.json.encode(text)[1:-1]


@functools.cache
def _numbers() -> list[bytes]:
    return [b"%d" % n for n in range(1, s.MAX_PARTS + 1)]


def _malformed(why: str) -> SparkError:
    return SparkError(
        f"the blob signer's compact answer is malformed: {why}", code="BAD_COMPACT", status=502
    )
