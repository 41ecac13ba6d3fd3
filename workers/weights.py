"""Model weights in a host's Hugging Face cache: ``download``, ``delete`` and ``disk``.

The cache is where huggingface_hub puts it, computed on the host by one shell expression
(:data:`CACHE_EXPR`: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``${XDG_CACHE_HOME:-$HOME/.cache}/huggingface/hub``), in the same kind of shell for the three
actions, and handed to ``hf download --cache-dir`` so the CLI writes exactly where ``disk`` and
``delete`` look.

``download`` runs the CLI on its own SSH channel (it is long: not on the kept shell), its
stderr merged into stdout so lines keep their order, and turns its tqdm bars into ``progress``
events ``{bytes, total, rate_bps, eta_s, files_done, files_total}`` (at most
:data:`PROGRESS_EVERY_S` apart). The token (settings
``hf_token``) travels on that channel's stdin, read by the remote shell's ``read`` builtin into
the CLI's environment: never in an argv (``ps``, the simulator's commands.log), an event, a log
line, an error or the job record; a line of output that contains it is masked. Cancel (or the
job's timeout) kills the download's process group on the host and waits until it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from app import shellsafe
from app.bus import Bus
from app.config import Settings
from app.errors import BadRequest, HostError, SparkError
from workers.actions import JobContext

CACHE_EXPR = '"${HF_HUB_CACHE:-${HF_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/huggingface}/hub}"'
"""The hub cache directory, as the host's huggingface_hub computes it (a double-quoted word)."""
PROGRESS_EVERY_S = 0.5
KILL_GRACE_S = 3.0
PID_WAIT_S = 5.0
DRAIN_S = 5.0
TAIL = 20
MASK = "[hf_token]"

REVISION_RE = r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}"
_TOKEN_OK = re.compile(r"[\x21-\x7e]{1,1024}")


# --- values ----------------------------------------------------------------------------------


def check_repo(value: object, field: str = "repo") -> str:
    """shellsafe's HF repo rule, plus huggingface_hub's own: no ``--`` or ``..`` (the cache
    folder ``models--owner--name`` must map back to exactly one repo)."""
    repo = shellsafe.check_repo(value, field)
    if "--" in repo or ".." in repo:
        raise shellsafe.UnsafeValue(f"{field}: must not contain '--' or '..'")
    return repo


def check_revision(value: object, field: str = "revision") -> str:
    """A branch, tag or commit: no leading '-', no '..', no '//'."""
    if not isinstance(value, str) or not re.fullmatch(REVISION_RE, value):
        raise shellsafe.UnsafeValue(f"{field}: must be a branch, tag or commit ({REVISION_RE})")
    if ".." in value or "//" in value or value.endswith("/"):
        raise shellsafe.UnsafeValue(f"{field}: must not contain '..' or empty path segments")
    return value


def folder(repo: str) -> str:
    """The cache folder of a (validated) model repo: ``models--owner--name``."""
    return "models--" + repo.replace("/", "--")


def repo_of(name: str) -> str | None:
    """``models--owner--name`` → ``owner/name``; None for anything else."""
    if not name.startswith("models--"):
        return None
    parts = name[len("models--") :].split("--")
    return "/".join(parts) if len(parts) == 2 and all(parts) else None


def _token(settings: Settings) -> str | None:
    token = settings.hf_token
    if not token:
        return None
    if not _TOKEN_OK.fullmatch(token):
        raise SparkError(
            "settings hf_token: must be printable ASCII without spaces", code="HF_TOKEN_INVALID"
        )
    return token


# --- progress --------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BAR = re.compile(
    r"^(?P<desc>.*?):\s*\d+%\|[^|]*\|\s*"
    r"(?P<n>[\d.]+\s*[kMGTPE]?i?)B?\s*/\s*(?P<total>[\d.]+\s*[kMGTPE]?i?)B?\s*"
    r"\[[^<\]]*<[^,\]]*,\s*(?P<rate>[^\]]*?)\s*(?:,[^\]]*)?\]"
)
_SIZE = re.compile(r"([\d.]+)\s*([kMGTPE]?)(i?)")


