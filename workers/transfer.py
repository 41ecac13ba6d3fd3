"""Weights between hosts without credentials on them: ``push`` (a directory on a host → the
store) and ``pull`` (the store → a directory on another host), through presigned URLs.

The executor asks the blob signer for URLs over the bus (the S3 secret stays in the signer) and
hands them to ``curl`` on the host on stdin, never in a command line; the host's bytes go
straight to the store. Every other value in a script is whitelisted, then quoted.

- ``push {path, rel_path, namespace, part_size_bytes?, parallel?}``: each regular file under
  ``path`` becomes the object ``<rel_path>/<file>`` (multipart, parts in parallel), then
  ``<rel_path>/manifest.json`` lists ``{path, size, sha256}`` of every file. Resumable: the upload
  id of an unfinished file is kept in ``spark_state`` (``push.<digest>``); a new attempt asks the
  signer for fresh URLs of the same upload, finds the parts already there with ListParts (its
  first 1,000 parts) and skips them.
  With ``then_pull {host, path}``, a ``pull`` onto that host is queued once the push is done
  (the dashboard's "copy model to host").
- ``pull {rel_path, namespace, path, parallel?}``: reads the manifest, downloads every file to
  ``<path>/<file>.spark-partial``, checks its sha256, then renames it; a file already there
  with the manifest's size and hash is skipped; a failed or cancelled pull leaves no partial
  file.

Progress events carry ``{bytes, total, rate_bps, eta_s, files_done, files_total}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app import contracts as c
from app import jobs, shellsafe
from app.bus import Bus
from app.config import Settings
from app.errors import BadRequest, HostError, SparkError
from app.signer import chunks
from app.signer.paths import normalise
from app.signer.shapes import ErrorAnswer
from workers.actions import JobContext
from workers.weights import KILL_GRACE_S, kill_script

MIB = 2**20
DEFAULT_PART = 64 * MIB
PROGRESS_EVERY_S = 0.5
SIGN_WAIT_S = 30.0
SH = "bash --noprofile --norc -c "
CURL_URL = """-K <(printf 'url = "%s"\\n' "$url")"""
"""curl reads the URL from a config on a pipe: a presigned URL never appears in ``ps``."""


# --- host scripts ----------------------------------------------------------------------------


def inventory_script(path: str) -> str:
    """``F<TAB>size<TAB>sha256<TAB>relative path`` for every regular file under ``path``."""
    return (
        f"cd -- {shellsafe.quote(path)} || exit 3\n"
        "find . -type f -print0 | sort -z | while IFS= read -r -d '' f; do\n"
        '  s=$(stat -c %s -- "$f") && h=$(sha256sum -- "$f" | cut -d" " -f1) || exit 4\n'
        '  printf \'F\\t%s\\t%s\\t%s\\n\' "$s" "$h" "${f#./}"\n'
        "done\n"
    )


def send_script(method: str) -> str:
    """stdin: a URL line, then the body. Prints the store's answer and ``__STATUS <code>``."""
    return (
        "IFS= read -r url\n"
        f"curl -sS -X {method} --data-binary @- -H 'Content-Type:' {CURL_URL} "
        "-w '\\n__STATUS %{http_code}\\n'\n"
    )


LIST_SCRIPT = f"IFS= read -r url\ncurl -sS {CURL_URL} -w '\\n__STATUS %{{http_code}}\\n'\n"


def upload_script(path: str, parallel: int, nonce: str) -> str:
    """stdin: ``n<TAB>offset<TAB>size<TAB>url`` per part. Prints ``P n size etag`` per part
    uploaded, ``X n reason`` per part refused; at most ``parallel`` curls at once."""
    return (
        f"f={shellsafe.quote(path)}\n"
        f"printf '__SPARK_{nonce} pid %s\\n' \"$$\"\n"
        "up() {\n"
        "  local n=$1 off=$2 size=$3 url=$4 out\n"
        '  if ! out=$(dd if="$f" bs=4M iflag=skip_bytes,count_bytes skip="$off" count="$size" '
        "status=none | curl -sS -f -X PUT --data-binary @- -H 'Content-Type:' "
        f"-D - -o /dev/null {CURL_URL} 2>&1); then\n"
        '    printf \'X\\t%s\\t%s\\n\' "$n" "$(printf \'%s\' "$out" | tail -n 1)"; return 0\n'
        "  fi\n"
        "  etag=$(printf '%s\\n' \"$out\" | tr -d '\\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: *//p' "
        "| tail -n 1)\n"
        '  printf \'P\\t%s\\t%s\\t%s\\n\' "$n" "$size" "$etag"\n'
        "}\n"
        "while IFS=$'\\t' read -r n off size url; do\n"
        f'  while [ "$(jobs -rp | wc -l)" -ge {parallel} ]; do wait -n; done\n'
        '  up "$n" "$off" "$size" "$url" &\n'
        "done\n"
        "wait\n"
    )


