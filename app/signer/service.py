"""The signing itself: a request body and the caller's namespace in, an answer out.

Order of checks: decode → one plan from either shape → the rules (rel_path under the prefix,
uri read-only and allow-listed, parts and part size in range) → the store call a multipart
upload needs → presign. Every refusal is a SparkError with its code; nothing here knows NATS
or HTTP. The audit record (no URL, no signature) goes with the answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from app.config import Settings
from app.errors import BadRequest, Forbidden, StoreUnavailable
from app.signer import compact
from app.signer import shapes as s
from app.signer.paths import check_rel_path, normalise, prefix_for
from app.signer.sigv4 import Addressing, Credentials, PartSigner, Presigner
from app.signer.store import Store


@dataclass(frozen=True)
class Audit:
    """What an audit event says about one signing."""

    namespace: str
    bucket: str
    key: str
    op: str
    parts: int
    expires_at: str


_PART_URLS = b'"partUrls":[]'
_UPLOAD_ID = re.compile(r"[\x21-\x7e]{1,1024}")


@dataclass
class Signed:
    """A granted request: its audit record and the answer, rendered as JSON pieces. A
    multipart answer's part URLs are signed batch by batch while it is rendered, so the first
    bytes can leave before the last part is signed."""

    audit: Audit
    answer: s.MultipartAnswer | s.SingleAnswer
    presigner: Presigner | None = None
    parts: int = 0
    ttl: int = 0
    now: float = 0.0

    def pieces(self, batch: int = 1000) -> Iterator[bytes]:
        encoded = msgspec.json.encode(self.answer)
        if not isinstance(self.answer, s.MultipartAnswer) or self.presigner is None:
            yield encoded
            return
        at = encoded.index(_PART_URLS) + len(_PART_URLS) - 1
        yield encoded[:at]
        signer = self.part_signer()
        for first in range(1, self.parts + 1, batch):
            urls = signer.urls(first, min(batch, self.parts - first + 1))
            text = msgspec.json.encode(urls)[1:-1]
            yield text if first == 1 else b"," + text
        yield encoded[at:]

    def body(self) -> bytes:
        return b"".join(self.pieces())

    @property
    def multipart(self) -> bool:
        return isinstance(self.answer, s.MultipartAnswer) and self.presigner is not None

    def part_signer(self) -> PartSigner:
        if not isinstance(self.answer, s.MultipartAnswer) or self.presigner is None:
            raise TypeError("only a multipart answer has part URLs")
        a = self.audit
        return self.presigner.part_signer(
            a.bucket, a.key, self.answer.upload_id, self.ttl, self.now
        )

    def compact_head(self, signer: PartSigner) -> bytes:
        """The compact form's head line (app/signer/compact.py); the raw part signatures of
        ``signer`` follow it, part 1 first. The front expands the two to exactly ``body()``."""
        assert isinstance(self.answer, s.MultipartAnswer)
        return compact.head(self.answer, signer.template, self.parts)

    def compact_pieces(self, batch: int = 1000) -> Iterator[bytes]:
        """The whole compact form, signed here batch by batch."""
        signer = self.part_signer()
        yield self.compact_head(signer)
        for first in range(1, self.parts + 1, batch):
            yield signer.signatures(first, min(batch, self.parts - first + 1))


def plan_of(req: s.SignRequest) -> s.Plan:
    """Either request shape → one Plan; shape errors are 400 with their own codes."""
    given = [x for x in (req.rel_path, req.uri, req.target) if x is not None]
    if len(given) != 1:
        raise BadRequest("give exactly one of rel_path, uri, target", code="BAD_TARGET")
    rel_path, uri = req.rel_path, req.uri
    if isinstance(req.target, s.Artifact):
        rel_path = req.target.rel_path
    elif isinstance(req.target, s.Blob):
        uri = req.target.uri
    op = req.op
    if isinstance(op, s.MultipartPut):
        plan = s.Plan("multipart", rel_path, uri, op.parts, op.part_size_bytes, op.upload_id)
    elif isinstance(op, s.PutArtifact) and op.multipart_hint is not None:
        hint = op.multipart_hint
        plan = s.Plan("multipart", rel_path, uri, hint.max_parts, hint.part_size_bytes)
    elif isinstance(op, (s.SinglePut, s.PutArtifact)):
        plan = s.Plan("put", rel_path, uri)
    else:
        plan = s.Plan("get", rel_path, uri)
    if plan.uri is not None and plan.action != "get":
        raise BadRequest("a uri may only be read (get), never written", code="URI_WRITE_FORBIDDEN")
    if plan.action == "multipart":
        if plan.parts > s.MAX_PARTS:
            raise BadRequest(f"parts: at most {s.MAX_PARTS}", code="TOO_MANY_PARTS")
        if plan.parts < 1:
            raise BadRequest("parts: at least 1", code="BAD_PARTS")
        if not s.MIN_PART_BYTES <= plan.part_size_bytes <= s.MAX_PART_BYTES:
            raise BadRequest("part_size_bytes: must be 5 MiB..5 GiB", code="BAD_PART_SIZE")
        if plan.upload_id is not None and not _UPLOAD_ID.fullmatch(plan.upload_id):
            raise BadRequest("upload_id: not an upload id", code="BAD_UPLOAD_ID")
    return plan


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key) with the key under the rel_path rules."""
    if not uri.startswith("s3://"):
        raise BadRequest("uri: must be s3://bucket/key", code="BAD_URI")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise BadRequest("uri: must be s3://bucket/key", code="BAD_URI")
    try:
        return bucket, normalise(key)
    except BadRequest as exc:
        raise BadRequest(exc.message.replace("rel_path", "uri key"), code="BAD_URI") from exc


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Signer:
    """Signs for any namespace it is asked about; who may ask is settled before (token or
    NATS permissions)."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.creds: Credentials | None = None
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            self.creds = Credentials(
                settings.s3_access_key_id, settings.s3_secret_access_key, settings.s3_session_token
            )
        style = settings.s3_addressing_style
        self.addressing: Addressing = (
            style if style != "auto" else ("path" if settings.s3_endpoint_url else "virtual")
        )
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self.presigner = (
            Presigner(self.creds, settings.s3_region, public, self.addressing)
            if self.creds
            else None
        )
        self.store = store
        if store is None and self.creds:
            self.store = Store(
                self.creds, settings.s3_region, settings.s3_endpoint_url, self.addressing
            )

    def __repr__(self) -> str:
        return f"Signer(bucket={self.settings.s3_bucket!r}, presigner={self.presigner!r})"

    async def open(self) -> None:
        if self.store is not None:
            await self.store.open()

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    async def sign(self, namespace: str, body: bytes, now: float | None = None) -> Signed:
        """Check, create the upload if multipart, and return what renders the answer; a
        SparkError when refused. The part URLs are signed as the answer is rendered."""
        if len(body) > s.MAX_REQUEST_BYTES:
            raise BadRequest(f"body over {s.MAX_REQUEST_BYTES} bytes", code="BODY_TOO_LARGE")
        try:
            req = s.decode_request(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadRequest(f"malformed sign request: {exc}", code="BAD_REQUEST") from exc
        plan = plan_of(req)
        bucket, key = self._locate(namespace, plan)
        if self.presigner is None or self.store is None:
            raise StoreUnavailable("the signer has no S3 credentials", code="STORE_UNCONFIGURED")
        now = time.time() if now is None else now
        ttl = self.settings.signer_ttl_s
        expires_at = iso(now + ttl)
        uri = f"s3://{bucket}/{key}"
        p = self.presigner
        op = {"multipart": "multipart_put", "put": "single_put", "get": "single_get"}[plan.action]
        audit = Audit(namespace, bucket, key, op, plan.parts, expires_at)
        if plan.action == "multipart":
            upload_id = plan.upload_id or await self.store.create_multipart(bucket, key)
            head = s.MultipartAnswer(
                uri=uri,
                upload_id=upload_id,
                part_size_bytes=plan.part_size_bytes,
                part_urls=[],
                complete_url=p.complete_url(bucket, key, upload_id, ttl, now),
                abort_url=p.abort_url(bucket, key, upload_id, ttl, now),
                list_parts_url=p.list_parts_url(bucket, key, upload_id, ttl, now),
                expires_at=expires_at,
            )
            return Signed(audit, head, p, plan.parts, ttl, now)
        if plan.action == "put":
            url = p.put_url(bucket, key, ttl, now)
            return Signed(audit, s.SingleAnswer("single_put", "PUT", url, {}, expires_at, uri))
        url = p.get_url(bucket, key, ttl, now)
        return Signed(audit, s.SingleAnswer("single_get", "GET", url, {}, expires_at, uri))

    def _locate(self, namespace: str, plan: s.Plan) -> tuple[str, str]:
        """(bucket, key) after the namespace and allow-list rules."""
        if plan.uri is not None:
            bucket, key = split_uri(plan.uri)
            target = f"s3://{bucket}/{key}"
            if not any(target.startswith(allowed) for allowed in self.settings.signer_get_allow):
                raise Forbidden("uri: not in the signer's allow-list", code="NOT_ALLOWED")
            return bucket, key
        prefix = prefix_for(self.settings.signer_prefix, namespace)
        key = check_rel_path(plan.rel_path, prefix)
        if not self.settings.s3_bucket:
            raise StoreUnavailable("the signer has no bucket configured", code="STORE_UNCONFIGURED")
        return self.settings.s3_bucket, key