def _size(text: str) -> float:
    """``8.39M`` → 8390000.0; ``1.5Gi`` → 1.5 x 1024**3. Raises ValueError."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(text)
    number, unit = float(m[1]), m[2]
    return number * (1024 if m[3] else 1000) ** ("kMGTPE".index(unit) + 1) if unit else number


@dataclass
class _Bar:
    n: float
    total: float
    rate: float | None


@dataclass
class Progress:
    """Aggregates the CLI's tqdm bars (one per file, plus ``Fetching N files``)."""

    files: dict[str, _Bar] = field(default_factory=dict)
    files_done: int | None = None
    files_total: int | None = None

    def feed(self, line: str) -> bool:
        """Take one output line; True if it was a progress bar."""
        m = _BAR.match(_ANSI.sub("", line).strip())
        if not m:
            return False
        rate_text = m["rate"]
        try:
            n, total = _size(m["n"]), _size(m["total"])
        except ValueError:
            return False
        if rate_text.endswith("it/s") or rate_text.endswith("s/it"):
            if m["desc"].startswith("Fetching"):
                self.files_done, self.files_total = int(n), int(total)
            return True
        rate: float | None = None
        with contextlib.suppress(ValueError, ZeroDivisionError):
            if rate_text.endswith("B/s"):
                rate = _size(rate_text[: -len("B/s")])
            elif rate_text.endswith("s/B"):
                rate = 1 / float(rate_text[: -len("s/B")])
        self.files[m["desc"].strip()] = _Bar(n, total, rate)
        return True

    def finish(self) -> None:
        for bar in self.files.values():
            bar.n, bar.rate = bar.total, None
        if self.files_total is not None:
            self.files_done = self.files_total

    def snapshot(self) -> dict[str, Any]:
        done = sum(min(b.n, b.total) for b in self.files.values())
        total = sum(b.total for b in self.files.values())
        rates = [b.rate for b in self.files.values() if b.n < b.total and b.rate]
        rate = sum(rates) if rates else None
        eta = (total - done) / rate if rate else (0.0 if total and done >= total else None)
        return {
            "bytes": int(done),
            "total": int(total),
            "rate_bps": round(rate) if rate is not None else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "files_done": self.files_done,
            "files_total": self.files_total,
        }


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


# --- download --------------------------------------------------------------------------------


def download_script(repo: str, revision: str | None, nonce: str) -> str:
    """The remote script (bash). Line 1 of its stdin is the token, or empty for none."""
    mark = f"__SPARK_{nonce}"
    rev = f" --revision {shellsafe.quote(revision)}" if revision else ""
    return (
        "IFS= read -r __t || true\n"
        'if [ -n "$__t" ]; then export HF_TOKEN="$__t"; fi\n'
        "unset __t HF_HUB_DISABLE_PROGRESS_BARS\n"
        'PATH="$PATH:$HOME/.local/bin"\n'
        f"cache={CACHE_EXPR}\n"
        f"printf '\\n{mark} pid %s\\n' \"$$\"\n"
        f"printf '\\n{mark} cache %s\\n' \"$cache\"\n"
        "if command -v hf >/dev/null 2>&1; then cli=hf\n"
        "elif command -v huggingface-cli >/dev/null 2>&1; then cli=huggingface-cli\n"
        "else echo 'neither hf nor huggingface-cli is installed on this host' >&2\n"
        f"  printf '\\n{mark} exit 127\\n'; exit 127; fi\n"
        f'"$cli" download {shellsafe.quote(repo)}{rev} --cache-dir "$cache" </dev/null 2>&1\n'
        "rc=$?\n"
        f"if [ \"$rc\" -eq 0 ]; then printf '\\n{mark} size %s\\n' "
        f'"$(du -sb -- "$cache"/{shellsafe.quote(folder(repo))} 2>/dev/null | cut -f1)"; fi\n'
        f"printf '\\n{mark} exit %d\\n' \"$rc\"\n"
    )