def download_script(dest: str, parallel: int, nonce: str) -> str:
    """stdin: ``sha256<TAB>size<TAB>relative path<TAB>url`` per file. Prints ``G path size``
    per verified file, ``S path size`` per file already there with that hash (skipped),
    ``H path`` per hash mismatch, ``X path reason`` per failure. Partial files are removed on
    any exit."""
    return (
        f"d={shellsafe.quote(dest)}\n"
        f"printf '__SPARK_{nonce} pid %s\\n' \"$$\"\n"
        "clean() { find \"$d\" -name '*.spark-partial' -type f -delete 2>/dev/null; }\n"
        "trap clean EXIT; trap 'exit 143' TERM INT\n"
        "get() {\n"
        '  local sha=$1 size=$2 rel=$3 url=$4 t="$d/$3.spark-partial" err\n'
        '  if [ -f "$d/$rel" ] && [ "$(stat -c %s -- "$d/$rel")" = "$size" ] &&\n'
        '     [ "$(sha256sum -- "$d/$rel" | cut -d" " -f1)" = "$sha" ]; then\n'
        '    printf \'S\\t%s\\t%s\\n\' "$rel" "$size"; return\n'
        "  fi\n"
        '  mkdir -p -- "$(dirname -- "$d/$rel")" || {\n'
        "    printf 'X\\t%s\\tmkdir\\n' \"$rel\"; return; }\n"
        f'  if ! err=$(curl -sS -f -o "$t" {CURL_URL} 2>&1); then\n'
        '    rm -f -- "$t"\n'
        '    printf \'X\\t%s\\t%s\\n\' "$rel" "$(printf \'%s\' "$err" | tail -n 1)"; return\n'
        "  fi\n"
        '  if [ "$(sha256sum -- "$t" | cut -d" " -f1)" != "$sha" ]; then\n'
        '    rm -f -- "$t"; printf \'H\\t%s\\n\' "$rel"; return\n'
        "  fi\n"
        '  mv -f -- "$t" "$d/$rel" && printf \'G\\t%s\\t%s\\n\' "$rel" "$size"\n'
        "}\n"
        'mkdir -p -- "$d" || exit 3\n'
        "while IFS=$'\\t' read -r sha size rel url; do\n"
        f'  while [ "$(jobs -rp | wc -l)" -ge {parallel} ]; do wait -n; done\n'
        '  get "$sha" "$size" "$rel" "$url" &\n'
        "done\n"
        "wait\n"
    )


# --- values ----------------------------------------------------------------------------------


class FileEntry(msgspec.Struct):
    path: str
    size: int
    sha256: str


class Manifest(msgspec.Struct, kw_only=True):
    """``<rel_path>/manifest.json``: what a push wrote, for a pull to fetch and verify."""

    files: list[FileEntry]
    source_host: str
    created_at: float


def _args(ctx: JobContext, allowed: set[str]) -> dict[str, Any]:
    args = ctx.args_only(allowed)
    try:
        c.token(args.get("namespace", ""), "namespace")
    except c.BadToken as exc:
        raise BadRequest("namespace: must match [A-Za-z0-9_-]{1,64}", code="BAD_ARGS") from exc
    parallel = args.get("parallel", 4)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= 32:
        raise BadRequest("parallel: must be an integer in 1..32", code="BAD_ARGS")
    return args


def _prefix(value: object) -> str:
    """The object prefix of a transfer (a rel_path without a trailing '/')."""
    if not isinstance(value, str):
        raise BadRequest("rel_path: must be a string", code="BAD_ARGS")
    return normalise(value.rstrip("/"))


def _file_path(value: str) -> str:
    """A file's path relative to the directory: the rel_path rule (no '..', no control
    characters; tabs and newlines included)."""
    return normalise(value)


