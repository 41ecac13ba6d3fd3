"""How the executor reaches a host: a local subprocess or one pooled asyncssh connection.

A transport opens long-lived shells (for ShellRunner) and runs one-off side commands (for
kill/cancel while the shell is busy). Library errors are translated here, once, into the
project's HostError tree; callers never see asyncssh or OSError.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import shutil
import signal
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

import asyncssh

from app.config import HostConfig, Settings
from app.errors import AuthFailed, CommandTimeout, HostKeyRefused, HostUnreachable

SHELL_ARGV = ("bash", "--noprofile", "--norc")
READ_CHUNK = 256 * 1024
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 5.0
KEEPALIVE_COUNT_MAX = 3

DisconnectHook = Callable[[str], Any]
"""``hook(reason)`` when the established connection is lost; may return an awaitable."""


class ShellChannel(Protocol):
    """A long-lived ``bash --noprofile --norc`` with stdin/stdout/stderr pipes and no pty."""

    @property
    def alive(self) -> bool: ...

    async def write(self, data: bytes) -> None: ...

    async def read_stdout(self) -> bytes:
        """Next chunk of stdout; ``b""`` at EOF. Raises HostUnreachable if the channel broke."""
        ...

    async def read_stderr(self) -> bytes: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """Shells and side commands on one host."""

    label: str

    async def open_shell(self) -> ShellChannel: ...

    async def exec(self, command: str, timeout: float) -> tuple[int, str, str]:  # noqa: ASYNC109
        """Run ``command`` on a fresh channel: (exit status, stdout, stderr)."""
        ...

    def stream_lines(self, command: str) -> AsyncGenerator[str, None]:
        """Run ``command`` on its own channel and yield its output (stdout and stderr) line by
        line until it ends; closing the iterator stops it. For long streams (logs)."""
        ...

    def stream_input(self, command: str, stdin: bytes) -> AsyncGenerator[str, None]:
        """Run ``command`` on its own channel with ``stdin`` as its whole standard input
        (then EOF): the way to hand a command a secret without putting it on a command line.
        Yields its output (stdout and stderr merged) as lines ended by ``\\n`` or ``\\r``
        (progress bars redraw with ``\\r``); empty lines are dropped. Closing the iterator
        closes the channel, which does not kill an SSH command: kill its process group."""
        ...

    async def close(self) -> None: ...


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


class _Lines:
    """Splits a byte stream into lines ended by ``\\n``, ``\\r`` or ``\\r\\n`` (empty ones
    dropped); a line longer than READ_CHUNK without an end is cut there."""

    _END = re.compile(rb"[\r\n]")

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        parts = self._END.split(self._buf + data)
        self._buf = parts.pop()
        if len(self._buf) > READ_CHUNK:
            parts.append(self._buf)
            self._buf = b""
        return [_decode(p) for p in parts if p]

    def close(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [_decode(rest)] if rest else []


# --- local -----------------------------------------------------------------------------------


class _LocalShell:
    """A bash subprocess on this machine."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self._proc = proc
        self._label = label

    @property
    def alive(self) -> bool:
        out = self._proc.stdout
        return self._proc.returncode is None and not (out is not None and out.at_eof())

    async def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        except (OSError, RuntimeError) as exc:
            raise HostUnreachable(f"{self._label}: shell is gone ({exc})") from exc

    async def _read(self, stream: asyncio.StreamReader | None) -> bytes:
        assert stream is not None
        try:
            return await stream.read(READ_CHUNK)
        except OSError as exc:
            raise HostUnreachable(f"{self._label}: shell is gone ({exc})") from exc

    async def read_stdout(self) -> bytes:
        return await self._read(self._proc.stdout)

    async def read_stderr(self) -> bytes:
        return await self._read(self._proc.stderr)

    async def close(self) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._proc.wait(), 5)