def kill_script(pid: int, grace_s: float = KILL_GRACE_S) -> str:
    """TERM the process group of ``pid`` (the download's), wait until no live (non-zombie)
    member is left, KILL after ``grace_s``; never the caller's own group."""
    steps = max(1, round(grace_s / 0.1))
    live = (
        "ps -eo pgid=,stat= 2>/dev/null | "
        "awk -v g=\"$pg\" '$1 == g && $2 !~ /^Z/ {f = 1} END {exit !f}'"
    )
    return (
        f"pg=$(ps -o pgid= -p {pid} 2>/dev/null | tr -d ' '); "
        "me=$(ps -o pgid= -p $$ 2>/dev/null | tr -d ' '); "
        f'case "$pg" in ""|0|1|"$me") kill -TERM {pid} 2>/dev/null; exit 0;; esac; '
        'kill -TERM -- -"$pg" 2>/dev/null || exit 0; i=0; '
        f"while [ $i -lt {steps} ]; do {live} || exit 0; sleep 0.1; i=$((i+1)); done; "
        'kill -KILL -- -"$pg" 2>/dev/null; exit 0'
    )


def classify(exit_status: int, tail: list[str]) -> SparkError:
    """The failure an unsuccessful ``hf download`` reports."""
    text = "\n".join(tail)
    last = " | ".join(line.strip() for line in tail[-3:])[:500] or "(no output)"
    if exit_status == 127 and "not installed" in text:
        return SparkError("the Hugging Face CLI (hf) is not installed on the host",
                          code="HF_CLI_MISSING", status=502)  # fmt: skip
    if re.search(r"GatedRepoError|Cannot access gated repo|is restricted|not in the authorized",
                 text):  # fmt: skip
        return SparkError(
            "gated repository: the host's Hugging Face token (settings hf_token) is missing or "
            f"has no access: {last}",
            code="HF_GATED", status=403,
        )  # fmt: skip
    if re.search(r"Repository Not Found|RepositoryNotFoundError|Revision Not Found|"
                 r"RevisionNotFoundError|EntryNotFoundError|\b404\b", text):  # fmt: skip
        return SparkError(f"not found on Hugging Face: {last}", code="HF_NOT_FOUND", status=404)
    return SparkError(f"hf download failed (exit {exit_status}): {last}",
                      code="HF_DOWNLOAD_FAILED", status=502)  # fmt: skip


@dataclass
class _Run:
    nonce: str
    token: str | None
    progress: Progress = field(default_factory=Progress)
    pid: int | None = None
    cache: str | None = None
    size: int | None = None
    exit: int | None = None
    path: str | None = None
    tail: list[str] = field(default_factory=list)
    sent_at: float = 0.0
    sent: dict[str, Any] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def mask(self, line: str) -> str:
        return line.replace(self.token, MASK) if self.token else line


