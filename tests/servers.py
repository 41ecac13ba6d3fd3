"""Real servers for tests and benchmarks: NATS (JetStream), OpenSSH sshd, asyncssh, SeaweedFS S3.

Every server listens on 127.0.0.1 on a kernel-chosen port, is declared ready only after it
says so (log line or answering socket), and is terminated, then killed, by ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncssh

SHIMS_DIR = Path(__file__).resolve().parent / "shims"
SSHD = Path("/usr/sbin/sshd")
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    """Return ``n`` distinct free ports (all held open while choosing)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_binary(name: str) -> str:
    """Find ``name`` next to the running interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    if found := shutil.which(name):
        return found
    raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH")


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid``, found by walking /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], list(parents.get(pid, []))
    while todo:
        out.append(child := todo.pop())
        todo.extend(parents.get(child, []))
    return out


def _pids_with_env(entry: str) -> list[int]:
    """Pids whose environment contains ``entry`` ("NAME=value"); finds orphaned remote commands."""
    needle, out = b"\0" + entry.encode() + b"\0", []
    for env in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if needle in b"\0" + env.read_bytes():
                out.append(int(env.parent.name))
    return out


def sleepers(marker: str) -> list[int]:
    """PIDs of ``sleep`` processes with ``marker`` among their arguments (slow shim calls)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[:1] == [b"sleep"] and marker.encode() in args:
            found.append(int(cmdline.parent.name))
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class _Process:
    """A subprocess whose combined output goes to ``self.log``; base of the external servers."""

    name = "server"
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> int:
        """Start ``cmd`` appending to the log; return the log offset where this run begins."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        return offset

    def log_text(self, offset: int = 0) -> str:
        return self.log.read_bytes()[offset:].decode(errors="replace")

    def _wait_for(self, pattern: str, offset: int, timeout: float = 30) -> re.Match[str]:
        """Poll the log from ``offset`` until ``pattern`` appears; fail fast if the process dies."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if m := re.search(pattern, self.log_text(offset)):
                return m
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_text(offset)[-3000:]
                self.kill()
                raise RuntimeError(f"{self.name} not ready ({pattern!r}); log tail:\n{tail}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL (simulates a crash)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._cleanup()

    def _cleanup(self) -> None:
        """Remove leftovers after the process ended (override)."""

    def close(self) -> None:
        """Final teardown (same as ``stop()`` for external processes)."""
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsServer(_Process):
    """``nats-server`` with JetStream; ``restart()`` keeps the port and the store dir."""

    name = "nats-server"

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store_dir = self.root / "jetstream"
        self.log = self.root / "nats.log"
        self.port = port
        self.binary = find_binary("nats-server")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        cmd = [self.binary, "-a", "127.0.0.1", "-p", str(self.port or -1), "-js"]
        offset = self._spawn([*cmd, "-sd", str(self.store_dir)])
        m = self._wait_for(r"Listening for client connections on [\d.]+:(\d+)", offset)
        self.port = int(m.group(1))
        self._wait_for(r"Server is ready", offset)
        return self

    def restart(self) -> NatsServer:
        self.stop()
        return self.start()


def _write_key(key: asyncssh.SSHKey, path: Path) -> None:
    """Write an OpenSSH private key (mode 0600) and its ``.pub`` next to it."""
    key.write_private_key(str(path))
    path.chmod(0o600)
    key.write_public_key(str(path) + ".pub")


class _SshHostBase:
    """Keys, known_hosts and per-host simulator state shared by both SSH stand-ins."""

    host = "127.0.0.1"

    def __init__(self, root: Path, shims_dir: Path = SHIMS_DIR, port: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shims_dir = Path(shims_dir)
        self.sim_dir = self.root / "sim"  # SPARK_SIM_DIR for the shims on this host
        self.sim_dir.mkdir(exist_ok=True)
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.host_key_path = self.root / "ssh_host_ed25519_key"
        self.client_key_path = self.root / "id_ed25519"
        self.authorized_keys_path = self.root / "authorized_keys"
        self.known_hosts_path = self.root / "known_hosts"
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        _write_key(self.host_key, self.host_key_path)
        _write_key(asyncssh.generate_private_key("ssh-ed25519"), self.client_key_path)
        shutil.copy(str(self.client_key_path) + ".pub", self.authorized_keys_path)
        self._write_known_hosts(self.host_key, self.known_hosts_path)

    @property
    def env(self) -> dict[str, str]:
        """Environment forced onto every remote command (SPARK_SIM_PYTHON runs tests/sim)."""
        return {
            "PATH": f"{self.shims_dir}:{BASE_PATH}",
            "SPARK_SIM_DIR": str(self.sim_dir),
            "SPARK_SIM_PYTHON": sys.executable,
        }

    def add_container(
        self, name: str, image: str = "nvcr.io/nvidia/vllm:25.09-py3",
        status: str = "Up 5 minutes", ports: str = "0.0.0.0:8888->8000/tcp",
    ) -> str:  # fmt: skip
        """Add a container to the simulated ``docker ps`` (shims/docker); return its ID."""
        cid = secrets.token_hex(6)
        row = {"ID": cid, "Image": image, "Names": name, "Status": status, "Ports": ports}
        with (self.sim_dir / "containers.jsonl").open("a") as f:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
        return cid

    def set_docker_delay(self, seconds: float) -> None:
        """Make every simulated ``docker`` call run ``sleep <seconds>`` first (0 = no delay)."""
        delay = self.sim_dir / "docker_delay"
        if seconds:
            delay.write_text(f"{seconds:g}\n")
        else:
            delay.unlink(missing_ok=True)

    def sim_config(self, **knobs: Any) -> dict[str, Any]:
        """Merge ``knobs`` into the simulator's ``sim.json`` (``None`` = back to the default).

        Knobs (tests/sim/__init__.py): start_delay_s, fail_mode (none | crash | wedge | hang),
        fail_models, fail_starts, wedge_after_s, mem_total_bytes, model_bytes, reply,
        token_delay_s, stop_delay_s, bind_host, download_bytes, download_seconds, hf_config,
        hf_missing_repos, hf_gated_repos. Read at each container start and each ``hf`` call.
        Also restarts the ``fail_starts`` count. Returns the file's new content.
        """
        path = self.sim_dir / "sim.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(knobs)
        current = {k: v for k, v in current.items() if v is not None}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=1) + "\n")
        tmp.replace(path)
        (self.sim_dir / "failed_starts").unlink(missing_ok=True)
        return current

    def commands(self, tool: str | None = None) -> list[dict[str, Any]]:
        """Every docker / nvidia-smi / hf call the host received, oldest first, as
        ``{"argv": [tool, *args], "ts": epoch seconds}`` (``tool`` keeps one program's)."""
        path = self.sim_dir / "commands.log"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if tool is None or r["argv"][:1] == [tool]]

    def container_log(self, name: str) -> str:
        """The log of the simulated container ``name`` (or ID) as ``docker logs`` prints it."""
        rows_path = self.sim_dir / "containers.jsonl"
        lines = rows_path.read_text().splitlines() if rows_path.exists() else []
        for row in map(json.loads, filter(str.strip, lines)):
            if name in (row.get("Names"), row.get("ID")):
                log = self.sim_dir / "containers" / row["ID"] / "log"
                return log.read_text(errors="replace") if log.exists() else ""
        raise KeyError(f"no container {name!r} on this simulated host")

    @property
    def hf_cache(self) -> Path:
        """Where the simulated ``hf download`` puts models (the ``hub`` dir of an HF_HOME)."""
        return self.sim_dir / "hf-cache" / "hub"

    def sim_processes(self) -> list[int]:
        """PIDs of processes started for this host (they carry its SPARK_SIM_DIR), e.g. the
        detached supervisors and stub servers of its simulated containers."""
        return [p for p in _pids_with_env(f"SPARK_SIM_DIR={self.sim_dir}") if p != os.getpid()]

    def kill_sim_processes(self, sig: signal.Signals = signal.SIGKILL) -> list[int]:
        """Signal every process of :meth:`sim_processes`; return their PIDs."""
        pids = self.sim_processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def _write_known_hosts(self, key: asyncssh.SSHKey, path: Path) -> Path:
        pub = key.export_public_key("openssh").decode().strip()
        path.write_text(f"[{self.host}]:{self.port} {pub}\n")
        return path

    def write_wrong_known_hosts(self, path: Path | None = None) -> Path:
        """Write a known_hosts that pins a different key for this host:port (a changed host key)."""
        other = asyncssh.generate_private_key("ssh-ed25519")
        return self._write_known_hosts(other, path or self.root / "known_hosts.wrong")

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncssh.connect`` that reach this host securely."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.user,
            "client_keys": [str(self.client_key_path)],
            "known_hosts": str(self.known_hosts_path),
        }