class LocalTransport:
    """Subprocesses on this machine (the ``local`` host when no hosts are configured)."""

    def __init__(self, label: str = "local") -> None:
        self.label = label
        self.bash = shutil.which("bash") or "/bin/bash"

    async def open_shell(self) -> ShellChannel:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.bash,
                *SHELL_ARGV[1:],
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise HostUnreachable(f"{self.label}: cannot start bash ({exc.strerror})") from exc
        return _LocalShell(proc, self.label)

    async def exec(self, command: str, timeout: float) -> tuple[int, str, str]:  # noqa: ASYNC109
        try:
            proc = await asyncio.create_subprocess_exec(
                self.bash,
                "-c",
                command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise HostUnreachable(f"{self.label}: cannot start bash ({exc.strerror})") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            msg = f"{self.label}: side command timed out after {timeout:g}s"
            raise CommandTimeout(msg) from exc
        return proc.returncode if proc.returncode is not None else -1, _decode(out), _decode(err)

    async def stream_lines(self, command: str) -> AsyncGenerator[str, None]:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.bash, "-c", f"{command} 2>&1", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise HostUnreachable(f"{self.label}: cannot start bash ({exc.strerror})") from exc
        assert proc.stdout is not None
        try:
            async for raw in proc.stdout:
                yield _decode(raw).rstrip("\n")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)

    async def stream_input(self, command: str, stdin: bytes) -> AsyncGenerator[str, None]:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.bash, "-c", command, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise HostUnreachable(f"{self.label}: cannot start bash ({exc.strerror})") from exc
        assert proc.stdin is not None and proc.stdout is not None
        lines = _Lines()
        try:
            with contextlib.suppress(OSError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()
            while data := await proc.stdout.read(READ_CHUNK):
                for line in lines.feed(data):
                    yield line
            for line in lines.close():
                yield line
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)

    async def close(self) -> None:
        return None


# --- ssh -------------------------------------------------------------------------------------


class _SshShell:
    """A bash process on an SSH session channel."""

    def __init__(self, proc: asyncssh.SSHClientProcess[bytes], label: str) -> None:
        self._proc = proc
        self._label = label

    @property
    def alive(self) -> bool:
        return not self._proc.is_closing()

    def _lost(self, exc: BaseException) -> HostUnreachable:
        return HostUnreachable(f"{self._label}: shell channel lost ({type(exc).__name__})")

    async def write(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc

    async def read_stdout(self) -> bytes:
        try:
            return await self._proc.stdout.read(READ_CHUNK)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc

    async def read_stderr(self) -> bytes:
        try:
            return await self._proc.stderr.read(READ_CHUNK)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc

    async def close(self) -> None:
        self._proc.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._proc.wait_closed(), 5)


class _Client(asyncssh.SSHClient):
    """Tells the transport when its connection goes away."""

    def __init__(self, transport: SshTransport) -> None:
        self._transport = transport
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._transport._lost(self._conn, exc)


CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
"""AES-GCM first: done natively by ``cryptography``, where asyncssh's ChaCha20-Poly1305 (the
OpenSSH default) computes Poly1305 in Python and cost the executor a quarter of its CPU."""