class Download:
    """``download {repo, revision?}``: the CLI fetches the repo into the host's HF cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # run again: the CLI resumes partial files and skips complete ones

    async def run(self, ctx: JobContext) -> Any:
        args = ctx.args_only({"repo", "revision"})
        repo = check_repo(args.get("repo"))
        revision = check_revision(args["revision"]) if args.get("revision") else None
        token = _token(self.settings)
        st = _Run(nonce=secrets.token_hex(8), token=token)
        script = download_script(repo, revision, st.nonce)
        command = f"bash --noprofile --norc -c {shellsafe.quote(script)}"
        stdin = (token or "").encode() + b"\n"
        await ctx.progress(f"downloading {repo}" + (f"@{revision}" if revision else ""))
        t0 = time.monotonic()
        lines = ctx.runner.transport.stream_input(command, stdin)
        pump = asyncio.create_task(self._pump(ctx, repo, lines, st))
        try:
            await asyncio.shield(pump)
        except BaseException:
            await self._stop(ctx, pump, st)
            raise
        if st.exit is None:
            raise HostError(f"hf download of {repo} ended without an exit status (killed?)",
                            code="HF_DOWNLOAD_FAILED")  # fmt: skip
        if st.exit != 0:
            raise classify(st.exit, st.tail)
        st.progress.finish()
        await self._report(ctx, repo, st, final=True)
        return {
            "repo": repo, "revision": revision or "main", "host": ctx.host.alias,
            "cache": st.cache, "path": st.path, "bytes": st.size,
            "seconds": round(time.monotonic() - t0, 3),
        }  # fmt: skip

    async def _pump(
        self, ctx: JobContext, repo: str, lines: AsyncGenerator[str, None], st: _Run
    ) -> None:
        mark = f"__SPARK_{st.nonce} "
        async with contextlib.aclosing(lines):
            async for raw in lines:
                line = st.mask(raw)
                if line.startswith(mark):
                    key, _, value = line[len(mark) :].partition(" ")
                    with contextlib.suppress(ValueError):
                        if key == "pid":
                            st.pid = int(value)
                            st.started.set()
                        elif key == "cache":
                            st.cache = value
                        elif key == "size" and value:
                            st.size = int(value)
                        elif key == "exit":
                            st.exit = int(value)
                    continue
                if st.progress.feed(line):
                    await self._report(ctx, repo, st)
                    continue
                if line.startswith("/"):
                    st.path = line.strip()  # the CLI prints the snapshot folder last
                st.tail = [*st.tail[-(TAIL - 1) :], line]
                await ctx.log(line[:4096])

    async def _report(self, ctx: JobContext, repo: str, st: _Run, final: bool = False) -> None:
        now = time.monotonic()
        snap = st.progress.snapshot()
        if snap == st.sent or (not final and st.sent and now - st.sent_at < PROGRESS_EVERY_S):
            return
        if not snap["total"]:
            return
        st.sent, st.sent_at = snap, now
        pct = 100 * snap["bytes"] / snap["total"]
        message = f"{repo}: {_human(snap['bytes'])} of {_human(snap['total'])} ({pct:.0f}%)"
        await ctx.progress(message, data=snap)

    async def _stop(self, ctx: JobContext, pump: asyncio.Task[None], st: _Run) -> None:
        """Cancelled or timed out: kill the download on the host, then close the channel."""
        started = asyncio.create_task(st.started.wait())
        await asyncio.wait({started, pump}, timeout=PID_WAIT_S, return_when="FIRST_COMPLETED")
        started.cancel()
        if st.pid is not None and not pump.done():
            with contextlib.suppress(SparkError):
                await ctx.runner.transport.exec(kill_script(st.pid), timeout=KILL_GRACE_S + 10)
            with contextlib.suppress(TimeoutError, SparkError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pump), DRAIN_S)
        pump.cancel()  # closes the channel (a cancel swallowed mid-publish ends it at EOF)
        await asyncio.wait({pump}, timeout=DRAIN_S)


# --- delete and disk -------------------------------------------------------------------------


class LocalPathModel(BadRequest):
    code = "LOCAL_PATH_MODEL"
    status = 409


def delete_script(repo: str) -> str:
    name = shellsafe.quote(folder(repo))
    return (
        f"cache={CACHE_EXPR}; "
        'case "$cache" in /?*) ;; *) echo "cache is not an absolute path" >&2; exit 3;; esac; '
        "printf '%s\\n' \"$cache\"; "
        f'd="$cache"/{name}; '
        'if [ -e "$d" ] || [ -L "$d" ]; then du -sb -- "$d" 2>/dev/null | cut -f1; '
        f'rm -rf -- "$d" "$cache"/.locks/{name} || exit 4; '
        '[ ! -e "$d" ] || exit 4; else echo -; fi'
    )


class Delete:
    """``delete {repo, force?}``: remove ``models--owner--name`` from the host's HF cache.
    Refused for a ``local_path`` model (its files are not a cache entry) and, without
    ``force``, for the model this host serves. Deleting what is absent succeeds."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # deleting twice is harmless

    async def run(self, ctx: JobContext) -> Any:
        args = ctx.args_only({"repo", "local_path", "force"})
        if args.get("local_path") is not None:
            raise LocalPathModel("refused: a local_path model's weights are not in the HF cache")
        repo = check_repo(args.get("repo"))
        if args.get("force") is not True:
            state = await self.bus.get_model_state(ctx.host.alias)
            if state is not None and state.model and (state.recipe or {}).get("repo") == repo:
                raise SparkError(
                    f"{repo} is what {ctx.host.alias} serves ({state.model}); stop it first or "
                    "pass force: true", code="MODEL_IN_USE", status=409,
                )  # fmt: skip
        res = await ctx.runner.run(delete_script(repo), timeout=min(ctx.timeout_s, 600))
        out = res.stdout.splitlines()
        if res.exit_status != 0 or len(out) < 2:
            tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            raise HostError(f"delete of {repo} failed (exit {res.exit_status}): {tail}",
                            code="DELETE_FAILED")  # fmt: skip
        freed = int(out[1]) if out[1].isdigit() else 0
        deleted = out[1] != "-"
        await ctx.progress(f"deleted {repo} ({_human(freed)})" if deleted else f"{repo}: absent")
        return {"repo": repo, "host": ctx.host.alias, "cache": out[0], "deleted": deleted,
                "freed_bytes": freed}  # fmt: skip