class SshdHost(_SshHostBase, _Process):
    """OpenSSH ``sshd`` on 127.0.0.1 as a stand-in GPU host; the shims come first on PATH."""

    name = "sshd"

    def __init__(self, root: Path, shims_dir: Path = SHIMS_DIR, port: int = 0) -> None:
        super().__init__(root, shims_dir, port)
        self.log = self.root / "sshd.log"
        self.config_path = self.root / "sshd_config"
        # SHLVL=1: bash started by sshd sources ~/.bashrc only at SHLVL<2 (Debian's
        # SSH_SOURCE_BASHRC), and a .bashrc that prepends to PATH would push the shims back.
        env = " ".join(f"{k}={v}" for k, v in {**self.env, "SHLVL": "1"}.items())
        self.config_path.write_text(
            f"""ListenAddress 127.0.0.1
Port {self.port}
HostKey {self.host_key_path}
PidFile {self.root / "sshd.pid"}
AuthorizedKeysFile {self.authorized_keys_path}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
PrintMotd no
PrintLastLog no
MaxSessions 64
MaxStartups 64:30:128
SetEnv {env}
Subsystem sftp internal-sftp
"""
        )

    def start(self) -> SshdHost:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privsep dir
        offset = self._spawn([str(SSHD), "-D", "-e", "-f", str(self.config_path)])
        self._wait_for(rf"Server listening on 127\.0\.0\.1 port {self.port}\b", offset)
        return self

    def _end(self, sig: signal.Signals) -> None:
        """Signal every session and remote command, even orphaned ones (found via SPARK_SIM_DIR)."""
        pids = _descendants(self.proc.pid) if self.running and self.proc else []
        for pid in {*pids, *_pids_with_env(f"SPARK_SIM_DIR={self.sim_dir}")}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, timeout: float = 10) -> None:
        """Stop sshd and drop all sessions (the host goes away)."""
        self._end(signal.SIGTERM)
        super().stop(timeout)

    def kill(self) -> None:
        """SIGKILL sshd and all sessions (a crashed host)."""
        self._end(signal.SIGKILL)
        super().kill()


