"""SigV4 query presigning for S3, written directly.

The signing key depends only on (day, region, service), so it is derived once and cached; each
URL then costs one SHA-256 of the canonical request and one HMAC. The output is byte-identical
to botocore's ``generate_presigned_url`` for the same clock (tests/unit/test_sigv4.py proves it),
query parameters in botocore's order: the operation's own, then the ``X-Amz-*`` ones.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
MAX_EXPIRES_S = 604_800
"""SigV4's ceiling: seven days."""

Addressing = Literal["path", "virtual"]


@dataclass(frozen=True)
class Credentials:
    """An S3 identity. ``repr`` never shows the secret or the session token."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def _q(value: str) -> str:
    """Query-component encoding, as SigV4 and botocore do it (RFC 3986 unreserved kept)."""
    return quote(value, safe="-_.~")


def _path(key: str) -> str:
    return quote(key, safe="/~")


def default_endpoint(region: str) -> str:
    """AWS's own S3 endpoint for a region (botocore's choice when none is configured)."""
    if region == "us-east-1":
        return "https://s3.amazonaws.com"
    return f"https://s3.{region}.amazonaws.com"


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


def _hostable(bucket: str, scheme: str) -> bool:
    """Can ``bucket`` be the first labels of a host name (S3's virtual-hosted rule)?"""
    if not 3 <= len(bucket) <= 63 or _IPV4.fullmatch(bucket):
        return False
    labels = bucket.split(".")
    if len(labels) > 1 and scheme == "https":
        return False
    return all(_LABEL.fullmatch(label) for label in labels)


def _host(endpoint_url: str) -> tuple[str, str]:
    """(scheme, host[:port]) with a default port left out, as the client will send Host."""
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("endpoint_url must be an http(s) URL with a host")
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname if parts.port in (None, default) else f"{parts.hostname}:{parts.port}"
    return parts.scheme, host


def _hmac_pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states after the HMAC inner and outer pads of ``key`` (RFC 2104)."""
    block = key.ljust(64, b"\0")  # SigV4 keys are 32 bytes, under the block size
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


@dataclass(frozen=True)
class _Frame:
    """What every URL of one batch shares: clock, scope, host, path, X-Amz-* parameters."""

    amz_enc: list[tuple[str, str]]
    amz_query: str
    head: str
    tail: str
    sts_head: str
    key: bytes = field(repr=False)
    base: str


@dataclass(frozen=True)
class PartTemplate:
    """Every part URL of one upload and clock: ``prefix``, the part number in decimal,
    ``suffix``, then the signature in lower-case hex. Not a secret: no key is in it."""

    prefix: str
    suffix: str


@dataclass(frozen=True)
class PartRecipe:
    """What a PartSigner is built from, as bytes (so a helper process can build the same one):
    the canonical request up to the part number and after it, the day's signing key, the
    string to sign up to the canonical hash. ``repr`` never shows the key."""

    prefix: bytes
    rest: bytes
    key: bytes = field(repr=False)
    sts_head: bytes


class PartSigner:
    """Signs the parts of one multipart upload for one clock. Built once per answer: the
    canonical request's shared prefix is hashed once, as are the HMAC key's inner and outer
    pads and the string to sign up to the canonical hash; per part only copies of those
    states are updated."""

    def __init__(self, template: PartTemplate, recipe: PartRecipe) -> None:
        self.template, self.recipe = template, recipe
        self._prefix = hashlib.sha256(recipe.prefix)
        self._rest = recipe.rest
        self._inner, self._outer = _hmac_pads(recipe.key)
        self._inner.update(recipe.sts_head)

    def __repr__(self) -> str:
        return f"PartSigner(prefix={self.template.prefix!r})"

    def signatures(self, first: int, count: int) -> bytes:
        """Raw 32-byte signatures of parts ``first``..``first + count - 1``, concatenated."""
        prefix, rest, inner, outer = self._prefix, self._rest, self._inner, self._outer
        sigs: list[bytes] = []
        append = sigs.append
        for n in range(first, first + count):
            h = prefix.copy()
            h.update(b"%d%b" % (n, rest))
            i = inner.copy()
            i.update(h.hexdigest().encode())
            o = outer.copy()
            o.update(i.digest())
            append(o.digest())
        return b"".join(sigs)

    def urls(self, first: int, count: int) -> list[str]:
        """The URLs of parts ``first``..``first + count - 1``."""
        sigs = self.signatures(first, count)
        start, end = self.template.prefix, self.template.suffix
        return [f"{start}{first + k}{end}{sigs[32 * k : 32 * k + 32].hex()}" for k in range(count)]


class Presigner:
    """Presigns S3 requests for one endpoint, region and identity."""

    def __init__(
        self,
        credentials: Credentials,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        addressing: Addressing = "path",
        service: str = "s3",
    ) -> None:
        self._creds = credentials
        self.region, self.service, self.addressing = region, service, addressing
        self.scheme, self.netloc = _host(endpoint_url or default_endpoint(region))
        self._keys: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"Presigner(region={self.region!r}, endpoint={self.scheme}://{self.netloc})"

    def signing_key(self, day: str) -> bytes:
        """HMAC chain of the secret over (day, region, service), cached per day."""
        key = self._keys.get(day)
        if key is None:
            key = ("AWS4" + self._creds.secret_key).encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self._keys = {day: key}  # one day at a time: older keys are never needed again
        return key

    def _where(self, bucket: str, key: str) -> tuple[str, str]:
        """(host, canonical path) for an object. Virtual-hosted only for a bucket that can be
        a host name (dotted ones not over https, whose certificates would not match), else
        path-style, as botocore does."""
        if self.addressing == "virtual" and _hostable(bucket, self.scheme):
            return f"{bucket}.{self.netloc}", "/" + _path(key)
        return self.netloc, f"/{_path(bucket)}/{_path(key)}"

    def _frame(
        self, method: str, bucket: str, key: str, expires_s: int, now: float | None
    ) -> _Frame:
        if not 1 <= expires_s <= MAX_EXPIRES_S:
            raise ValueError(f"expires_s must be 1..{MAX_EXPIRES_S}")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        scope = f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"
        host, path = self._where(bucket, key)
        amz = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self._creds.access_key}/{scope}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires_s)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if self._creds.session_token:
            amz.append(("X-Amz-Security-Token", self._creds.session_token))
        amz_enc = [(_q(k), _q(v)) for k, v in amz]
        return _Frame(
            amz_enc=amz_enc,
            amz_query="&".join(f"{k}={v}" for k, v in amz_enc),
            head=f"{method}\n{path}\n",
            tail=f"\nhost:{host}\n\nhost\n{UNSIGNED}",
            sts_head=f"{ALGORITHM}\n{stamp}\n{scope}\n",
            key=self.signing_key(stamp[:8]),
            base=f"{self.scheme}://{host}{path}?",
        )

    def presign_many(
        self,
        method: str,
        bucket: str,
        key: str,
        queries: Sequence[Sequence[tuple[str, str]]],
        expires_s: int,
        now: float | None = None,
    ) -> list[str]:
        """One URL per query list (the operation's own parameters, in botocore's order), all
        signed with the same clock."""
        f = self._frame(method, bucket, key, expires_s, now)
        urls = []
        for query in queries:
            own = [(_q(k), _q(v)) for k, v in query]
            canonical_query = "&".join(f"{k}={v}" for k, v in sorted(own + f.amz_enc))
            digest = hashlib.sha256((f.head + canonical_query + f.tail).encode()).hexdigest()
            signature = hmac.digest(f.key, (f.sts_head + digest).encode(), "sha256").hex()
            own_query = "".join(f"{k}={v}&" for k, v in own)
            urls.append(f"{f.base}{own_query}{f.amz_query}&X-Amz-Signature={signature}")
        return urls

    def presign(
        self,
        method: str,
        bucket: str,
        key: str,
        query: Sequence[tuple[str, str]] = (),
        expires_s: int = MAX_EXPIRES_S,
        now: float | None = None,
    ) -> str:
        return self.presign_many(method, bucket, key, [query], expires_s, now)[0]

    def part_urls(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: int,
        expires_s: int,
        now: float | None = None,
        first: int = 1,
    ) -> list[str]:
        """PUT URLs of parts ``first``..``first + parts - 1`` of a multipart upload (S3
        ``UploadPart``); a big answer is signed in batches with the same ``now``."""
        return self.part_signer(bucket, key, upload_id, expires_s, now).urls(first, parts)

    def part_signer(
        self, bucket: str, key: str, upload_id: str, expires_s: int, now: float | None = None
    ) -> PartSigner:
        """What signs the parts of one upload: its URLs, or only its template and the raw
        signatures (the compact answer)."""
        f = self._frame("PUT", bucket, key, expires_s, now)
        uid = _q(upload_id)
        # Lower-case names sort after every ``X-Amz-*``: the canonical query is the sorted
        # X-Amz part, then partNumber, then uploadId.
        sorted_amz = "&".join(f"{k}={v}" for k, v in sorted(f.amz_enc))
        return PartSigner(
            PartTemplate(f"{f.base}uploadId={uid}&partNumber=", f"&{f.amz_query}&X-Amz-Signature="),
            PartRecipe(
                prefix=f"{f.head}{sorted_amz}&partNumber=".encode(),
                rest=f"&uploadId={uid}{f.tail}".encode(),
                key=f.key,
                sts_head=f.sts_head.encode(),
            ),
        )

    def get_url(self, bucket: str, key: str, expires_s: int, now: float | None = None) -> str:
        return self.presign("GET", bucket, key, (), expires_s, now)

    def put_url(self, bucket: str, key: str, expires_s: int, now: float | None = None) -> str:
        return self.presign("PUT", bucket, key, (), expires_s, now)

    def complete_url(
        self, bucket: str, key: str, upload_id: str, expires_s: int, now: float | None = None
    ) -> str:
        return self.presign("POST", bucket, key, [("uploadId", upload_id)], expires_s, now)

    def abort_url(
        self, bucket: str, key: str, upload_id: str, expires_s: int, now: float | None = None
    ) -> str:
        return self.presign("DELETE", bucket, key, [("uploadId", upload_id)], expires_s, now)

    def list_parts_url(
        self, bucket: str, key: str, upload_id: str, expires_s: int, now: float | None = None
    ) -> str:
        """GET of ``ListParts``: lets a credential-free host resume an interrupted upload."""
        return self.presign("GET", bucket, key, [("uploadId", upload_id)], expires_s, now)