DISK_SCRIPT = (
    f"cache={CACHE_EXPR}; "
    "printf 'cache\\t%s\\n' \"$cache\"; "
    'p="$cache"; while [ ! -d "$p" ]; do p=$(dirname -- "$p"); done; '
    'printf \'df\\t%s\\n\' "$(df -P -B1 -- "$p" | tail -n 1)"; '
    'if [ -d "$cache" ]; then for d in "$cache"/models--*; do [ -d "$d" ] || continue; '
    'inc=0; for b in "$d"/blobs/*.incomplete; do [ -e "$b" ] && inc=1; break; done; '
    'printf \'model\\t%s\\t%s\\t%s\\n\' "$(du -sb -- "$d" | cut -f1)" "$inc" "${d##*/}"; '
    "done; fi; true"
)


def parse_disk(stdout: str) -> dict[str, Any]:
    """DISK_SCRIPT's output → the ``disk`` result."""
    out: dict[str, Any] = {"cache": None, "total_bytes": None, "used_bytes": None,
                           "free_bytes": None, "models": []}  # fmt: skip
    for line in stdout.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "cache":
            out["cache"] = rest
        elif kind == "df":
            words = rest.split()
            pct = next((i for i, w in enumerate(words) if w.endswith("%")), None)
            if pct is not None and pct >= 3:
                with contextlib.suppress(ValueError):
                    total, used, free = (int(w) for w in words[pct - 3 : pct])
                    out.update(total_bytes=total, used_bytes=used, free_bytes=free)
        elif kind == "model":
            size, inc, name = [*rest.split("\t", 2), "", ""][:3]
            repo = repo_of(name)
            if repo is not None and size.isdigit():
                out["models"].append({"repo": repo, "bytes": int(size), "partial": inc == "1"})
    out["models"].sort(key=lambda m: m["repo"].lower())
    return out


class Disk:
    """``disk``: the cache's filesystem (total, used, free) and each cached model's size."""

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None

    async def run(self, ctx: JobContext) -> Any:
        ctx.args_only(set())
        res = await ctx.runner.run(DISK_SCRIPT, timeout=min(ctx.timeout_s, 300))
        if res.exit_status != 0:
            tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            raise HostError(f"disk usage failed (exit {res.exit_status}): {tail}")
        result = parse_disk(res.stdout)
        if result["cache"] is None:
            raise HostError("disk usage: the host did not name its HF cache")
        return {"host": ctx.host.alias, **result}