class AsyncsshHost(_SshHostBase):
    """In-process asyncssh server (own thread + loop) running each request via local ``bash``."""

    def __init__(self, root: Path, shims_dir: Path = SHIMS_DIR, port: int = 0) -> None:
        super().__init__(root, shims_dir, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncssh.SSHAcceptor | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._procs: set[asyncio.subprocess.Process] = set()

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> AsyncsshHost:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="asyncssh-host", daemon=True
            )
            self._thread.start()
        self._server = self._run(self._listen())
        return self

    async def _listen(self) -> asyncssh.SSHAcceptor:
        host = self

        class _Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                self.conn = conn
                host._conns.add(conn)

            def connection_lost(self, exc: Exception | None) -> None:
                host._conns.discard(self.conn)

        return await asyncssh.create_server(
            _Server,
            self.host,
            self.port,
            server_host_keys=[self.host_key],
            authorized_client_keys=str(self.authorized_keys_path),
            process_factory=self._handle,
            encoding=None,
            sftp_factory=True,
            allow_scp=True,
            reuse_address=True,
        )

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run the exec request (or a shell) as a real local process, piping all three streams."""
        argv = ["bash", "-c", process.command] if process.command else ["bash"]
        env = {**os.environ, **self.env, "HOME": str(Path.home())}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=str(Path.home()),
            start_new_session=True,
        )
        self._procs.add(proc)
        closed: asyncio.Future[None] | None = None
        try:
            # send_eof=False: the SSH channel has one EOF for both streams; send it ourselves.
            await process.redirect(proc.stdin, proc.stdout, proc.stderr, send_eof=False)
            exited = asyncio.ensure_future(proc.wait())
            closed = asyncio.ensure_future(process.wait_closed())
            await asyncio.wait({exited, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not closed.done():
                await process.stdout.drain()  # forward all output before the exit status
                await process.stderr.drain()
                process.channel.write_eof()
                rc = await exited
                process.exit(rc if rc >= 0 else 128 - rc)
        finally:  # if the client went away (or we failed), kill the command's process group
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            if proc.stdin:
                proc.stdin.close()
            self._procs.discard(proc)
            if closed:  # also runs asyncssh's per-process cleanup tasks
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closed, 2)

    async def _shutdown(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()
        for proc in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Close the listener, drop every connection and kill remote processes."""
        if self._loop is None:
            return
        self._run(self._shutdown())
        self.kill_sim_processes()  # detached simulated containers go down with the host

    kill = stop

    def __enter__(self) -> Any:
        return self

    def close(self) -> None:
        """Stop and end the background loop thread (``stop()`` keeps it for a later ``start()``)."""
        self.stop()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._loop = self._thread = None

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._server is not None


