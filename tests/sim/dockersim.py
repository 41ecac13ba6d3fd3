#!/usr/bin/env python3
"""The simulated GPU host's ``docker`` and ``hf`` (standard library only).

The shell shims in ``tests/shims`` record every call in ``$SPARK_SIM_DIR/commands.log``, answer
the cheap read-only verbs themselves (``docker ps --format '{{json .}}'``, ``docker version``,
``nvidia-smi``) and hand everything else to this program::

    dockersim.py docker <verb> [args...]   run create-less lifecycle: run start stop restart kill
                                           rm ps logs inspect exec wait pull
    dockersim.py hf <command> [args...]    download, auth whoami, version
    dockersim.py env [SIM_DIR]             print the exports that put the simulator on PATH
    dockersim.py down [SIM_DIR]            kill every simulated container of a sim dir
    dockersim.py _shim <container dir>     (internal) the per-container supervisor

State lives in ``$SPARK_SIM_DIR`` (see ``tests/sim/__init__.py`` for the layout and the knobs of
``sim.json``). A container is a detached supervisor (``_shim``, like containerd-shim) whose child
is ``stub_vllm.py`` for a ``vllm serve`` command; both carry ``SPARK_SIM_DIR`` in their
environment, which is how the test hosts find and kill them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHIMS = HERE.parent / "shims"
STUB = HERE / "stub_vllm.py"
DOCKER_VERSION = "27.3.1"
GIB, MIB = 1024**3, 1024**2
DEFAULTS: dict[str, Any] = {
    "start_delay_s": 1.0,  # seconds from `docker run` to "Application startup complete."
    "fail_mode": "none",  # none | crash | wedge | hang
    "fail_models": [],  # fail only these models (repo or served name); [] = every model
    "fail_starts": None,  # fail only the next N starts (then healthy); None = every start
    "wedge_after_s": 0.0,  # wedge: seconds between ready and the CUDA error
    "mem_total_bytes": 128 * GIB,  # unified memory the stub's KV-cache arithmetic uses
    "model_bytes": None,  # weights size in the start-up lines; None = guessed from the name
    "reply": "Hello from the spark-control simulator.",
    "token_delay_s": 0.0,  # seconds between streamed chunks
    "stop_delay_s": 0.0,  # seconds the stub takes to shut down after SIGTERM
    "bind_host": "127.0.0.1",  # where stub servers listen
    "download_bytes": 8 * MIB,  # size of the weights file `hf download` writes
    "download_seconds": 1.0,  # how long that takes
    "hf_config": {},  # fields merged into the downloaded config.json
    "hf_missing_repos": [],  # repos `hf download` answers 404 for
    "hf_gated_repos": [],  # repos that need HF_TOKEN (or --token)
    "vllm_extra_flags": [],  # `vllm serve --help` lists these beyond the repo's vllm_flags.txt
    "registry_key_sha256": [],  # `docker login --password-stdin` accepts passwords with these
}
FAIL_MODES = ("none", "crash", "wedge", "hang")
SAFE_COMMANDS = {"nvidia-smi", "echo", "true", "false", "sleep", "env", "hostname", "uname"}
"""Non-vLLM container commands that really run (on the host itself); others idle."""


def sim_dir() -> Path:
    return Path(os.environ.get("SPARK_SIM_DIR") or f"/tmp/spark-sim-{os.getuid()}")


def knobs(sim: Path | None = None) -> dict[str, Any]:
    """``sim.json`` over the defaults (a broken file is reported and ignored)."""
    path = (sim or sim_dir()) / "sim.json"
    try:
        raw = json.loads(path.read_text())
        assert isinstance(raw, dict)
    except FileNotFoundError:
        raw = {}
    except (ValueError, AssertionError, OSError) as exc:
        print(f"dockersim: ignoring {path}: {exc}", file=sys.stderr)
        raw = {}
    return {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    frac = f"{ts % 1:.9f}"[2:]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{frac}Z"


def human(seconds: float) -> str:
    """docker's units.HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    if s // 60 == 1:
        return "About a minute"
    if s < 3600:
        return f"{s // 60} minutes"
    h = (s + 1800) // 3600
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{s // 3600 // 24 // 365} years"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are dead
    return True


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Fail(Exception):
    """A CLI error: message for stderr and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- the container store -----------------------------------------------------------------------


class Store:
    """``containers.jsonl`` (the ``docker ps`` rows) plus one directory per container.

    A row written by this program ends with ``"State", "Status", "Ports"``, which the shell shim
    recomputes from ``containers/<ID>/state``: ``created <ts>`` | ``running <started> <shim pid>``
    | ``restarting <code> <finished> <shim pid>`` | ``exited <code> <finished> <started>``.
    Rows without a directory (``add_container`` in tests/servers.py) are shown as written.
    """

    def __init__(self, sim: Path) -> None:
        self.sim = sim
        self.rows_path = sim / "containers.jsonl"
        self.cdir = sim / "containers"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.sim.mkdir(parents=True, exist_ok=True)
        with (self.sim / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.rows_path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    row = json.loads(line)
                    if isinstance(row, dict) and row.get("ID"):
                        out.append(row)
        return out

    def save(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(
            json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in rows
        )
        write_atomic(self.rows_path, text)

    def dir(self, row: dict[str, Any]) -> Path:
        return self.cdir / row["ID"]

    def find(self, ref: str) -> dict[str, Any] | None:
        """By exact name, full or short ID, or a unique ID prefix (as docker resolves)."""
        rows = self.rows()
        for row in rows:
            if ref in (row.get("Names"), row["ID"]) or ref == f"/{row.get('Names')}":
                return row
            if self.config(row).get("Id") == ref:
                return row
        hits = [r for r in rows if ref and self.config(r).get("Id", r["ID"]).startswith(ref)]
        return hits[0] if len(hits) == 1 else None

    def get(self, ref: str) -> dict[str, Any]:
        row = self.find(ref)
        if row is None:
            raise Fail(f"Error response from daemon: No such container: {ref}")
        return row

    def config(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            return json.loads((self.dir(row) / "config.json").read_text())
        except (OSError, ValueError):
            return {}

    def save_config(self, row: dict[str, Any], cfg: dict[str, Any]) -> None:
        write_atomic(self.dir(row) / "config.json", json.dumps(cfg, indent=1))

    # --- state ---------------------------------------------------------------------------------
    def state(self, row: dict[str, Any]) -> dict[str, Any]:
        """{state, code, started, finished, pid}; a dead supervisor means ``exited 137``."""
        d = self.dir(row)
        try:
            parts = (d / "state").read_text().split()
        except OSError:
            parts = []
        if not parts:  # a row written by hand: trust its Status
            status = row.get("Status", "")
            m = re.match(r"(Exited|Restarting) \((-?\d+)\)", status)
            if status.startswith("Up"):
                return {"state": "running", "code": 0, "started": 0.0, "finished": 0.0, "pid": 0}
            if m:
                kind = m.group(1).lower()
                return {
                    "state": kind,
                    "code": int(m.group(2)),
                    "started": 0.0,
                    "finished": 0.0,
                    "pid": 0,
                }
            return {"state": "created", "code": 0, "started": 0.0, "finished": 0.0, "pid": 0}
        kind, rest = parts[0], [*parts[1:], "0", "0", "0"]
        st: dict[str, Any] = {"state": kind, "code": 0, "started": 0.0, "finished": 0.0, "pid": 0}
        if kind == "running":
            st["started"], shim = float(rest[0]), rest[1]
            if shim != "-" and not pid_alive(int(shim)):
                st.update(state="exited", code=137, finished=now())
                self.set_state(row, f"exited 137 {st['finished']:.2f} {st['started']:.2f}")
            else:
                st["pid"] = self.stub_pid(row)
        elif kind == "restarting":
            st["code"], st["finished"] = int(rest[0]), float(rest[1])
        elif kind == "exited":
            st["code"], st["finished"], st["started"] = int(rest[0]), float(rest[1]), float(rest[2])
        return st

    def stub_pid(self, row: dict[str, Any]) -> int:
        try:
            return int((self.dir(row) / "pid").read_text())
        except (OSError, ValueError):
            return 0

    def set_state(self, row: dict[str, Any], line: str) -> None:
        d = self.dir(row)
        if d.is_dir():
            write_atomic(d / "state", line + "\n")

    def status(self, row: dict[str, Any], st: dict[str, Any] | None = None) -> str:
        st = st or self.state(row)
        if not (self.dir(row) / "state").exists():
            return str(row.get("Status", ""))
        if st["state"] == "running":
            return "Up " + human(now() - st["started"])
        if st["state"] in ("exited", "restarting"):
            word = "Exited" if st["state"] == "exited" else "Restarting"
            return f"{word} ({st['code']}) {human(now() - st['finished'])} ago"
        return "Created"

    def adopt(self, row: dict[str, Any]) -> dict[str, Any]:
        """Give a hand-written row a directory and state so it can be stopped and started."""
        d = self.dir(row)
        if (d / "state").exists():
            return row
        st = self.state(row)
        d.mkdir(parents=True, exist_ok=True)
        (d / "log").touch()
        cid = row["ID"] + secrets.token_hex(26)
        self.save_config(
            row,
            {
                "Id": cid,
                "Name": row.get("Names", ""),
                "Image": row.get("Image"),
                "Cmd": [],
                "kind": "static",
                "Created": now(),
            },
        )
        if st["state"] == "running":
            self.set_state(row, f"running {now():.2f} -")
        elif st["state"] == "created":
            self.set_state(row, f"created {now():.2f}")
        else:
            self.set_state(row, f"{st['state']} {st['code']} {now():.2f} 0")
        new = {k: v for k, v in row.items() if k not in ("State", "Status", "Ports")}
        new.update(State=st["state"], Status=row.get("Status", ""), Ports=row.get("Ports", ""))
        with self.lock():
            rows = [new if r["ID"] == row["ID"] else r for r in self.rows()]
            self.save(rows)
        return new

    def remove(self, row: dict[str, Any]) -> None:
        with self.lock():
            self.save([r for r in self.rows() if r["ID"] != row["ID"]])
        d = self.dir(row)
        if d.is_dir():
            for p in sorted(d.rglob("*"), reverse=True):
                with contextlib.suppress(OSError):
                    p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
            with contextlib.suppress(OSError):
                d.rmdir()

    def view(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row as ``docker ps`` shows it now (live State / Status / Ports)."""
        st = self.state(row)
        out = dict(row)
        out["State"] = st["state"]
        out["Status"] = self.status(row, st)
        if st["state"] != "running" and (self.dir(row) / "state").exists():
            out["Ports"] = ""
        if created := self.config(row).get("Created"):
            out["RunningFor"] = human(now() - created) + " ago"
        return out


# --- docker CLI parsing ------------------------------------------------------------------------


def parse_flags(
    verb: str,
    args: list[str],
    valued: dict[str, str],
    boolean: dict[str, str],
    interspersed: bool = True,
) -> tuple[dict[str, list[str]], list[str]]:
    """pflag-like parsing: long ``--x v``/``--x=v``, short ``-x v``/``-xv``, bundles ``-dit``."""
    opts: dict[str, list[str]] = {}
    pos: list[str] = []
    i = 0

    def bad(msg: str) -> Fail:
        return Fail(f"{msg}\nSee 'docker {verb} --help'.", 125)

    while i < len(args):
        a = args[i]
        if a == "--":
            pos.extend(args[i + 1 :])
            break
        if a.startswith("--") and len(a) > 2:
            name, eq, val = a.partition("=")
            if name in valued:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise bad(f"flag needs an argument: {name}")
                    val = args[i]
                opts.setdefault(valued[name], []).append(val)
            elif name in boolean:
                opts.setdefault(boolean[name], []).append(val if eq else "true")
            else:
                raise bad(f"unknown flag: {name}")
        elif a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                f = "-" + a[j]
                if f in boolean:
                    opts.setdefault(boolean[f], []).append("true")
                    j += 1
                elif f in valued:
                    val = a[j + 1 :].removeprefix("=")
                    if not val:
                        i += 1
                        if i >= len(args):
                            raise bad(f"flag needs an argument: '{a[j]}' in {f}")
                        val = args[i]
                    opts.setdefault(valued[f], []).append(val)
                    break
                else:
                    raise bad(f"unknown shorthand flag: '{a[j]}' in {a}")
        elif interspersed:
            pos.append(a)
        else:
            pos.extend(args[i:])
            break
        i += 1
    return opts, pos


def _flags(spec: str) -> dict[str, str]:
    """``"-p --publish|--name"`` → {"-p": "publish", "--publish": "publish", "--name": "name"}."""
    out: dict[str, str] = {}
    for group in spec.split("|"):
        names = group.split()
        canon = next(n for n in names if n.startswith("--")).lstrip("-")
        out.update({n: canon for n in names})
    return out


RUN_VALUED = _flags(
    "--name|--gpus|--ipc|--network --net|-p --publish|-v --volume|-e --env|--env-file|--restart"
    "|--shm-size|--ulimit|--entrypoint|-w --workdir|-l --label|--runtime|--device|--cap-add"
    "|--cap-drop|--security-opt|-u --user|-h --hostname|--pull|-m --memory|--cpus|--log-driver"
    "|--log-opt|--platform|--stop-timeout|--mount|--add-host|--pid|--uts|--group-add|--tmpfs"
    "|--cidfile|--health-cmd|--health-interval|--health-timeout|--health-retries|--stop-signal"
    "|--memory-swap|--oom-score-adj|--sysctl|--dns|--label-file|--cgroupns"
)
RUN_BOOL = _flags(
    "-d --detach|--rm|--privileged|-i --interactive|-t --tty|--init|-P --publish-all|--read-only"
    "|-q --quiet|--no-healthcheck|--oom-kill-disable"
)


# --- Go templates (the subset docker users write) ----------------------------------------------

_TEMPLATE = re.compile(r"\{\{-?\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*-?\}\}")


def go_str(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_str(x)}" for k, x in sorted(v.items())) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    return str(v)


def render(fmt: str, obj: dict[str, Any]) -> str:
    """``{{.A.B}}``, ``{{json .}}``, ``{{json .A}}`` with ``\\t``/``\\n`` escapes, else an error."""
    fmt = fmt.replace("\\t", "\t").replace("\\n", "\n")
    if "{{" in _TEMPLATE.sub("", fmt):
        raise Fail(f"template parsing error: unsupported template (simulator): {fmt}", 125)

    def sub(m: re.Match[str]) -> str:
        v: Any = obj
        for key in filter(None, m.group(2).split(".")):
            if not isinstance(v, dict) or key not in v:
                if m.group(1):
                    return "null"
                return "<no value>"
            v = v[key]
        return json.dumps(v, separators=(",", ":")) if m.group(1) else go_str(v)

    return _TEMPLATE.sub(sub, fmt)


# --- vLLM command lines ------------------------------------------------------------------------


def vllm_args(image: str, cmd: list[str]) -> list[str] | None:
    """The arguments after ``vllm serve`` (also inside ``bash -c``), or None if not vLLM."""
    tokens = cmd
    if len(cmd) >= 3 and Path(cmd[0]).name in ("bash", "sh") and cmd[1] in ("-c", "-lc"):
        with contextlib.suppress(ValueError):
            tokens = shlex.split(cmd[2])
    for i in range(len(tokens) - 1):
        if Path(tokens[i]).name == "vllm" and tokens[i + 1] == "serve":
            out = tokens[i + 2 :]
            for j, t in enumerate(out):  # stop at a shell operator inside bash -c
                if t in ("&&", "||", ";", "|"):
                    return out[:j]
            return out
        if tokens[i] == "-m" and tokens[i + 1] == "vllm.entrypoints.openai.api_server":
            return tokens[i + 2 :]
    if "vllm-openai" in image and (not cmd or cmd[0].startswith("-")):
        return cmd  # that image's entrypoint is `vllm serve`
    return None


def vllm_help(k: dict[str, Any]) -> str:
    """``vllm serve --help=all`` as the simulated image prints it: the repo's flag list
    (app/vllm_flags.txt) plus the ``vllm_extra_flags`` knob, argparse-style."""
    listed = Path(__file__).resolve().parents[2] / "app" / "vllm_flags.txt"
    flags = [s for line in listed.read_text().splitlines()
             if (s := line.strip()) and not s.startswith("#")]  # fmt: skip
    flags += [str(f) for f in k.get("vllm_extra_flags") or []]
    rows = "".join(f"  {f} {f[2:].upper().replace('-', '_')}\n" for f in sorted(set(flags)))
    return (
        "usage: vllm serve [model_tag] [options]\n\nStart the vLLM OpenAI Compatible API "
        f"server.\n\noptions:\n  -h, --help            show this help message and exit\n{rows}"
    )


def parse_vllm(args: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": None,
        "port": 8000,
        "served": [],
        "max_model_len": None,
        "gmu": 0.9,
        "api_key": None,
        "access_log": True,
    }
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, val = a.partition("=")
        takes = name in (
            "--model",
            "--port",
            "--max-model-len",
            "--gpu-memory-utilization",
            "--api-key",
            "--host",
        )
        if takes and not eq and i + 1 < len(args):
            i += 1
            val = args[i]
        with contextlib.suppress(ValueError):
            if name == "--model":
                out["model"] = val
            elif name == "--port":
                out["port"] = int(val)
            elif name == "--max-model-len":
                out["max_model_len"] = int(val.lower().replace("k", "000"))
            elif name == "--gpu-memory-utilization":
                out["gmu"] = float(val)
            elif name == "--api-key":
                out["api_key"] = val
            elif name == "--disable-uvicorn-access-log":
                out["access_log"] = False
            elif name == "--served-model-name":
                names = [val] if eq else []
                while not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                    i += 1
                    names.append(args[i])
                out["served"] = names
            elif not a.startswith("-") and out["model"] is None and i == 0:
                out["model"] = a
        i += 1
    out["model"] = out["model"] or "facebook/opt-125m"
    return out


def parse_publish(spec: str) -> tuple[str, int | None, int, str]:
    """``[ip:][host:]container[/proto]`` → (ip, host port or None, container port, proto)."""
    spec, _, proto = spec.partition("/")
    parts = spec.rsplit(":", 2)
    try:
        if len(parts) == 1:
            return "", None, int(parts[0]), proto or "tcp"
        if len(parts) == 2:
            return "", int(parts[0]) if parts[0] else None, int(parts[1]), proto or "tcp"
        return parts[0], int(parts[1]) if parts[1] else None, int(parts[2]), proto or "tcp"
    except ValueError:
        raise Fail(
            f"docker: invalid containerPort: {spec}\nSee 'docker run --help'.", 125
        ) from None


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


HEADERS = {
    "ID": "CONTAINER ID",
    "Image": "IMAGE",
    "Command": "COMMAND",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
    "Ports": "PORTS",
    "State": "STATE",
    "Status": "STATUS",
    "Size": "SIZE",
    "Names": "NAMES",
    "Labels": "LABELS",
    "Mounts": "MOUNTS",
    "Networks": "NETWORKS",
    "LocalVolumes": "LOCAL VOLUMES",
}
_ADJ = ("admiring", "brave", "clever", "eager", "focused", "gallant", "happy", "jolly", "keen")
_NOUN = ("turing", "hopper", "lovelace", "noether", "curie", "dijkstra", "knuth", "ritchie")


# --- the docker verbs --------------------------------------------------------------------------


class Docker:
    def __init__(self, sim: Path) -> None:
        self.sim = sim
        self.store = Store(sim)
        self.k = knobs(sim)

    def out(self, text: str) -> None:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")

    # run ---------------------------------------------------------------------------------------
    def run(self, args: list[str]) -> int:
        opts, pos = parse_flags("run", args, RUN_VALUED, RUN_BOOL, interspersed=False)
        if not pos:
            raise Fail(
                "docker: 'docker run' requires at least 1 argument.\nSee 'docker run --help'.", 125
            )
        image, cmd = pos[0], pos[1:]
        name = (opts.get("name") or [""])[-1]
        if name and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", name):
            raise Fail(
                f"docker: Error response from daemon: Invalid container name ({name}), "
                "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed.",
                125,
            )
        network = (opts.get("network") or ["bridge"])[-1]
        restart = (opts.get("restart") or ["no"])[-1]
        if restart != "no" and "rm" in opts:
            raise Fail(
                "docker: Conflicting options: --restart and --rm.\nSee 'docker run --help'.", 125
            )
        if not re.fullmatch(r"no|always|unless-stopped|on-failure(:\d+)?", restart):
            raise Fail(f"docker: invalid restart policy: {restart}\nSee 'docker run --help'.", 125)
        publish = [parse_publish(p) for p in opts.get("publish", [])]
        if network == "host" and publish:
            print(
                "WARNING: Published ports are discarded when using host network mode",
                file=sys.stderr,
            )
            publish = []
        vargs = vllm_args(image, cmd)
        if vargs is not None and any(a == "--help" or a.startswith("--help=") for a in vargs):
            self.out(vllm_help(self.k))  # `docker run --rm <image> vllm serve --help=all`
            return 0
        vllm = parse_vllm(vargs) if vargs is not None else None
        cport = vllm["port"] if vllm else None
        bind = self.k["bind_host"]
        publish = [
            (ip, hp if hp is not None else self._ephemeral(bind), cp, pr)
            for ip, hp, cp, pr in publish
        ]
        listen: int | None = None
        if vllm and network == "host":
            listen = cport
        elif publish:
            listen = next((hp for _, hp, cp, _ in publish if cp == cport or not vllm), None)
        with self.store.lock():
            rows = self.store.rows()
            if not name:
                taken = {r.get("Names") for r in rows}
                name = next(f"{a}_{n}" for a in _ADJ for n in _NOUN if f"{a}_{n}" not in taken)
            for r in rows:
                if r.get("Names") == name:
                    cid = self.store.config(r).get("Id", r["ID"])
                    raise Fail(
                        "docker: Error response from daemon: Conflict. The container name "
                        f'"/{name}"'
                        f' is already in use by container "{cid}". You have to remove (or rename)'
                        " that container to be able to reuse that name.\n"
                        "See 'docker run --help'.",
                        125,
                    )
            cid = secrets.token_hex(32)
            for ip, hp, _cp, _pr in publish:
                used = any(
                    hp in self._host_ports(r)
                    for r in rows
                    if self.store.state(r)["state"] in ("running", "restarting")
                )
                if used or not port_free(bind, hp):
                    raise Fail(
                        f"docker: Error response from daemon: driver failed programming external "
                        f"connectivity on endpoint {name} ({cid}): Bind for {ip or '0.0.0.0'}:{hp} "
                        "failed: port is already allocated.",
                        125,
                    )
            created = now()
            ports = ", ".join(f"{ip or '0.0.0.0'}:{hp}->{cp}/{pr}" for ip, hp, cp, pr in publish)
            shown = " ".join(cmd)
            row = {
                "ID": cid[:12],
                "Image": image,
                "Names": name,
                "Command": json.dumps(
                    shown if len(shown) <= 20 else shown[:19] + "…", ensure_ascii=False
                ),
                "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(created)),
                "Labels": ",".join(opts.get("label", [])),
                "Mounts": ",".join(v.split(":")[0] for v in opts.get("volume", [])),
                "Networks": network,
                "State": "created",
                "Status": "Created",
                "Ports": ports,
            }
            d = self.store.dir(row)
            d.mkdir(parents=True, exist_ok=True)
            (d / "log").touch()
            cfg = {
                "Id": cid,
                "Name": name,
                "Image": image,
                "Cmd": cmd,
                "Created": created,
                "run_argv": ["docker", "run", *args],
                "env": opts.get("env", []),
                "volumes": opts.get("volume", []),
                "network": network,
                "ipc": (opts.get("ipc") or [""])[-1],
                "gpus": (opts.get("gpus") or [None])[-1],
                "privileged": "privileged" in opts,
                "restart": restart,
                "rm": "rm" in opts,
                "detach": "detach" in opts,
                "publish": publish,
                "listen": listen,
                "vllm": vllm,
                "kind": "vllm" if vllm else "generic",
                "restart_count": 0,
            }
            self.store.save_config(row, cfg)
            self.store.set_state(row, f"created {created:.2f}")
            self.store.save([row, *rows])  # newest first, as docker ps lists
        self.start_one(row)
        if "detach" in opts:
            self.out(cid)
            return 0
        self.follow(row, tail=None, follow=True)
        code = int(self.store.state(row)["code"])
        if cfg["rm"]:  # an attached --rm run is removed by the client, as docker did
            self.store.remove(row)
        return code

    def _ephemeral(self, host: str) -> int:
        with socket.socket() as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])

    def _host_ports(self, row: dict[str, Any]) -> set[int]:
        cfg = self.store.config(row)
        ports = {int(p[1]) for p in cfg.get("publish", []) if p[1]}
        return ports | ({cfg["listen"]} if cfg.get("listen") else set())

    # start / stop ------------------------------------------------------------------------------
    def start_one(self, row: dict[str, Any]) -> None:
        d = self.store.dir(row)
        cfg = self.store.config(row)
        (d / "stopping").unlink(missing_ok=True)
        if cfg.get("kind") == "static":
            self.store.set_state(row, f"running {now():.2f} -")
            return
        env = {**os.environ, "SPARK_SIM_DIR": str(self.sim)}
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_shim", str(d)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(d / "shim.log").open("ab"),
            env=env,
            cwd=str(self.sim),
            start_new_session=True,
            close_fds=True,
        )
        deadline = now() + 15
        while now() < deadline:  # until the supervisor has started the main process
            with contextlib.suppress(OSError):
                if (d / "state").read_text().split()[0] != "created":
                    return
            time.sleep(0.01)
        raise Fail(f"Error response from daemon: simulated container {row['Names']} did not start")

    def stop_one(self, row: dict[str, Any], timeout: float, sig: int = signal.SIGTERM) -> None:
        cfg = self.store.config(row)
        st = self.store.state(row)
        if st["state"] not in ("running", "restarting"):
            return
        d = self.store.dir(row)
        if cfg.get("kind") == "static" or not cfg:
            row = self.store.adopt(row)
            code = 137 if sig == signal.SIGKILL else 0
            self.store.set_state(row, f"exited {code} {now():.2f} {st['started']:.2f}")
            return
        (d / "stopping").touch()
        self._signal_main(row, sig)
        deadline = now() + timeout
        while now() < deadline and self._live(row):
            time.sleep(0.02)
        if self._live(row):
            self._signal_main(row, signal.SIGKILL)
            deadline = now() + 5
            while now() < deadline and self._live(row):
                time.sleep(0.02)
        deadline = now() + 5  # a detached --rm container is gone when stop returns
        while (
            cfg.get("rm") and cfg.get("detach") and now() < deadline and self.store.find(row["ID"])
        ):
            time.sleep(0.02)

    def _live(self, row: dict[str, Any]) -> bool:
        if not (self.store.dir(row) / "state").exists() and self.store.find(row["ID"]) is None:
            return False  # removed (--rm)
        return self.store.state(row)["state"] in ("running", "restarting")

    def _signal_main(self, row: dict[str, Any], sig: int) -> None:
        """Signal the container's main process, if it is running and really ours."""
        if self.store.state(row)["state"] != "running":
            return
        pid = self.store.stub_pid(row)
        needle = f"\0SPARK_SIM_DIR={self.sim}\0".encode()
        try:
            if pid and needle in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
                os.kill(pid, sig)
        except (OSError, ProcessLookupError):
            pass

    def _each(self, refs: list[str], verb: str, fn: Any) -> int:
        if not refs:
            raise Fail(
                f"\"docker {verb}\" requires at least 1 argument.\nSee 'docker {verb} --help'.", 1
            )
        rc = 0
        for ref in refs:
            try:
                fn(self.store.get(ref), ref)
                self.out(ref)
            except Fail as exc:
                print(exc, file=sys.stderr)
                rc = exc.code
        return rc

    def stop(self, args: list[str]) -> int:
        opts, refs = parse_flags("stop", args, _flags("-t --time --timeout|-s --signal"), {})
        t = float((opts.get("time") or ["10"])[-1])
        sig = _signal((opts.get("signal") or ["TERM"])[-1])
        return self._each(refs, "stop", lambda row, _ref: self.stop_one(row, t, sig))

    def kill(self, args: list[str]) -> int:
        opts, refs = parse_flags("kill", args, _flags("-s --signal"), {})
        sig = _signal((opts.get("signal") or ["KILL"])[-1])

        def one(row: dict[str, Any], ref: str) -> None:
            if not self._live(row):
                cid = self.store.config(row).get("Id", row["ID"])
                raise Fail(
                    f"Error response from daemon: cannot kill container: {ref}: "
                    f"container {cid} is not running"
                )
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                self.stop_one(row, 10, sig)
            else:
                self._signal_main(row, sig)

        return self._each(refs, "kill", one)

    def start(self, args: list[str]) -> int:
        _opts, refs = parse_flags("start", args, {}, _flags("-a --attach|-i --interactive"))

        def one(row: dict[str, Any], _ref: str) -> None:
            if self.store.state(row)["state"] in ("running", "restarting"):
                return
            self.start_one(self.store.adopt(row))

        return self._each(refs, "start", one)

    def restart(self, args: list[str]) -> int:
        opts, refs = parse_flags("restart", args, _flags("-t --time --timeout|-s --signal"), {})
        t = float((opts.get("time") or ["10"])[-1])

        def one(row: dict[str, Any], _ref: str) -> None:
            row = self.store.adopt(row)
            self.stop_one(row, t)
            self.start_one(row)

        return self._each(refs, "restart", one)

    def rm(self, args: list[str]) -> int:
        opts, refs = parse_flags("rm", args, {}, _flags("-f --force|-v --volumes|-l --link"))

        def one(row: dict[str, Any], _ref: str) -> None:
            if self._live(row):
                if "force" not in opts:
                    raise Fail(
                        f'Error response from daemon: cannot remove container "/'
                        f'{row["Names"]}": container is running: stop the container '
                        "before removing or force remove"
                    )
                self.stop_one(row, 0, signal.SIGKILL)
            self.store.remove(row)

        return self._each(refs, "rm", one)

    def wait(self, args: list[str]) -> int:
        _opts, refs = parse_flags("wait", args, {}, {})
        rc = 0
        for ref in refs:
            try:
                row = self.store.get(ref)
            except Fail as exc:
                print(exc, file=sys.stderr)
                rc = 1
                continue
            while self._live(row):
                time.sleep(0.05)
            self.out(str(self.store.state(row)["code"]))
        return rc

    # read-only ---------------------------------------------------------------------------------
    def ps(self, args: list[str]) -> int:
        opts, _ = parse_flags(
            "ps",
            args,
            _flags("--format|-f --filter|-n --last"),
            _flags("-a --all|-q --quiet|--no-trunc|-l --latest|-s --size"),
        )
        rows = [self.store.view(r) for r in self.store.rows()]
        if "all" not in opts and "last" not in opts and "latest" not in opts:
            rows = [r for r in rows if r["State"] == "running"]
        for flt in opts.get("filter", []):
            key, _, val = flt.partition("=")
            if key == "name":
                rows = [
                    r
                    for r in rows
                    if re.search(val, r.get("Names", ""))
                    or re.search(val, "/" + r.get("Names", ""))
                ]
            elif key == "id":
                rows = [r for r in rows if r["ID"].startswith(val[:12])]
            elif key == "status":
                rows = [r for r in rows if r["State"] == val]
            elif key == "ancestor":
                rows = [r for r in rows if r.get("Image", "").split(":")[0] == val.split(":")[0]]
            else:
                raise Fail(f"Error response from daemon: invalid filter '{key}'")
        if "latest" in opts:
            rows = rows[:1]
        if "last" in opts:
            rows = rows[: int(opts["last"][-1])]
        if "no-trunc" in opts:
            for r in rows:
                r["ID"] = self.store.config(r).get("Id", r["ID"])
        for r in rows:
            r.setdefault("RunningFor", "")
            r.setdefault("Size", "0B")
            r.setdefault("Command", '""')
        if "quiet" in opts:
            for r in rows:
                self.out(r["ID"])
            return 0
        fmt = (opts.get("format") or [""])[-1]
        if fmt and fmt != "table":
            table = fmt.startswith("table ")
            body = fmt[6:] if table else fmt
            if table:
                self.out(render(body, HEADERS))
            for r in rows:
                self.out(render(body, r))
            return 0
        cols = [
            (HEADERS[k], k)
            for k in ("ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names")
        ]
        table_rows = [[h for h, _ in cols]] + [[str(r.get(k, "")) for _, k in cols] for r in rows]
        widths = [max(len(tr[i]) for tr in table_rows) for i in range(len(cols))]
        for tr in table_rows:
            self.out("   ".join(c.ljust(w) for c, w in zip(tr, widths, strict=True)).rstrip())
        return 0

    def inspect_obj(self, row: dict[str, Any]) -> dict[str, Any]:
        cfg = self.store.config(row)
        st = self.store.state(row)
        cmd = cfg.get("Cmd", [])
        state = {
            "Status": st["state"],
            "Running": st["state"] == "running",
            "Paused": False,
            "Restarting": st["state"] == "restarting",
            "OOMKilled": False,
            "Dead": False,
            "Pid": st["pid"] if st["state"] == "running" else 0,
            "ExitCode": st["code"],
            "Error": "",
            "StartedAt": iso(st["started"]),
            "FinishedAt": iso(st["finished"]),
        }
        bindings: dict[str, Any] = {}
        for ip, hp, cp, pr in cfg.get("publish", []):
            bindings.setdefault(f"{cp}/{pr}", []).append({"HostIp": ip, "HostPort": str(hp)})
        policy, _, count = cfg.get("restart", "no").partition(":")
        mounts = []
        for v in cfg.get("volumes", []):
            src, _, rest = v.partition(":")
            dst, _, mode = rest.partition(":")
            mounts.append(
                {
                    "Type": "bind",
                    "Source": src,
                    "Destination": dst,
                    "Mode": mode,
                    "RW": "ro" not in mode.split(","),
                    "Propagation": "rprivate",
                }
            )
        gpus = cfg.get("gpus")
        return {
            "Id": cfg.get("Id", row["ID"]),
            "Created": iso(cfg.get("Created")),
            "Path": cmd[0] if cmd else "",
            "Args": cmd[1:],
            "State": state,
            "Image": "sha256:" + hashlib.sha256(str(row.get("Image")).encode()).hexdigest(),
            "LogPath": str(self.store.dir(row) / "log"),
            "Name": "/" + row.get("Names", ""),
            "RestartCount": cfg.get("restart_count", 0),
            "Driver": "overlay2",
            "Platform": "linux",
            "HostConfig": {
                "Binds": cfg.get("volumes", []),
                "NetworkMode": cfg.get("network", "bridge"),
                "PortBindings": bindings,
                "RestartPolicy": {"Name": policy, "MaximumRetryCount": int(count or 0)},
                "AutoRemove": cfg.get("rm", False),
                "IpcMode": cfg.get("ipc") or "private",
                "Privileged": cfg.get("privileged", False),
                "DeviceRequests": None
                if gpus is None
                else [
                    {
                        "Driver": "",
                        "Count": -1 if gpus == "all" else 0,
                        "DeviceIDs": None,
                        "Capabilities": [["gpu"]],
                        "Options": {},
                    }
                ],
            },
            "Mounts": mounts,
            "Config": {
                "Hostname": row["ID"],
                "Env": cfg.get("env", []),
                "Cmd": cmd or None,
                "Image": row.get("Image"),
                "Labels": {},
                "ExposedPorts": {k: {} for k in bindings} or None,
            },
            "NetworkSettings": {"Ports": bindings if st["state"] == "running" else {}},
        }

    def inspect(self, args: list[str]) -> int:
        opts, refs = parse_flags("inspect", args, _flags("-f --format|--type"), _flags("-s --size"))
        if not refs:
            raise Fail('"docker inspect" requires at least 1 argument.', 1)
        found, rc = [], 0
        for ref in refs:
            row = self.store.find(ref)
            if row is None:
                print(f"Error: No such object: {ref}", file=sys.stderr)
                rc = 1
            else:
                found.append(self.inspect_obj(row))
        fmt = (opts.get("format") or [""])[-1]
        if fmt:
            for obj in found:
                self.out(render(fmt, obj))
        else:
            self.out(json.dumps(found, indent=4))
        return rc

    def logs(self, args: list[str]) -> int:
        opts, refs = parse_flags(
            "logs",
            args,
            _flags("-n --tail|--since|--until"),
            _flags("-f --follow|-t --timestamps|--details"),
        )
        if len(refs) != 1:
            raise Fail("\"docker logs\" requires exactly 1 argument.\nSee 'docker logs --help'.", 1)
        row = self.store.get(refs[0])
        tail = (opts.get("tail") or ["all"])[-1]
        self.follow(row, None if tail == "all" else int(tail), "follow" in opts)
        return 0

    def follow(self, row: dict[str, Any], tail: int | None, follow: bool) -> int:
        path = self.store.dir(row) / "log"
        out = sys.stdout.buffer
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        pos = len(data)
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail > 0 else b""
        out.write(data)
        out.flush()
        if not follow:
            return 0
        while True:
            live = self._live(row)
            try:
                with path.open("rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except FileNotFoundError:
                return 0
            if chunk:
                pos += len(chunk)
                out.write(chunk)
                out.flush()
            elif not live:
                return 0
            time.sleep(0.05)

    def exec(self, args: list[str]) -> int:
        opts, pos = parse_flags(
            "exec",
            args,
            _flags("-e --env|-w --workdir|-u --user|--env-file"),
            _flags("-d --detach|-i --interactive|-t --tty|--privileged"),
            interspersed=False,
        )
        if len(pos) < 2:
            raise Fail(
                "\"docker exec\" requires at least 2 arguments.\nSee 'docker exec --help'.", 1
            )
        row = self.store.get(pos[0])
        if self.store.state(row)["state"] != "running":
            cid = self.store.config(row).get("Id", row["ID"])
            raise Fail(f"Error response from daemon: container {cid} is not running")
        env = dict(os.environ)
        for e in opts.get("env", []):
            k, eq, v = e.partition("=")
            if eq:
                env[k] = v
        cwd = (opts.get("workdir") or [None])[-1]
        try:
            if "detach" in opts:
                subprocess.Popen(
                    pos[1:],
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                return 0
            return subprocess.run(pos[1:], env=env, cwd=cwd, check=False).returncode
        except FileNotFoundError:
            raise Fail(
                "OCI runtime exec failed: exec failed: unable to start container process: exec: "
                f'"{pos[1]}": executable file not found in $PATH: unknown',
                127,
            ) from None

    def pull(self, args: list[str]) -> int:
        _opts, pos = parse_flags(
            "pull", args, _flags("--platform"), _flags("-q --quiet|-a --all-tags")
        )
        if len(pos) != 1:
            raise Fail('"docker pull" requires exactly 1 argument.', 1)
        image = pos[0]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
        digest = hashlib.sha256(image.encode()).hexdigest()
        self.out(
            f"{tag}: Pulling from {image.rsplit(':', 1)[0]}\nDigest: sha256:{digest}\n"
            f"Status: Image is up to date for {image}\n{image}"
        )
        return 0

    def login(self, args: list[str]) -> int:
        """``docker login [SERVER] -u USER --password-stdin``: the password (read from stdin,
        never stored) must hash to one of ``registry_key_sha256``; a success is recorded in
        ``logins.json`` as {server: user}."""
        opts, pos = parse_flags(
            "login", args, _flags("-u --username|-p --password"), _flags("--password-stdin")
        )
        server = pos[0] if pos else "https://index.docker.io/v1/"
        if "password" in opts:
            print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
                  file=sys.stderr)  # fmt: skip
            password = opts["password"][-1]
        elif "password-stdin" in opts:
            password = sys.stdin.readline().rstrip("\n")
        else:
            raise Fail("Error: Cannot perform an interactive login from a non TTY device", 1)
        if not opts.get("username"):
            raise Fail("Error: Cannot perform an interactive login from a non TTY device", 1)
        digest = hashlib.sha256(password.encode()).hexdigest()
        if digest not in (self.k.get("registry_key_sha256") or []):
            raise Fail(
                f'Error response from daemon: Get "https://{server}/v2/": unauthorized: '
                "authentication required",
                1,
            )
        path = self.sim / "logins.json"
        logins = json.loads(path.read_text()) if path.exists() else {}
        logins[server] = opts["username"][-1]
        write_atomic(path, json.dumps(logins))
        self.out("Login Succeeded")
        return 0

    def down(self) -> int:
        for row in self.store.rows():
            if self._live(row):
                self.stop_one(row, 0, signal.SIGKILL)
            self.store.remove(row)
        return 0


def _signal(name: str) -> int:
    name = name.upper()
    if name.isdigit():
        return int(name)
    return int(getattr(signal, name if name.startswith("SIG") else "SIG" + name))


def docker_main(argv: list[str]) -> int:
    sim = sim_dir()
    d = Docker(sim)
    if not argv:
        print("Usage:  docker [OPTIONS] COMMAND", file=sys.stderr)
        return 0
    verb, args = argv[0], argv[1:]
    if verb in ("--version", "-v"):
        d.out(f"Docker version {DOCKER_VERSION}, build ce12230")
        return 0
    if verb == "container" and args:
        verb, args = {"ls": "ps", "list": "ps"}.get(args[0], args[0]), args[1:]
    verbs = {
        "run": d.run,
        "start": d.start,
        "stop": d.stop,
        "restart": d.restart,
        "kill": d.kill,
        "rm": d.rm,
        "ps": d.ps,
        "logs": d.logs,
        "inspect": d.inspect,
        "exec": d.exec,
        "wait": d.wait,
        "pull": d.pull,
        "login": d.login,
    }
    fn = verbs.get(verb)
    if fn is None:
        print(f"docker: '{verb}' is not a docker command.\nSee 'docker --help'", file=sys.stderr)
        return 1
    try:
        return int(fn(args))
    except Fail as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return 0


# --- the per-container supervisor --------------------------------------------------------------


def _fail_mode(sim: Path, store: Store, cfg: dict[str, Any], k: dict[str, Any]) -> str:
    mode = k["fail_mode"] if k["fail_mode"] in FAIL_MODES else "none"
    v = cfg.get("vllm") or {}
    if mode == "none" or not v:
        return "none"
    if k["fail_models"] and not {v.get("model"), *v.get("served", [])} & set(k["fail_models"]):
        return "none"
    if k["fail_starts"] is not None:
        counter = sim / "failed_starts"
        with store.lock():
            try:
                used = int(counter.read_text())
            except (OSError, ValueError):
                used = 0
            if used >= int(k["fail_starts"]):
                return "none"
            write_atomic(counter, f"{used + 1}\n")
    return mode


def _main_argv(cfg: dict[str, Any], k: dict[str, Any], mode: str) -> list[str]:
    py = [sys.executable, str(STUB)]
    v = cfg.get("vllm")
    listen = cfg.get("listen")
    if v:
        argv = [
            *py,
            "--model",
            v["model"],
            "--host",
            k["bind_host"],
            "--port",
            str(listen or 0),
            "--container-port",
            str(v["port"]),
            "--delay",
            str(k["start_delay_s"]),
            "--fail-mode",
            mode,
            "--wedge-after",
            str(k["wedge_after_s"]),
            "--gpu-memory-utilization",
            str(v["gmu"]),
            "--mem-total-bytes",
            str(int(k["mem_total_bytes"])),
            "--reply",
            str(k["reply"]),
            "--token-delay",
            str(k["token_delay_s"]),
            "--stop-delay",
            str(k["stop_delay_s"]),
        ]
        if not listen:
            argv.append("--no-listen")
        if v["served"]:
            argv += ["--served-model-name", *v["served"]]
        if v["max_model_len"]:
            argv += ["--max-model-len", str(v["max_model_len"])]
        if v["api_key"]:
            argv += ["--api-key", v["api_key"]]
        if k["model_bytes"]:
            argv += ["--model-bytes", str(int(k["model_bytes"]))]
        if not v["access_log"]:
            argv.append("--disable-uvicorn-access-log")
        return argv
    cmd = cfg.get("Cmd") or []
    if cmd and Path(cmd[0]).name in SAFE_COMMANDS:
        return [Path(cmd[0]).name, *cmd[1:]]
    argv = [
        *py,
        "--generic",
        " ".join(cmd) or str(cfg.get("Image")),
        "--host",
        k["bind_host"],
        "--port",
        str(listen or 0),
    ]
    return argv if listen else [*argv, "--no-listen"]


def shim_main(cdir: str) -> int:
    d = Path(cdir)
    sim = d.parent.parent
    store = Store(sim)
    row = {"ID": d.name}
    terminated = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, _frame: Any) -> None:
        nonlocal terminated
        terminated = True
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    cfg = store.config(row)
    restarts = int(cfg.get("restart_count", 0))
    policy, _, limit = str(cfg.get("restart", "no")).partition(":")
    env = {**os.environ, "SPARK_SIM_DIR": str(sim), "PATH": f"{SHIMS}:{os.environ.get('PATH', '')}"}
    try:
        with (d / "log").open("ab") as log:
            while True:
                k = knobs(sim)
                argv = _main_argv(cfg, k, _fail_mode(sim, store, cfg, k))
                started = now()
                try:
                    child = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=str(sim),
                    )
                except OSError as exc:
                    log.write(f"exec failed: {exc}\n".encode())
                    store.set_state(row, f"exited 127 {now():.2f} {started:.2f}")
                    return 0
                write_atomic(d / "pid", f"{child.pid}\n")
                store.set_state(row, f"running {started:.2f} {os.getpid()}")
                if terminated:
                    child.terminate()
                rc = child.wait()
                code = 128 - rc if rc < 0 else rc
                finished = now()
                stopping = terminated or (d / "stopping").exists()
                again = not stopping and (
                    policy in ("always", "unless-stopped")
                    or (
                        policy == "on-failure"
                        and code != 0
                        and (not limit or restarts < int(limit))
                    )
                )
                if not again:
                    store.set_state(row, f"exited {code} {finished:.2f} {started:.2f}")
                    break
                restarts += 1
                cfg["restart_count"] = restarts
                store.save_config(row, cfg)
                store.set_state(row, f"restarting {code} {finished:.2f} {os.getpid()}")
                backoff = min(0.1 * 2 ** min(restarts - 1, 7), 10.0)
                end = now() + backoff
                while now() < end and not terminated and not (d / "stopping").exists():
                    time.sleep(0.02)
                if terminated or (d / "stopping").exists():
                    store.set_state(row, f"exited {code} {finished:.2f} {started:.2f}")
                    break
    except OSError:
        return 0  # removed under our feet (docker rm -f)
    if cfg.get("rm") and cfg.get("detach", True):
        found = store.find(d.name)
        if found:
            store.remove(found)
    return 0


