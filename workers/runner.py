"""Run short commands fast: one long-lived bash per host, fed commands on stdin.

A new SSH exec channel costs ~40 ms; a line written to an open shell answers in well
under a millisecond. Each command runs as ``( eval '<cmd>' ) </dev/null &`` in a shell
with job control on, so it gets its own process group (killable as a whole) and cannot
change the shell's state. Random per-command markers frame stdout and stderr exactly:

    stdout/stderr:  __SPARK_BEGIN_<nonce> <pgid>\\n <output> \\n__SPARK_END_<nonce> <rc>\\n

Anything before BEGIN (late output of an earlier command's background child) is dropped;
the newline before END is framing and is stripped.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from app.errors import BadRequest, Cancelled, CommandTimeout, HostError, HostUnreachable
from workers.transport import ShellChannel, Transport

LineHandler = Callable[[str, str], Awaitable[None]]
"""``on_line(stream, line)`` with stream ``"stdout"``/``"stderr"`` and the line sans newline."""

MAX_LINE = 64 * 1024
"""Longer partial lines are streamed in pieces (the result keeps the exact bytes)."""
START_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 5.0
SHELL_INIT = b"set -m; exec 3>&2 2>/dev/null\n"
"""Job control on (a process group per command); the shell's own chatter goes to /dev/null,
commands get the real stderr on fd 3."""


class _StaleShell(HostUnreachable):
    """The kept shell could not take the command: it was never delivered, so retry once."""


class CommandResult(msgspec.Struct, kw_only=True):
    """What one command did: exact output, exit status (128+N if killed by signal N)."""

    exit_status: int
    stdout: str
    stderr: str
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def _decode(data: bytes | bytearray) -> str:
    return data.decode("utf-8", errors="replace")


def _utf8_cut(data: bytearray, start: int, end: int) -> int:
    """Largest cut <= end (and > start) that does not split a UTF-8 sequence."""
    cut = end
    while cut > start + 1 and end - cut < 4 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if (data[cut] & 0xC0) != 0x80 else end


class Framer:
    """Extracts one command's bytes from a shell stream and yields complete lines as they come."""

    def __init__(self, nonce: str) -> None:
        self.begin = f"__SPARK_BEGIN_{nonce} ".encode()
        self.end = f"\n__SPARK_END_{nonce} ".encode()
        self.buf = bytearray()
        self.begin_value: str | None = None
        self.end_value: str | None = None
        self.content: bytes | None = None
        self._pos = 0  # start of the line not yet streamed
        self._scan = 0  # where to resume looking for END
        self._split = False  # the last streamed piece was a forced split of a long line
        self._value_at = 0

    @property
    def done(self) -> bool:
        return self.end_value is not None

    def feed(self, data: bytes) -> list[str]:
        """Add a chunk; return the lines completed by it."""
        self.buf += data
        if self.begin_value is None and not self._find_begin():
            return []
        if self.content is None:
            k = self.buf.find(self.end, self._scan)
            if k < 0:
                self._scan = max(0, len(self.buf) - len(self.end) + 1)
                return self._lines(len(self.buf), final=False)
            lines = self._lines(k, final=True)
            self.content = bytes(self.buf[:k])
            self._value_at = k + len(self.end)
        else:
            lines = []
        nl = self.buf.find(b"\n", self._value_at)
        if nl >= 0:
            self.end_value = _decode(self.buf[self._value_at : nl])
        return lines

    def _find_begin(self) -> bool:
        i = self.buf.find(self.begin)
        if i < 0:
            del self.buf[: max(0, len(self.buf) - len(self.begin))]  # keep a possible prefix
            return False
        nl = self.buf.find(b"\n", i + len(self.begin))
        if nl < 0:
            return False
        self.begin_value = _decode(self.buf[i + len(self.begin) : nl])
        del self.buf[: nl + 1]
        return True

    def _lines(self, limit: int, *, final: bool) -> list[str]:
        """Lines in buf[_pos:limit]; when ``final``, limit is where the output ends."""
        out: list[str] = []
        buf = self.buf
        while (nl := buf.find(b"\n", self._pos, limit)) >= 0:
            if nl == self._pos:
                if self._split:  # this newline ends a line already streamed in pieces
                    self._split = False
                    self._pos = nl + 1
                    continue
                # An empty line, or the framing newline of END? Wait until we can tell.
                if not final and self.end.startswith(bytes(buf[nl : nl + len(self.end)])):
                    break
                out.append("")
            else:
                self._pieces(out, nl)
                out.append(_decode(buf[self._pos : nl]))
            self._split = False
            self._pos = nl + 1
        if final:
            if self._pos < limit:
                self._pieces(out, limit)
                out.append(_decode(buf[self._pos : limit]))
                self._pos = limit
        elif limit - self._pos > MAX_LINE and buf.find(b"\n", self._pos) < 0:
            cut = _utf8_cut(buf, self._pos, self._pos + MAX_LINE)
            out.append(_decode(buf[self._pos : cut]))
            self._pos, self._split = cut, True
        return out

    def _pieces(self, out: list[str], end: int) -> None:
        """Stream buf[_pos:end] (one line's rest, already whole) in pieces of at most
        MAX_LINE, leaving the last piece for the caller."""
        while end - self._pos > MAX_LINE:
            cut = _utf8_cut(self.buf, self._pos, self._pos + MAX_LINE)
            out.append(_decode(self.buf[self._pos : cut]))
            self._pos = cut


