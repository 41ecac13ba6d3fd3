"""The signing helper process (app/signer/helper.py): what it signs is exactly what the signer
would have signed itself; a helper that is gone or busy only means signing in-process; it ends
when the signer closes its stdin."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import pytest

from app.signer import helper as helper_module
from app.signer.helper import MIN_SPLIT, Helper
from app.signer.sigv4 import Credentials, PartSigner, Presigner

SECRET = "wJalr/XUtnFEMI+K7MDENG=bPxRfiCY"


def part_signer() -> PartSigner:
    p = Presigner(Credentials("AKIDEXAMPLE", SECRET, "tok/+="), "eu-west-3", "http://h:9000")
    return p.part_signer("bkt", "projects/ns-a/ünï code+=.bin", "u+1/=", 604_800, 1_790_000_000.0)


@pytest.fixture
async def helper() -> AsyncIterator[Helper]:
    h = Helper()
    await h.start()
    try:
        yield h
    finally:
        await h.close()


@pytest.mark.parametrize("parts", [1, MIN_SPLIT - 1, MIN_SPLIT, MIN_SPLIT + 1, 10_000])
async def test_split_signatures_equal_in_process_ones(helper: Helper, parts: int) -> None:
    ps = part_signer()
    assert await helper.signatures(ps, parts) == ps.signatures(1, parts)


async def test_a_busy_helper_means_signing_here(helper: Helper) -> None:
    ps = part_signer()
    want = ps.signatures(1, 10_000)
    assert await asyncio.gather(*(helper.signatures(ps, 10_000) for _ in range(3))) == [want] * 3


async def _replaced(helper: Helper, old: object) -> bool:
    for _ in range(200):  # a new helper is started in the background
        if helper.ready and helper._proc is not old:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_dead_helper_is_replaced(helper: Helper) -> None:
    ps = part_signer()
    want = ps.signatures(1, 10_000)
    proc = helper._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert await helper.signatures(ps, 10_000) == want  # signed here, a new helper starts
    assert await _replaced(helper, proc)
    assert await helper.signatures(ps, 10_000) == want


async def test_a_helper_that_does_not_answer_in_time_is_replaced_and_its_half_signed_here(
    helper: Helper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(helper_module, "WAIT_S", 0.2)
    ps = part_signer()
    want = ps.signatures(1, 10_000)
    proc = helper._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)  # alive but not answering
    try:
        assert await helper.signatures(ps, 10_000) == want
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
    assert proc.returncode is not None  # stopped for good: a late answer is never read
    assert await _replaced(helper, proc)
    assert await helper.signatures(ps, 10_000) == want


async def test_the_helper_ends_when_its_stdin_closes() -> None:
    h = Helper()
    await h.start()
    proc = h._proc
    assert proc is not None
    await h.close()
    assert proc.returncode == 0
    assert not h.ready
    ps = part_signer()
    assert await h.signatures(ps, 10_000) == ps.signatures(1, 10_000)