class SeaweedS3(_Process):
    """SeaweedFS ``weed mini`` with one admin S3 identity, so request signatures are checked."""

    name = "weed mini"
    region = "us-east-1"

    def __init__(
        self, root: Path, access_key: str = "spark-test-key", secret_key: str = "spark-test-secret"
    ) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "weed.log"
        self.access_key, self.secret_key = access_key, secret_key
        self.config_path = self.root / "s3.json"
        creds = [{"accessKey": access_key, "secretKey": secret_key}]
        actions = ["Admin", "Read", "List", "Tagging", "Write"]
        identity = {"name": "spark", "credentials": creds, "actions": actions}
        self.config_path.write_text(json.dumps({"identities": [identity]}))
        self.binary = find_binary("weed")
        self.s3_port = 0
        self._ports: list[int] = []

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @staticmethod
    def _admin_ports() -> tuple[int, int]:
        """Free (http, http + 10000): the mini's built-in worker dials admin http port + 10000."""
        for _ in range(200):
            port = random.randrange(10000, 22768)  # both below the ephemeral range
            with socket.socket() as a, socket.socket() as b:
                try:
                    a.bind(("127.0.0.1", port))
                    b.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
                return port, port + 10000
        raise RuntimeError("no free admin port pair")

    def start(self, timeout: float = 60) -> SeaweedS3:
        """Start on fresh ports, or on the previous ones after a stop (see ``restart``)."""
        if not self._ports:
            admin, admin_grpc = self._admin_ports()
            self._ports = [*_free_ports(8), admin, admin_grpc]
        p = self._ports
        admin, admin_grpc = p[8], p[9]
        self.s3_port = p[6]
        flags = {
            "dir": self.data_dir, "ip": "127.0.0.1", "ip.bind": "127.0.0.1",
            "master.port": p[0], "master.port.grpc": p[1],
            "volume.port": p[2], "volume.port.grpc": p[3],
            "filer.port": p[4], "filer.port.grpc": p[5],
            "s3.port": p[6], "s3.port.grpc": p[7],
            "s3.port.iceberg": 0, "s3.port.lance": 0, "s3.config": self.config_path,
            "admin.port": admin, "admin.port.grpc": admin_grpc, "admin.ui": "false",
            "webdav": "false", "master.telemetry": "false", "volume.preStopSeconds": 0,
        }  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        offset = self._spawn([self.binary, "mini", *(f"-{k}={v}" for k, v in flags.items())], env)
        deadline = time.monotonic() + timeout
        while not _port_open(self.s3_port):
            if not self.running or time.monotonic() > deadline:
                tail = self.log_text(offset)[-3000:]
                self.kill()
                raise RuntimeError(f"weed S3 never listened on {self.s3_port}; log:\n{tail}")
            time.sleep(0.02)
        return self

    def restart(self) -> SeaweedS3:
        """Stop and start again on the same ports and data (URLs signed before stay valid)."""
        self.stop()
        return self.start()

    def _cleanup(self) -> None:
        """Remove the unix sockets weed leaves in /tmp (named after its ports)."""
        for port in self._ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


class _HfHome:
    """A test host whose HF_HOME is the simulator's cache (``$SPARK_SIM_DIR/hf-cache``), so the
    cache the weights actions compute on the host is the one the simulated ``hf`` writes."""

    sim_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "HF_HOME": str(self.sim_dir / "hf-cache")}  # type: ignore[misc]


class HfSshdHost(_HfHome, SshdHost):
    pass


class HfAsyncsshHost(_HfHome, AsyncsshHost):
    pass
