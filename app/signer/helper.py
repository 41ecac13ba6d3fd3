"""A second signing process, so a big answer's signatures use two cores instead of one.

Signing 10,000 parts is CPU-bound Python (about 20 ms on one core): the signer worker starts one
helper child (``python -m app.signer.helper``) and, for an answer of at least ``MIN_SPLIT``
parts, signs the first half itself while the helper signs the second. The child reads jobs on
its stdin (4-byte big-endian length, then a msgpack ``Job``) and writes ``count * 32`` raw
signature bytes on its stdout; it exits when its stdin closes, i.e. when the signer ends, however
it ends. The day's derived signing key crosses that pipe between the two processes of the
signer and nothing else: the child gets no environment (no AWS variables), logs nothing and
writes only signatures. If the helper is busy, late, or gone, the signer signs in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import msgspec

from app.signer.sigv4 import PartRecipe, PartSigner, PartTemplate

log = logging.getLogger(__name__)

SIGNATURE_BYTES = 32
MIN_SPLIT = 2000
"""Below this many parts a split saves less than the round trip costs."""
WAIT_S = 5.0
"""How long the signer waits for the helper's half before signing it itself."""
BATCH = 1000
"""The signer's own half is signed in batches, yielding to the event loop in between."""
_ROOT = str(Path(__file__).resolve().parents[2])


class Job(msgspec.Struct, array_like=True):
    prefix: bytes
    rest: bytes
    key: bytes
    sts_head: bytes
    first: int
    count: int

    def __repr__(self) -> str:
        return f"Job(first={self.first}, count={self.count})"


class Helper:
    """The signer's side of one helper process."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._starting: asyncio.Task[None] | None = None
        self._closed = self._wanted = False

    async def start(self) -> None:
        self._wanted = True
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.signer.helper",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env={"PYTHONPATH": _ROOT}, cwd=_ROOT,
        )  # fmt: skip

    async def close(self) -> None:
        """For good: the helper ends and none is started again."""
        self._closed = True
        await self._stop()

    async def _stop(self, at_once: bool = False) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # the helper's cue to exit
        try:
            if at_once:
                raise TimeoutError
            await asyncio.wait_for(proc.wait(), timeout=2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    @property
    def ready(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _available(self) -> bool:
        """Ready and free now? A helper that died is replaced in the background."""
        if self.ready:
            return not self._lock.locked()
        if self._wanted and not self._closed and (self._starting is None or self._starting.done()):
            self._starting = asyncio.create_task(self.start())
        return False

    async def signatures(self, signer: PartSigner, parts: int) -> bytes:
        """Raw signatures of parts 1..``parts``, concatenated: the second half from the helper
        when it is there and free, everything here otherwise. Same bytes either way."""
        if parts < MIN_SPLIT or not self._available():
            return await _sign_here(signer, 1, parts)
        async with self._lock:
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            half = parts // 2
            r = signer.recipe
            job = msgspec.msgpack.encode(
                Job(r.prefix, r.rest, r.key, r.sts_head, half + 1, parts - half)
            )
            mine = b""
            try:
                proc.stdin.write(len(job).to_bytes(4, "big") + job)
                mine = await _sign_here(signer, 1, half)
                async with asyncio.timeout(WAIT_S):
                    theirs = await proc.stdout.readexactly((parts - half) * SIGNATURE_BYTES)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, RuntimeError):
                log.warning("signing helper did not answer; signing its half here")
                await self._stop(at_once=True)  # what it might still write must never be read
                self._available()  # starts a new one
                done = len(mine) // SIGNATURE_BYTES
                return mine + await _sign_here(signer, done + 1, parts - done)
            return mine + theirs


async def _sign_here(signer: PartSigner, first: int, count: int) -> bytes:
    sigs = []
    for at in range(first, first + count, BATCH):
        sigs.append(signer.signatures(at, min(BATCH, first + count - at)))
        await asyncio.sleep(0)  # the audit's publish and other requests move meanwhile
    return b"".join(sigs)


def serve() -> None:
    """The helper process: one job at a time from stdin, signatures to stdout, until EOF."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    template = PartTemplate("", "")
    while len(head := inp.read(4)) == 4:
        job = msgspec.msgpack.decode(inp.read(int.from_bytes(head, "big")), type=Job)
        recipe = PartRecipe(job.prefix, job.rest, job.key, job.sts_head)
        out.write(PartSigner(template, recipe).signatures(job.first, job.count))
        out.flush()


if __name__ == "__main__":
    serve()