class SshTransport:
    """One pooled asyncssh connection per host, shared by shells and side commands.

    Connects lazily (concurrent callers share one connect), keeps the connection alive,
    and reconnects with capped exponential backoff within the connect timeout. Host keys
    are checked strictly against ``settings.ssh_known_hosts`` and never auto-accepted.
    """

    def __init__(
        self, host: HostConfig, settings: Settings, *, on_disconnect: DisconnectHook | None = None
    ) -> None:
        self.host = host
        self.settings = settings
        self.on_disconnect = on_disconnect
        self.label = f"{host.alias} ({host.address}:{host.port})"
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The pooled connection, connecting (with retries) if there is none."""
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        async with self._lock:
            conn = self._conn
            if conn is None or conn.is_closed():
                self._closing = False
                conn = self._conn = await self._connect_with_backoff()
            return conn

    async def _connect_with_backoff(self) -> asyncssh.SSHClientConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.ssh_connect_timeout_s
        delay = BACKOFF_START_S
        while True:
            try:
                return await self._connect_once(max(deadline - loop.time(), 0.01))
            except HostUnreachable:
                if deadline - loop.time() <= delay:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    async def _connect_once(self, limit: float) -> asyncssh.SSHClientConnection:
        h, known_hosts = self.host, self.settings.ssh_known_hosts
        if not os.path.isfile(known_hosts):  # noqa: ASYNC240 (a stat, once per connect)
            raise HostKeyRefused(self._host_key_message() + f" ({known_hosts} does not exist)")
        key = h.key_path or self.settings.ssh_key_path
        if key and not os.access(key, os.R_OK):
            raise AuthFailed(f"{self.label}: client key {key} is not readable")
        try:
            async with asyncio.timeout(limit):
                return await asyncssh.connect(
                    h.address,
                    h.port,
                    username=h.user,
                    known_hosts=known_hosts,
                    client_keys=[key] if key else (),
                    config=[],  # our settings are the whole truth, not ~/.ssh/config
                    encryption_algs=CIPHERS,
                    connect_timeout=limit,
                    keepalive_interval=self.settings.ssh_keepalive_s,
                    keepalive_count_max=KEEPALIVE_COUNT_MAX,
                    client_factory=lambda: _Client(self),
                )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyRefused(self._host_key_message()) from exc
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            raise AuthFailed(f"{self.label}: client key {key} cannot be loaded") from exc
        except asyncssh.PermissionDenied as exc:
            raise AuthFailed(
                f"{self.label}: login as {h.user!r} refused; is the client key in the host's "
                "authorized_keys?"
            ) from exc
        except (OSError, asyncssh.Error) as exc:  # TimeoutError is an OSError
            raise HostUnreachable(f"{self.label} unreachable: {_reason(exc)}") from exc

    def _host_key_message(self) -> str:
        h, path = self.host, self.settings.ssh_known_hosts
        return (
            f"host key of {self.label} is not in {path} or has changed; refusing to connect. "
            f"Record it deliberately with `ssh-keyscan -p {h.port} {h.address} >> {path}` "
            "after checking its fingerprint"
        )

    def _lost(self, conn: asyncssh.SSHClientConnection, exc: Exception | None) -> None:
        """connection_lost of any connection we made; only the pooled one counts."""
        if conn is not self._conn:
            return
        self._conn = None
        if self._closing or self.on_disconnect is None:
            return
        reason = _reason(exc) if exc else "connection closed"
        try:
            result = self.on_disconnect(reason)
        except Exception:
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, command: str, **kw: Any) -> asyncssh.SSHClientProcess[bytes]:
        """A new session channel running ``command``; a stale pooled connection gets one retry."""
        for attempt in (1, 2):
            conn = await self.connection()
            try:
                return await conn.create_process(command, encoding=None, **kw)
            except (OSError, asyncssh.Error) as exc:
                if attempt == 1 and conn.is_closed():
                    continue
                raise HostUnreachable(
                    f"{self.label}: cannot open a channel: {_reason(exc)}"
                ) from exc
        raise AssertionError("unreachable")

    async def open_shell(self) -> ShellChannel:
        return _SshShell(await self._process(" ".join(SHELL_ARGV)), self.label)

    async def exec(self, command: str, timeout: float) -> tuple[int, str, str]:  # noqa: ASYNC109
        proc = await self._process(command, stdin=asyncssh.DEVNULL)
        try:
            res = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError as exc:
            proc.close()
            msg = f"{self.label}: side command timed out after {timeout:g}s"
            raise CommandTimeout(msg) from exc
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(f"{self.label}: channel lost: {_reason(exc)}") from exc
        rc = res.returncode if res.returncode is not None else -1
        return rc, _decode(res.stdout), _decode(res.stderr)

    async def stream_lines(self, command: str) -> AsyncGenerator[str, None]:
        proc = await self._process(f"{command} 2>&1", stdin=asyncssh.DEVNULL)
        try:
            async for raw in proc.stdout:
                yield _decode(raw).rstrip("\n")
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(f"{self.label}: channel lost: {_reason(exc)}") from exc
        finally:
            proc.close()

    async def stream_input(self, command: str, stdin: bytes) -> AsyncGenerator[str, None]:
        proc = await self._process(command, stderr=asyncssh.STDOUT)
        lines = _Lines()
        try:
            proc.stdin.write(stdin)
            proc.stdin.write_eof()
            while data := await proc.stdout.read(READ_CHUNK):
                for line in lines.feed(data):
                    yield line
            for line in lines.close():
                yield line
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(f"{self.label}: channel lost: {_reason(exc)}") from exc
        finally:
            proc.close()

    async def close(self) -> None:
        self._closing = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason: the library's message or the exception type."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def make_transport(
    host: HostConfig, settings: Settings, *, on_disconnect: DisconnectHook | None = None
) -> Transport:
    """The transport a host's config asks for."""
    if host.transport == "local":
        return LocalTransport(host.alias or "local")
    return SshTransport(host, settings, on_disconnect=on_disconnect)