@dataclass
class Meter:
    """Bytes moved, rate and ETA, reported at most every PROGRESS_EVERY_S."""

    total: int
    files_total: int
    done: int = 0
    files_done: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    sent_at: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        moved = self.done - self.skipped
        rate = moved / elapsed if moved else None
        eta = (self.total - self.done) / rate if rate else None
        return {
            "bytes": self.done, "total": self.total,
            "rate_bps": round(rate) if rate else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "files_done": self.files_done, "files_total": self.files_total,
        }  # fmt: skip

    async def report(self, ctx: JobContext, what: str, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.sent_at < PROGRESS_EVERY_S:
            return
        self.sent_at = now
        snap = self.snapshot()
        await ctx.progress(f"{what}: {snap['bytes']} of {snap['total']} bytes", data=snap)


# --- the signer and the host -----------------------------------------------------------------


async def sign(bus: Bus, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Ask the blob signer; its refusal becomes a SparkError with the signer's code."""
    async with chunks.request(
        bus.nc, c.blob_sign(namespace), msgspec.json.encode(body), SIGN_WAIT_S
    ) as reply:
        if reply.error is not None:
            err = msgspec.json.decode(reply.error, type=ErrorAnswer)
            raise SparkError(err.error, code=err.code, status=err.status or 502)
        answer: dict[str, Any] = msgspec.json.decode(await reply.body())
        return answer


async def _lines(ctx: JobContext, script: str, stdin: bytes) -> AsyncGenerator[str, None]:
    async with contextlib.aclosing(
        ctx.runner.transport.stream_input(SH + shellsafe.quote(script), stdin)
    ) as lines:
        async for line in lines:
            yield line


async def _send(ctx: JobContext, method: str, url: str, body: bytes) -> tuple[int, str]:
    """One request from the host (complete, manifest put): (HTTP status, answer body)."""
    out = [line async for line in _lines(ctx, send_script(method), url.encode() + b"\n" + body)]
    return _status(out)


def _status(out: list[str]) -> tuple[int, str]:
    status = 0
    for line in out:
        if line.startswith("__STATUS "):
            status = int(line.split()[1]) if line.split()[1].isdigit() else 0
    return status, "\n".join(line for line in out if not line.startswith("__STATUS "))


async def _guarded(
    ctx: JobContext, script: str, stdin: bytes, nonce: str
) -> AsyncGenerator[str, None]:
    """A long host script whose process group is killed if the job is cancelled."""
    mark, pid = f"__SPARK_{nonce} pid ", None
    try:
        async for line in _lines(ctx, script, stdin):
            if line.startswith(mark):
                pid = int(line[len(mark) :])
                continue
            yield line
    except BaseException:
        if pid is not None:
            with contextlib.suppress(SparkError):
                await ctx.runner.transport.exec(kill_script(pid), timeout=KILL_GRACE_S + 10)
        raise


def _etags(xml_text: str) -> dict[int, tuple[str, int]]:
    """ListParts answer → {part number: (ETag, size)}."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise HostError("the store's ListParts answer is not XML", code="PUSH_FAILED") from exc
    found = {}
    for part in root.iter():
        if part.tag.rsplit("}", 1)[-1] != "Part":
            continue
        values = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in part}
        with contextlib.suppress(KeyError, ValueError):
            found[int(values["PartNumber"])] = (values["ETag"], int(values["Size"]))
    return found


def complete_xml(etags: dict[int, str]) -> bytes:
    parts = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{etags[n]}</ETag></Part>" for n in sorted(etags)
    )
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()


# --- push ------------------------------------------------------------------------------------


class Push:
    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus, self.settings = bus, settings

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # run again: finished files are re-signed cheaply, parts are skipped

    async def run(self, ctx: JobContext) -> Any:
        allowed = {"path", "rel_path", "namespace", "part_size_bytes", "parallel", "then_pull"}
        args = _args(ctx, allowed)
        path = shellsafe.check_local_path(args.get("path"), "path")
        then_pull = self._then_pull(args.get("then_pull"))
        prefix, namespace = _prefix(args.get("rel_path")), args["namespace"]
        part_size = args.get("part_size_bytes", DEFAULT_PART)
        if (
            isinstance(part_size, bool)
            or not isinstance(part_size, int)
            or not (5 * MIB <= part_size <= 5 * 2**30)
        ):
            raise BadRequest("part_size_bytes: must be an integer in 5 MiB..5 GiB", code="BAD_ARGS")
        res = await ctx.runner.run(inventory_script(path), timeout=ctx.timeout_s)
        if res.exit_status != 0:
            raise HostError(f"push: cannot read {path} (exit {res.exit_status})",
                            code="PUSH_FAILED")  # fmt: skip
        files = []
        for line in res.stdout.splitlines():
            _, size, sha, rel = line.split("\t", 3)
            files.append(FileEntry(_file_path(rel), int(size), sha))
        if not files:
            raise BadRequest(f"push: no files under {path}", code="PUSH_EMPTY")
        meter = Meter(sum(f.size for f in files), len(files))
        await ctx.progress(f"pushing {len(files)} files from {path}", data=meter.snapshot())
        for entry in files:
            await self._file(ctx, namespace, f"{prefix}/{entry.path}", path, entry, part_size,
                             args.get("parallel", 4), meter)  # fmt: skip
            meter.files_done += 1
            await meter.report(ctx, "push")
        manifest = Manifest(files=files, source_host=ctx.host.alias, created_at=c.now())
        where = {"rel_path": f"{prefix}/manifest.json", "op": {"kind": "single_put"}}
        put = await sign(self.bus, namespace, where)
        status, _ = await _send(ctx, "PUT", put["url"], msgspec.json.encode(manifest))
        if status != 200:
            raise HostError(f"push: manifest refused by the store ({status})", code="PUSH_FAILED")
        await meter.report(ctx, "push", final=True)
        result = {"host": ctx.host.alias, "uri": put["uri"].rsplit("/", 1)[0] + "/",
                  "files": len(files), "bytes": meter.total,
                  "skipped_bytes": meter.skipped}  # fmt: skip
        if then_pull is not None:
            result["pull_job"] = await self._queue_pull(ctx, then_pull, prefix, namespace)
        return result

    def _then_pull(self, value: object) -> tuple[str, str] | None:
        """``then_pull {host, path}``: the pull queued on another host once the push is done."""
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) != {"host", "path"}:
            raise BadRequest("then_pull: must be {host, path}", code="BAD_ARGS")
        host = value["host"]
        if not isinstance(host, str) or self.settings.host(host) is None:
            raise BadRequest("then_pull.host: not a configured host", code="BAD_ARGS")
        return host, shellsafe.check_local_path(value["path"], "then_pull.path")

    async def _queue_pull(
        self, ctx: JobContext, target: tuple[str, str], prefix: str, namespace: str
    ) -> str:
        """Queue the pull once: its job id derives from this job's, so a re-run or a
        takeover finds it instead of queueing another."""
        key = f"{ctx.job.id}-pull"
        if len(key) > 64:
            key = hashlib.sha256(ctx.job.id.encode()).hexdigest()[:32] + "-pull"
        host, path = target
        args = {"path": path, "rel_path": prefix, "namespace": namespace}
        job, _ = await jobs.submit(
            self.bus, self.settings, host, "pull", args,
            key=key, timeout_s=ctx.timeout_s, requested_by=f"push {ctx.job.id}",
        )  # fmt: skip
        await ctx.progress(f"queued pull {job.id} on {host}", data={"pull_job": job.id})
        return job.id

    async def _file(
        self, ctx: JobContext, namespace: str, key: str, root: str, entry: FileEntry,
        part_size: int, parallel: int, meter: Meter,
    ) -> None:  # fmt: skip
        if entry.size == 0:  # no parts to speak of: one empty PUT
            put = await sign(self.bus, namespace, {"rel_path": key, "op": {"kind": "single_put"}})
            status, _ = await _send(ctx, "PUT", put["url"], b"")
            if status != 200:
                raise HostError(f"push: {entry.path} refused by the store ({status})",
                                code="PUSH_FAILED")  # fmt: skip
            return None
        parts = min(max(1, math.ceil(entry.size / part_size)), 10_000)
        if parts * part_size < entry.size:
            raise BadRequest(f"push: {entry.path} needs over 10,000 parts of {part_size} bytes",
                             code="TOO_MANY_PARTS")  # fmt: skip
        state_key = c.push_state_key(hashlib.sha256(f"{namespace}/{key}".encode()).hexdigest())
        upload_id = await self._upload_id(state_key)
        op: dict[str, Any] = {"kind": "multipart_put", "parts": parts, "part_size_bytes": part_size}
        if upload_id:
            op["upload_id"] = upload_id
        try:
            answer = await sign(self.bus, namespace, {"rel_path": key, "op": op})
        except SparkError:
            if not upload_id:
                raise
            await self.bus.state.delete(state_key)  # a stale upload: start a new one
            del op["upload_id"]
            answer = await sign(self.bus, namespace, {"rel_path": key, "op": op})
        await self.bus.state.put(state_key, answer["uploadId"].encode())
        out = [
            line async for line in _lines(ctx, LIST_SCRIPT, answer["listPartsUrl"].encode() + b"\n")
        ]
        status, text = _status(out)
        have = _etags(text) if status == 200 else {}
        if status == 404:  # the upload is gone (completed or aborted): a fresh one
            await self.bus.state.delete(state_key)
            return await self._file(ctx, namespace, key, root, entry, part_size, parallel, meter)
        etags: dict[int, str] = {}
        todo = []
        for n in range(1, parts + 1):
            offset, size = (n - 1) * part_size, min(part_size, entry.size - (n - 1) * part_size)
            known = have.get(n)
            if known and known[1] == size:
                etags[n] = known[0]
                meter.done += size
                meter.skipped += size
                continue
            todo.append(f"{n}\t{offset}\t{size}\t{answer['partUrls'][n - 1]}\n")
        failed: list[str] = []
        if todo:
            nonce = secrets.token_hex(8)
            script = upload_script(f"{root}/{entry.path}", parallel, nonce)
            async for line in _guarded(ctx, script, "".join(todo).encode(), nonce):
                kind, _, rest = line.partition("\t")
                if kind == "P":
                    n_text, size_text, etag = rest.split("\t", 2)
                    etags[int(n_text)] = etag
                    meter.done += int(size_text)
                    await meter.report(ctx, "push")
                elif kind == "X":
                    failed.append(rest[:300])
        if failed or len(etags) != parts:
            missing = len(failed) or parts - len(etags)
            raise HostError(f"push: {missing} part(s) of {entry.path} not uploaded: {failed[:1]}",
                            code="PUSH_FAILED")  # fmt: skip
        status, body = await _send(ctx, "POST", answer["completeUrl"], complete_xml(etags))
        if status != 200 or "<Error>" in body:
            raise HostError(f"push: the store refused to complete {entry.path} ({status})",
                            code="PUSH_FAILED")  # fmt: skip
        await self.bus.state.delete(state_key)
        return None

    async def _upload_id(self, state_key: str) -> str | None:
        with contextlib.suppress(Exception):
            entry = await self.bus.state.get(state_key)
            return entry.value.decode() if entry.value else None
        return None


# --- pull ------------------------------------------------------------------------------------


class Pull:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # run again: files are re-downloaded and verified

    async def run(self, ctx: JobContext) -> Any:
        args = _args(ctx, {"path", "rel_path", "namespace", "parallel"})
        dest = shellsafe.check_local_path(args.get("path"), "path")
        prefix, namespace = _prefix(args.get("rel_path")), args["namespace"]
        where = {"rel_path": f"{prefix}/manifest.json", "op": {"kind": "single_get"}}
        get = await sign(self.bus, namespace, where)
        out = [line async for line in _lines(ctx, LIST_SCRIPT, get["url"].encode() + b"\n")]
        status, text = _status(out)
        if status != 200:
            raise SparkError(f"pull: no manifest at {get['uri']} ({status})",
                             code="PULL_NOT_FOUND", status=404)  # fmt: skip
        try:
            manifest = msgspec.json.decode(text, type=Manifest)
        except msgspec.DecodeError as exc:
            raise HostError("pull: the manifest is not valid", code="PULL_FAILED") from exc
        meter = Meter(sum(f.size for f in manifest.files), len(manifest.files))
        lines = []
        for entry in manifest.files:
            rel = _file_path(entry.path)
            one = {"rel_path": f"{prefix}/{rel}", "op": {"kind": "single_get"}}
            signed = await sign(self.bus, namespace, one)
            lines.append(f"{entry.sha256}\t{entry.size}\t{rel}\t{signed['url']}\n")
        await ctx.progress(f"pulling {len(lines)} files into {dest}", data=meter.snapshot())
        nonce, problems = secrets.token_hex(8), []
        script = download_script(dest, args.get("parallel", 4), nonce)
        async for line in _guarded(ctx, script, "".join(lines).encode(), nonce):
            kind, _, rest = line.partition("\t")
            if kind in ("G", "S"):
                size = int(rest.rsplit("\t", 1)[1])
                meter.done += size
                meter.skipped += size if kind == "S" else 0
                meter.files_done += 1
                await meter.report(ctx, "pull")
            elif kind == "H":
                problems.append(f"{rest}: sha256 mismatch")
            elif kind == "X":
                problems.append(rest[:300])
        if problems or meter.files_done != len(lines):
            code = "PULL_HASH_MISMATCH" if any("sha256" in p for p in problems) else "PULL_FAILED"
            raise HostError(f"pull: {len(problems)} file(s) failed: {problems[:2]}", code=code)
        await meter.report(ctx, "pull", final=True)
        return {"host": ctx.host.alias, "path": dest, "files": len(lines), "bytes": meter.total,
                "skipped_bytes": meter.skipped, "source_host": manifest.source_host}  # fmt: skip
