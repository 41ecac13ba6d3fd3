"""Wire shapes of the blob signer (REFERENCE §2): requests snake_case, answers camelCase.

Two request shapes exist in released and branch clients; both decode here and become one
``Plan``. Only the standard library and msgspec are imported, so any client may use them.
"""

from __future__ import annotations

from typing import Literal

import msgspec

MAX_PARTS = 10_000
MIN_PART_BYTES = 5 * 2**20
MAX_PART_BYTES = 5 * 2**30
MAX_REQUEST_BYTES = 16 * 1024


# --- requests: the rel_path / uri shape ----------------------------------------------------


class MultipartPut(
    msgspec.Struct, tag="multipart_put", tag_field="kind", forbid_unknown_fields=True
):
    parts: int
    part_size_bytes: int
    upload_id: str | None = None
    """An addition: fresh URLs for an upload already started (resuming); none is created."""


class SinglePut(msgspec.Struct, tag="single_put", tag_field="kind", forbid_unknown_fields=True):
    pass


class SingleGet(msgspec.Struct, tag="single_get", tag_field="kind", forbid_unknown_fields=True):
    pass


# --- requests: the target shape ------------------------------------------------------------


class MultipartHint(msgspec.Struct, forbid_unknown_fields=True):
    max_parts: int
    part_size_bytes: int


class PutArtifact(msgspec.Struct, tag="put_artifact", tag_field="kind", forbid_unknown_fields=True):
    multipart_hint: MultipartHint | None = None


class GetBlob(msgspec.Struct, tag="get_blob", tag_field="kind", forbid_unknown_fields=True):
    pass


class Artifact(msgspec.Struct, tag="artifact", tag_field="kind", forbid_unknown_fields=True):
    rel_path: str


class Blob(msgspec.Struct, tag="blob", tag_field="kind", forbid_unknown_fields=True):
    uri: str


Op = MultipartPut | SinglePut | SingleGet | PutArtifact | GetBlob


class SignRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/blob/sign`` and of ``spark.cmd.blob.sign.<namespace>``.
    Exactly one of ``rel_path``, ``uri``, ``target``. The namespace is never in here."""

    op: Op
    rel_path: str | None = None
    uri: str | None = None
    target: Artifact | Blob | None = None


class Plan(msgspec.Struct, frozen=True):
    """One request, whichever shape it came in: what to sign, for which path or uri."""

    action: Literal["multipart", "put", "get"]
    rel_path: str | None = None
    uri: str | None = None
    parts: int = 0
    part_size_bytes: int = 0
    upload_id: str | None = None


# --- answers ---------------------------------------------------------------------------------


class MultipartAnswer(msgspec.Struct, rename="camel", tag="s3_multipart", tag_field="kind"):
    """Part ``n`` is ``partUrls[n - 1]``. ``listPartsUrl`` (an addition) lets a host find the
    parts already uploaded and resume without credentials."""

    uri: str
    upload_id: str
    part_size_bytes: int
    part_urls: list[str]
    complete_url: str
    abort_url: str
    list_parts_url: str
    expires_at: str


class SingleAnswer(msgspec.Struct, rename="camel"):
    kind: Literal["single_put", "single_get"]
    method: Literal["PUT", "GET"]
    url: str
    headers: dict[str, str]
    expires_at: str
    uri: str


class PartUrl(msgspec.Struct):
    """Part n's URL: ``prefix``, n in decimal, ``suffix``, its signature in lower-case hex."""

    prefix: str
    suffix: str


class CompactHead(msgspec.Struct, rename="camel"):
    """Head of a multipart answer's compact form (app/signer/compact.py): the answer with
    ``partUrls`` empty, the part-URL template and how many parts follow as raw signatures."""

    answer: MultipartAnswer
    part_url: PartUrl
    parts: int


class ErrorAnswer(msgspec.Struct):
    """Refusals, over HTTP and on the bus alike (the bus adds the HTTP status)."""

    error: str
    code: str
    status: int | None = None


def decode_request(data: bytes) -> SignRequest:
    """Raises msgspec.DecodeError / ValidationError on a malformed body."""
    return msgspec.json.decode(data, type=SignRequest)