# --- hf ----------------------------------------------------------------------------------------


def _si(n: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 999.5:
            return f"{n:.3g}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.3g}P"


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 60:02d}:{s % 60:02d}"


def tqdm_line(desc: str, n: int, total: int, elapsed: float, unit: str = "B") -> str:
    frac = n / total if total else 1.0
    full = int(frac * 10)
    bar = "█" * full + (" ▏▎▍▌▋▊▉"[int((frac * 10 - full) * 8)] if full < 10 else "")
    rate = n / elapsed if elapsed > 0 else 0
    eta = (total - n) / rate if rate else 0
    if unit == "B":
        counts, speed = f"{_si(n)}/{_si(total)}", f"{_si(rate)}B/s" if rate else "?B/s"
    else:
        counts, speed = f"{n}/{total}", f"{rate:.2f}it/s" if rate else "?it/s"
    left = _clock(eta) if rate else "?"
    return f"{desc}: {frac * 100:3.0f}%|{bar:<10}| {counts} [{_clock(elapsed)}<{left}, {speed}]"


def _config_json(repo: str, k: dict[str, Any]) -> dict[str, Any]:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-05,
        "torch_dtype": "bfloat16",
        "bos_token_id": 128000,
        "eos_token_id": 128009,
        "tie_word_embeddings": False,
        "transformers_version": "4.56.0",
        "_name_or_path": repo,
    }
    cfg.update(k.get("hf_config") or {})
    return cfg


