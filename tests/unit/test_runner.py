"""ShellRunner over a local bash: exact output, framing edge cases, kill, cancel, recovery."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import Cancelled, CommandTimeout, HostUnreachable
from workers.runner import MAX_LINE, Framer, ShellRunner
from workers.transport import LocalTransport


@pytest.fixture
async def runner() -> AsyncIterator[ShellRunner]:
    r = ShellRunner(LocalTransport(), kill_grace_s=0.5)
    yield r
    await r.close()


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _gone(pid: int, within: float = 5.0) -> bool:
    for _ in range(int(within / 0.05)):
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


async def _written(path: Path, within: float = 5.0) -> str:
    """Wait until a command has written ``path``; return its content."""
    for _ in range(int(within / 0.02)):
        if text := _read(path):
            return text
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never written")


@pytest.mark.parametrize(
    ("command", "stdout", "stderr", "status"),
    [
        ("echo hello", "hello\n", "", 0),
        ("printf 'no newline'", "no newline", "", 0),
        ("printf ''", "", "", 0),
        ("true", "", "", 0),
        ("false", "", "", 1),
        ("printf '\\n\\n'", "\n\n", "", 0),
        ("printf 'a\\n\\nb'", "a\n\nb", "", 0),
        ("echo out; echo err >&2; exit 7", "out\n", "err\n", 7),
        ("printf 'e1' >&2; printf 'o1'", "o1", "e1", 0),
        ("exit 3", "", "", 3),
        ("kill -TERM $BASHPID", "", "", 143),
        ("echo 'héllo ✓ 日本'", "héllo ✓ 日本\n", "", 0),
        ("printf '\\377\\376x'", "\ufffd\ufffdx", "", 0),
        ("printf '%s\\n' '__SPARK_END_x 0' 'quotes: \" and '\\'' ok'", None, "", 0),
    ],
)
async def test_exact_output(
    runner: ShellRunner, command: str, stdout: str | None, stderr: str, status: int
) -> None:
    res = await runner.run(command, timeout=10)
    if stdout is not None:
        assert res.stdout == stdout
    else:
        assert res.stdout == "__SPARK_END_x 0\nquotes: \" and ' ok\n"
    assert (res.stderr, res.exit_status) == (stderr, status)
    assert res.duration_ms > 0


async def test_syntax_error_is_the_commands_problem_not_the_shells(runner: ShellRunner) -> None:
    res = await runner.run("if; then", timeout=10)
    assert res.exit_status == 2 and "syntax error" in res.stderr and res.stdout == ""
    assert (await runner.run("echo fine", timeout=10)).stdout == "fine\n"


async def test_multiline_and_shell_state_is_not_shared(runner: ShellRunner) -> None:
    res = await runner.run("cd /tmp\nX=1\npwd; echo $X", timeout=10)
    assert res.stdout == "/tmp\n1\n"
    res = await runner.run('echo "${X:-unset}"', timeout=10)
    assert res.stdout == "unset\n"


async def test_stdin_is_dev_null(runner: ShellRunner) -> None:
    res = await runner.run("cat; read -r x; echo rc=$?; readlink /proc/self/fd/0", timeout=5)
    assert res.stdout == "rc=1\n/dev/null\n"


async def test_large_output_and_long_lines(runner: ShellRunner) -> None:
    lines: list[tuple[str, str]] = []

    async def on_line(stream: str, line: str) -> None:
        lines.append((stream, line))

    res = await runner.run(
        "head -c 300000 /dev/zero | tr '\\0' 'x'; echo; seq 1 20000", timeout=20, on_line=on_line
    )
    assert res.stdout == "x" * 300000 + "\n" + "".join(f"{i}\n" for i in range(1, 20001))
    streamed = [line for s, line in lines if s == "stdout"]
    assert "".join(streamed[:-20000]) == "x" * 300000  # split into pieces of at most MAX_LINE
    assert all(len(line) <= MAX_LINE for line in streamed)
    assert streamed[-20000:] == [str(i) for i in range(1, 20001)]


async def test_on_line_streams_in_order_as_output_arrives(runner: ShellRunner) -> None:
    seen: list[tuple[str, str]] = []
    first = asyncio.Event()

    async def on_line(stream: str, line: str) -> None:
        seen.append((stream, line))
        first.set()

    task = asyncio.create_task(
        runner.run(
            "echo one; echo warn >&2; sleep 1; printf 'two\\n\\nlast'", timeout=10, on_line=on_line
        )
    )
    await asyncio.wait_for(first.wait(), 0.9)  # before the command ends
    assert not task.done()
    res = await task
    assert [line for s, line in seen if s == "stdout"] == ["one", "two", "", "last"]
    assert [line for s, line in seen if s == "stderr"] == ["warn"]
    assert res.stdout == "one\ntwo\n\nlast"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_framer_any_chunking(chunk: int) -> None:
    nonce = "n0nce"
    payloads = [b"", b"x", b"\n", b"a\n", b"a\n\n", b"\n\nb", "ü\nz".encode(), b"__SPARK_END_n0n"]
    for payload in payloads:
        stream = (
            b"junk from before"
            + f"__SPARK_BEGIN_{nonce} 42\n".encode()
            + payload
            + f"\n__SPARK_END_{nonce} 5\n".encode()
            + b"trailing junk"
        )
        f = Framer(nonce)
        lines: list[str] = []
        for i in range(0, len(stream), chunk):
            lines += f.feed(stream[i : i + chunk])
        assert f.done and f.content == payload and f.end_value == "5" and f.begin_value == "42"
        text = payload.decode()
        expected = text.split("\n") if text else []
        if text.endswith("\n"):
            expected.pop()
        assert lines == expected, (payload, chunk)


@given(
    lengths=st.lists(st.integers(0, 3 * MAX_LINE), min_size=1, max_size=4),
    chunks=st.lists(st.sampled_from([1, 5, 4096, MAX_LINE - 1, MAX_LINE + 3, 10**6]), min_size=1),
)
@settings(max_examples=60, deadline=None)
def test_framer_long_lines_stream_in_pieces_whatever_the_chunking(
    lengths: list[int], chunks: list[int]
) -> None:
    """Lines longer than MAX_LINE stream in pieces of at most MAX_LINE that join back into
    the line, whether the line's end arrives in the same chunk or later."""
    nonce = "n0nce"
    body = "".join("é" * (n // 2) + "x" * (n % 2) + "\n" for n in lengths).encode()
    stream = f"__SPARK_BEGIN_{nonce} 1\n".encode() + body + f"\n__SPARK_END_{nonce} 0\n".encode()
    f, pieces, i, k = Framer(nonce), [], 0, 0
    while i < len(stream):
        n = chunks[k % len(chunks)]
        pieces += f.feed(stream[i : i + n])
        i, k = i + n, k + 1
    assert f.done and f.content == body
    assert all(len(p.encode()) <= MAX_LINE for p in pieces)
    assert "".join(pieces) == body.decode().replace("\n", "")


async def test_background_child_does_not_block_and_late_output_is_dropped(
    runner: ShellRunner,
) -> None:
    res = await runner.run("(sleep 0.3; echo late; echo late >&2) & echo now", timeout=5)
    assert res.stdout == "now\n"
    await asyncio.sleep(0.5)
    res = await runner.run("echo next", timeout=5)
    assert (res.stdout, res.stderr) == ("next\n", "")


async def test_timeout_kills_the_whole_process_group(runner: ShellRunner, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(CommandTimeout) as info:
        await runner.run(f"sleep 30 & echo $! > {pidfile}; sleep 60", timeout=0.5)
    assert "0.5s" in info.value.message and "sleep" not in info.value.message
    child = int(pidfile.read_text())
    assert await _gone(child)
    assert (await runner.run("echo ok", timeout=5)).stdout == "ok\n"


async def test_timeout_escalates_to_kill_when_term_is_ignored(runner: ShellRunner) -> None:
    with pytest.raises(CommandTimeout):
        await runner.run("trap '' TERM; sleep 60", timeout=0.3)
    assert (await runner.run("echo ok", timeout=5)).stdout == "ok\n"


async def test_cancel(runner: ShellRunner, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(runner.run(f"echo $BASHPID > {pidfile}; sleep 60", timeout=30))
    await _written(pidfile)
    assert await runner.cancel()
    with pytest.raises(Cancelled):
        await task
    assert await _gone(int(pidfile.read_text()))
    assert not await runner.cancel()  # nothing running
    assert (await runner.run("echo ok", timeout=5)).stdout == "ok\n"


async def test_caller_cancellation_kills_the_command(runner: ShellRunner, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(runner.run(f"echo $BASHPID > {pidfile}; sleep 60", timeout=30))
    await _written(pidfile)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _gone(int(pidfile.read_text()))
    assert (await runner.run("echo ok", timeout=5)).stdout == "ok\n"


async def test_many_sequential_commands(runner: ShellRunner) -> None:
    for i in range(200):
        res = await runner.run(f"echo {i}; echo e{i} >&2", timeout=5)
        assert (res.stdout, res.stderr, res.exit_status) == (f"{i}\n", f"e{i}\n", 0)


async def test_concurrent_callers_are_serialised(runner: ShellRunner) -> None:
    results = await asyncio.gather(*(runner.run(f"echo {i}", timeout=10) for i in range(20)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]


SHELL_PID = "cut -d' ' -f4 /proc/$BASHPID/stat"  # the runner shell is the subshell's parent


async def test_recovers_after_its_idle_shell_is_killed(runner: ShellRunner) -> None:
    shell_pid = int((await runner.run(SHELL_PID, timeout=5)).stdout)
    assert shell_pid != os.getpid()
    os.kill(shell_pid, signal.SIGKILL)
    await asyncio.sleep(0.2)  # idle a moment: the runner notices the shell is gone
    res = await runner.run(SHELL_PID, timeout=5)  # and starts a fresh one, transparently
    assert res.exit_status == 0 and int(res.stdout) not in (shell_pid, os.getpid())


async def test_shell_killed_right_before_a_command(runner: ShellRunner) -> None:
    shell_pid = int((await runner.run(SHELL_PID, timeout=5)).stdout)
    os.kill(shell_pid, signal.SIGKILL)
    try:  # delivered or not is a race: at most once, never a wrong result
        res = await runner.run("echo once", timeout=5)
        assert res.stdout == "once\n"
    except HostUnreachable:
        pass
    assert (await runner.run("echo next", timeout=5)).stdout == "next\n"


async def test_shell_killed_mid_command_raises_host_unreachable(
    runner: ShellRunner, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(runner.run(f"{SHELL_PID} > {pidfile}; sleep 5", timeout=10))
    await _written(pidfile)
    shell_pid = int(pidfile.read_text())
    assert shell_pid != os.getpid()
    os.kill(shell_pid, signal.SIGKILL)
    with pytest.raises(HostUnreachable):
        await task
    assert (await runner.run("echo back", timeout=5)).stdout == "back\n"


async def test_nul_in_command_is_refused(runner: ShellRunner) -> None:
    with pytest.raises(Exception, match="NUL"):
        await runner.run("echo \x00", timeout=5)


async def test_run_check(runner: ShellRunner) -> None:
    assert await runner.run_check("echo hi", timeout=5) == "hi\n"
    with pytest.raises(Exception, match="exit 4: boom"):
        await runner.run_check("echo boom >&2; exit 4", timeout=5)