def wrap(command: str, nonce: str) -> bytes:
    """The line fed to the shell for one command."""
    b, e = f"__SPARK_BEGIN_{nonce}", f"__SPARK_END_{nonce}"
    return (
        f"( printf '{b} %s\\n' \"$BASHPID\"; printf '{b} %s\\n' \"$BASHPID\" >&2; "
        f"eval {shlex.quote(command)} ) 2>&3 3>&- </dev/null & wait $!; __rc=$?; "
        f"printf '\\n{e} %d\\n' \"$__rc\"; printf '\\n{e} %d\\n' \"$__rc\" >&3\n"
    ).encode()


def kill_script(pgid: int, grace_s: float) -> str:
    """TERM the process group, wait up to ``grace_s`` for it to go, then KILL it."""
    steps = max(1, round(grace_s / 0.1))
    return (
        f"kill -TERM -- -{pgid} 2>/dev/null || exit 0; i=0; while [ $i -lt {steps} ]; do "
        f"kill -0 -- -{pgid} 2>/dev/null || exit 0; sleep 0.1; i=$((i+1)); done; "
        f"kill -KILL -- -{pgid} 2>/dev/null; exit 0"
    )


class ShellRunner:
    """Runs commands one at a time on one long-lived shell of a transport."""

    def __init__(self, transport: Transport, *, kill_grace_s: float = 2.0) -> None:
        self.transport = transport
        self.kill_grace_s = kill_grace_s
        self._shell: ShellChannel | None = None
        self._lock = asyncio.Lock()
        self._running = False
        self._reused = False
        self._pgid: int | None = None
        self._started = asyncio.Event()
        self._cancel = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.memo: dict[str, Any] = {}
        """What read-only commands found (e.g. a probe's slow sections); emptied whenever a
        command that may change the host runs."""

    @property
    def busy(self) -> bool:
        return self._running

    async def run(
        self,
        command: str,
        *,
        timeout: float,  # noqa: ASYNC109 (a budget for the remote command, not for this call)
        on_line: LineHandler | None = None,
        reads_only: bool = False,
    ) -> CommandResult:
        """Run ``command`` with bash; raise CommandTimeout, Cancelled or HostError.
        ``reads_only``: the command changes nothing on the host, so ``memo`` is kept."""
        if "\x00" in command:
            raise BadRequest("command contains a NUL byte")
        async with self._lock:
            if not reads_only:
                self.memo.clear()
            self._running, self._pgid = True, None
            self._started.clear()
            self._cancel.clear()
            try:
                try:
                    return await self._run(command, timeout, on_line)
                except _StaleShell:  # the kept shell died while idle; nothing was sent: retry
                    return await self._run(command, timeout, on_line)
            finally:
                self._running, self._pgid = False, None

    async def run_check(self, command: str, *, timeout: float) -> str:  # noqa: ASYNC109
        """Run ``command`` and return its stdout; a non-zero exit is a HostError."""
        res = await self.run(command, timeout=timeout)
        if res.exit_status != 0:
            tail = res.stderr.strip().splitlines()[-1:] or [""]
            raise HostError(f"{self.transport.label}: exit {res.exit_status}: {tail[0][:300]}")
        return res.stdout

    async def cancel(self) -> bool:
        """Kill the running command's process group; its run() raises Cancelled."""
        if not self._running:
            return False
        self._cancel.set()
        return True

    async def close(self) -> None:
        """Cancel what runs, then close the shell."""
        await self.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.kill_grace_s + DRAIN_TIMEOUT_S + 5):
                async with self._lock:
                    await self._discard()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.kill_grace_s + 5)

    async def _shell_ready(self) -> ShellChannel:
        if self._shell is not None and not self._shell.alive:
            await self._discard()
        self._reused = self._shell is not None
        if self._shell is None:
            shell = await self.transport.open_shell()
            try:
                await shell.write(SHELL_INIT)
            except HostError:
                await shell.close()
                raise
            self._shell = shell
        return self._shell

    def _detach(self) -> ShellChannel | None:
        shell, self._shell = self._shell, None
        return shell

    async def _discard(self) -> None:
        await self._abandon(self._detach(), None)

    async def _run(self, command: str, budget: float, on_line: LineHandler | None) -> CommandResult:
        shell = await self._shell_ready()
        nonce = secrets.token_hex(8)
        out, err = Framer(nonce), Framer(nonce)
        t0 = time.perf_counter()
        try:
            await shell.write(wrap(command, nonce))
        except HostError as exc:
            await self._discard()
            if self._reused:
                raise _StaleShell(exc.message) from exc
            raise
        collect = asyncio.create_task(self._collect(shell, out, err, on_line))
        cancelled = asyncio.create_task(self._cancel.wait())
        try:
            done, _ = await asyncio.wait(
                {collect, cancelled}, timeout=budget, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # our caller gave up: kill it in the background
            collect.cancel()
            self._spawn(self._abandon(self._detach(), self._pgid))
            raise
        finally:
            cancelled.cancel()
        if collect in done:
            failure = collect.exception()
            if failure is not None:
                self._spawn(self._abandon(self._detach(), self._pgid))
                raise failure
            return self._result(out, err, t0)
        was_cancel = self._cancel.is_set()
        await self._stop(collect)
        if was_cancel:
            raise Cancelled("command cancelled")
        raise CommandTimeout(f"{self.transport.label}: command timed out after {budget:g}s")

    def _result(self, out: Framer, err: Framer, t0: float) -> CommandResult:
        try:
            status = int(out.end_value or "")
        except ValueError as exc:
            raise HostError(f"{self.transport.label}: garbled command framing") from exc
        return CommandResult(
            exit_status=status,
            stdout=_decode(out.content or b""),
            stderr=_decode(err.content or b""),
            duration_ms=(time.perf_counter() - t0) * 1000,
        )

    async def _collect(
        self, shell: ShellChannel, out: Framer, err: Framer, on_line: LineHandler | None
    ) -> None:
        tasks = [
            asyncio.create_task(self._pump(shell.read_stdout, out, "stdout", on_line)),
            asyncio.create_task(self._pump(shell.read_stderr, err, "stderr", on_line)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _pump(
        self,
        read: Callable[[], Awaitable[bytes]],
        framer: Framer,
        name: str,
        on_line: LineHandler | None,
    ) -> None:
        while not framer.done:
            data = await read()
            if not data:
                raise HostUnreachable(f"{self.transport.label}: shell ended unexpectedly")
            lines = framer.feed(data)
            if framer.begin_value is not None and not self._started.is_set():
                with contextlib.suppress(ValueError):
                    self._pgid = int(framer.begin_value)
                self._started.set()
            if on_line is not None:
                for line in lines:
                    await on_line(name, line)

    async def _stop(self, collect: asyncio.Task[None]) -> None:
        """Kill the running command's group and drain its framing; drop the shell if stuck."""
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait(
            {started, collect}, timeout=START_TIMEOUT_S, return_when="FIRST_COMPLETED"
        )
        started.cancel()
        pgid = self._pgid
        try:
            if pgid is None:
                raise HostError(f"{self.transport.label}: command never started")
            await self._kill(pgid)
            await asyncio.wait_for(asyncio.shield(collect), DRAIN_TIMEOUT_S)
        except (Exception, asyncio.CancelledError) as exc:
            collect.cancel()
            self._spawn(self._abandon(self._detach(), pgid))
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _kill(self, pgid: int) -> None:
        script = kill_script(pgid, self.kill_grace_s)
        await self.transport.exec(script, timeout=self.kill_grace_s + 10)

    async def _abandon(self, shell: ShellChannel | None, pgid: int | None) -> None:
        """Best effort after a failure mid-command: close the shell, kill the group."""
        if shell is not None:
            with contextlib.suppress(Exception):
                await shell.close()
        if pgid is not None:
            with contextlib.suppress(Exception):
                await self._kill(pgid)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