def hf_main(argv: list[str]) -> int:
    sim = sim_dir()
    k = knobs(sim)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: hf <command> [<args>]\n\ncommands: download, auth, version", file=sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("version", "--version"):
        print("huggingface_hub version: 0.35.3")
        return 0
    if argv[:2] == ["auth", "whoami"]:
        if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
            print("user: spark-sim")
            return 0
        print("Not logged in", file=sys.stderr)
        return 1
    if argv[0] != "download":
        print(f"hf: error: invalid choice: '{argv[0]}'", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="hf download")
    p.add_argument("repo_id")
    p.add_argument("filenames", nargs="*")
    p.add_argument("--repo-type", default="model")
    p.add_argument("--revision", default="main")
    p.add_argument("--include", nargs="*", default=[])
    p.add_argument("--exclude", nargs="*", default=[])
    p.add_argument("--cache-dir")
    p.add_argument("--local-dir")
    p.add_argument("--force-download", action="store_true")
    p.add_argument("--token")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--max-workers", type=int, default=8)
    a = p.parse_args(argv[1:])
    repo = a.repo_id
    url = f"https://huggingface.co/api/models/{repo}/revision/{a.revision}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?", repo) or ".." in repo:
        print(
            f"huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name'"
            f" or 'namespace/repo_name': '{repo}'. Use `repo_type` argument if needed.",
            file=sys.stderr,
        )
        return 1
    if repo in k["hf_missing_repos"]:
        print(
            f"Repository Not Found for url: {url}.\nPlease make sure you specified the correct "
            "`repo_id` and `repo_type`.\nIf you are trying to access a private or gated repo, "
            "make sure you are authenticated.",
            file=sys.stderr,
        )
        return 1
    token = a.token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if repo in k["hf_gated_repos"] and not token:
        print(
            f"Cannot access gated repo for url {url}.\nAccess to model {repo} is restricted. "
            "You must have access to it and be authenticated to access it. Please log in.",
            file=sys.stderr,
        )
        return 1
    commit = hashlib.sha1(f"{repo}@{a.revision}".encode()).hexdigest()
    config = json.dumps(_config_json(repo, k), indent=2).encode() + b"\n"
    files: dict[str, bytes | int] = {
        "config.json": config,
        "generation_config.json": b'{\n  "bos_token_id": 128000,\n  "eos_token_id": 128009\n}\n',
        "tokenizer_config.json": b'{\n  "model_max_length": 131072\n}\n',
        "model.safetensors": int(k["download_bytes"]),
    }
    wanted = [
        f
        for f in files
        if (not a.filenames or f in a.filenames)
        and (not a.include or any(fnmatch.fnmatch(f, pat) for pat in a.include))
        and not any(fnmatch.fnmatch(f, pat) for pat in a.exclude)
    ]
    for f in a.filenames:
        if f not in files:
            print(
                f"huggingface_hub.errors.EntryNotFoundError: 404 Client Error. Entry Not Found "
                f"for url: https://huggingface.co/{repo}/resolve/{commit}/{f}.",
                file=sys.stderr,
            )
            return 1
    if a.local_dir:
        root = Path(a.local_dir)
        snapshot = root
        stage = root / ".cache" / "huggingface" / "download"
    else:
        cache = Path(a.cache_dir) if a.cache_dir else sim / "hf-cache" / "hub"
        root = cache / f"models--{repo.replace('/', '--')}"
        snapshot = root / "snapshots" / commit
        stage = root / "blobs"
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / a.revision).write_text(commit)
    snapshot.mkdir(parents=True, exist_ok=True)
    stage.mkdir(parents=True, exist_ok=True)
    err = sys.stderr
    t0 = time.monotonic()
    show = not a.quiet
    if show:
        err.write("\r" + tqdm_line(f"Fetching {len(wanted)} files", 0, len(wanted), 0, "it"))
        err.flush()
    try:
        for done, fname in enumerate(wanted, 1):
            content = files[fname]
            size = content if isinstance(content, int) else len(content)
            etag = hashlib.sha256(f"{repo}/{commit}/{fname}/{size}".encode()).hexdigest()
            target = snapshot / fname
            final = target if a.local_dir else stage / etag
            if a.force_download or not (final.exists() and final.stat().st_size == size):
                partial = stage / (f"{fname}.{etag}" if a.local_dir else etag + ".incomplete")
                if a.force_download:
                    partial.unlink(missing_ok=True)
                _fetch(partial, content, size, k, fname, show and isinstance(content, int))
                os.replace(partial, final)
            if not a.local_dir:
                if target.is_symlink() or target.exists():
                    target.unlink()
                target.symlink_to(os.path.relpath(final, target.parent))
            if show:
                line = tqdm_line(
                    f"Fetching {len(wanted)} files", done, len(wanted), time.monotonic() - t0, "it"
                )
                err.write("\r" + line)
                err.flush()
    except KeyboardInterrupt:
        err.write("\nAborted.\n")
        return 130
    if show:
        err.write("\n")
    print(snapshot)
    return 0


def _fetch(
    path: Path, content: bytes | int, size: int, k: dict[str, Any], name: str, show: bool
) -> None:
    """Write ``content`` (bytes, or ``size`` bytes of a safetensors file) at the knobs' speed,
    resuming a partial file as huggingface_hub does."""
    if isinstance(content, bytes):
        path.write_bytes(content)
        return
    have = path.stat().st_size if path.exists() else 0
    if have > size:
        path.unlink()
        have = 0
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "weight": {
                "dtype": "BF16",
                "shape": [max((size - 64) // 2, 0)],
                "data_offsets": [0, 0],
            },
        }
    ).encode()
    header = header[: max(size - 8, 0)]
    seconds = float(k["download_seconds"])
    chunk = max(64 * 1024, size // max(int(seconds * 20), 1))
    zeros = b"\0" * chunk
    err = sys.stderr
    t0 = time.monotonic()
    last = 0.0
    with path.open("ab") as f:
        if have == 0 and size >= 8 + len(header):
            f.write(len(header).to_bytes(8, "little") + header)
            have = 8 + len(header)
        while have < size:
            n = min(chunk, size - have)
            f.write(zeros[:n])
            f.flush()
            have += n
            if seconds > 0:
                time.sleep(seconds * n / size)
            t = time.monotonic()
            if show and (t - last >= 0.1 or have >= size):
                last = t
                err.write("\r" + tqdm_line(name, have, size, t - t0))
                err.flush()
    if show:
        err.write("\n")


# --- by hand -----------------------------------------------------------------------------------


def env_main(argv: list[str]) -> int:
    sim = Path(argv[0]).resolve() if argv else sim_dir()
    sim.mkdir(parents=True, exist_ok=True)
    print(f"export SPARK_SIM_DIR={shlex.quote(str(sim))}")
    print(f"export SPARK_SIM_PYTHON={shlex.quote(sys.executable)}")
    print(f'export PATH={shlex.quote(str(SHIMS))}:"$PATH"')
    return 0


def refine_clock(sim: Path) -> None:
    """Store boot time in centiseconds for the shims' clock (theirs is whole seconds)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        up = float(Path("/proc/uptime").read_text().split()[0])
        if sim.is_dir():
            write_atomic(sim / ".btime", f"{round((time.time() - up) * 100)}\n")


def main(argv: list[str]) -> int:
    if argv[:1] in (["docker"], ["hf"]):
        refine_clock(sim_dir())
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    tool, rest = argv[0], argv[1:]
    if tool == "docker":
        return docker_main(rest)
    if tool == "hf":
        return hf_main(rest)
    if tool == "_shim":
        return shim_main(rest[0])
    if tool == "env":
        return env_main(rest)
    if tool == "down":
        if rest:
            os.environ["SPARK_SIM_DIR"] = str(Path(rest[0]).resolve())
        return Docker(sim_dir()).down()
    print(f"dockersim: unknown tool {tool!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
