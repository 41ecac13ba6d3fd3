"""Auxiliary containers on a host: ``service`` (start / stop / restart / status of a declared
service) and ``nim_install`` (an NVIDIA NIM container with the NGC key).

``service`` gets ``{"name", "op", "service": {...}}``; the definition is validated again here
(the bus is a boundary too). Every docker call is an argv quoted at the sink and runs on the
kept shell. The last status is kept in ``spark_state`` under ``service.<host>.<name>``.

``nim_install`` takes the NGC key from the executor's settings (``ngc_key``), never from the
command. The key travels on a side channel's stdin, read by the remote shell's ``read``
builtin: ``printf`` (a builtin) pipes it to ``docker login nvcr.io --password-stdin``, and a
prefix assignment puts it in the environment of ``docker run ... -e NGC_API_KEY`` only, which
copies it into the container. It is never in an argv, a file, an event, a log line, an error or
the job record; an output line that contains it is masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from typing import Any

import httpx

from app import contracts as c
from app import services, shellsafe
from app.bus import Bus
from app.config import Settings
from app.errors import BadRequest, HostError, SparkError
from workers.actions import JobContext

POLL_S = 0.5
HEALTH_TIMEOUT_S = 3.0
TAIL = 20
MASK = "[ngc_key]"
_KEY_OK = re.compile(r"[\x21-\x7e]{1,4096}")


class ServiceFailed(SparkError):
    code = "SERVICE_FAILED"
    status = 502


def _address(ctx: JobContext) -> str:
    address = "127.0.0.1" if ctx.host.transport == "local" else ctx.host.address
    return f"[{address}]" if ":" in address else address


def health_url(ctx: JobContext, svc: services.Service) -> str:
    return f"http://{_address(ctx)}:{svc.port}{svc.health}"


async def check_health(url: str) -> dict[str, Any]:
    """One GET: {url, ok, status_code, ms, error}."""
    t0 = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S) as client:
            r = await client.get(url)
    except httpx.HTTPError as exc:
        ms = round((time.monotonic() - t0) * 1000, 1)
        return {"url": url, "ok": False, "status_code": None, "ms": ms,
                "error": type(exc).__name__}  # fmt: skip
    ms = round((time.monotonic() - t0) * 1000, 1)
    return {"url": url, "ok": 200 <= r.status_code < 300, "status_code": r.status_code,
            "ms": ms, "error": None}  # fmt: skip


async def inspect(ctx: JobContext, container: str) -> dict[str, Any] | None:
    """The container's ``State`` (docker inspect), or None when there is no such container."""
    cmd = shellsafe.command(["docker", "inspect", "--type", "container", "-f", "{{json .State}}",
                             shellsafe.check_container(container)])  # fmt: skip
    res = await ctx.runner.run(cmd, timeout=60)
    if res.exit_status != 0:
        if "No such" in res.stderr or "no such" in res.stderr:
            return None
        raise HostError(f"docker inspect failed (exit {res.exit_status}): {_last(res.stderr)}")
    try:
        state = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise HostError("docker inspect: unreadable state") from exc
    return state if isinstance(state, dict) else None


def _last(text: str, n: int = 1) -> str:
    return " | ".join(text.strip().splitlines()[-n:])[:500] or "(no output)"


async def _docker(ctx: JobContext, argv: list[str], what: str, budget: float = 120) -> str:
    res = await ctx.runner.run(shellsafe.quote_argv(argv), timeout=budget)
    if res.exit_status != 0:
        raise ServiceFailed(f"{what} failed (exit {res.exit_status}): "
                            f"{_last(res.stderr or res.stdout, 3)}")  # fmt: skip
    return res.stdout


class ServiceAction:
    """``service {name, op: start|stop|restart|status, service: {...}}``."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # every op may run again: start re-creates, stop of nothing is harmless

    async def run(self, ctx: JobContext) -> Any:
        args = ctx.args_only({"name", "op", "service"})
        name = services.check_name(args.get("name"), "command")
        svc = services.validate_service(name, args.get("service"), source="command")
        op = args.get("op")
        if op not in services.OPS:
            raise BadRequest(f"op: must be one of {', '.join(services.OPS)}", code="BAD_ARGS")
        if svc.host != ctx.host.alias:
            raise BadRequest(f"service {name} is declared on {svc.host}, not {ctx.host.alias}",
                             code="WRONG_HOST")  # fmt: skip
        result: dict[str, Any] = {"name": name, "op": op, "host": ctx.host.alias,
                                  "container": svc.container, "port": svc.port}  # fmt: skip
        if op == "start":
            result.update(await self._start(ctx, name, svc))
        elif op == "stop":
            result.update(await self._stop(ctx, name, svc))
        elif op == "restart":
            result.update(await self._restart(ctx, name, svc))
        else:
            result.update(await self._status(ctx, svc))
        await self._record(ctx, name, result)
        return result

    async def _start(self, ctx: JobContext, name: str, svc: services.Service) -> dict[str, Any]:
        await ctx.progress(f"starting {name} ({svc.image})")
        await ctx.runner.run(
            f"docker rm -f {shellsafe.quote(svc.container)} >/dev/null 2>&1; true", timeout=120
        )
        out = await _docker(ctx, services.docker_run_argv(name, svc), f"docker run of {name}",
                            budget=max(300.0, ctx.timeout_s - 60))  # fmt: skip
        container_id = (out.strip().splitlines() or [""])[-1][:64]
        return {"container_id": container_id, **await self._wait_healthy(ctx, name, svc)}

    async def _stop(self, ctx: JobContext, name: str, svc: services.Service) -> dict[str, Any]:
        if await inspect(ctx, svc.container) is None:
            await ctx.progress(f"{name}: no container {svc.container}")
            return {"state": "absent", "stopped": False}
        await ctx.progress(f"stopping {name}")
        await _docker(ctx, ["docker", "stop", "-t", "10", svc.container], f"docker stop of {name}")
        await _docker(ctx, ["docker", "rm", svc.container], f"docker rm of {name}")
        return {"state": "absent", "stopped": True}

    async def _restart(self, ctx: JobContext, name: str, svc: services.Service) -> dict[str, Any]:
        if await inspect(ctx, svc.container) is None:
            await ctx.progress(f"{name}: no container {svc.container}; starting it")
            return {"recreated": True, **await self._start(ctx, name, svc)}
        await ctx.progress(f"restarting {name}")
        await _docker(ctx, ["docker", "restart", "-t", "10", svc.container],
                      f"docker restart of {name}")  # fmt: skip
        return {"recreated": False, **await self._wait_healthy(ctx, name, svc)}

    async def _status(self, ctx: JobContext, svc: services.Service) -> dict[str, Any]:
        state = await inspect(ctx, svc.container)
        health = await check_health(health_url(ctx, svc))
        return {**_state_view(state), "healthy": health["ok"], "health": health}

    async def _wait_healthy(
        self, ctx: JobContext, name: str, svc: services.Service
    ) -> dict[str, Any]:
        """Until the health check answers 2xx (or start_timeout_s; 0 = no wait); the container
        exiting meanwhile fails at once with its last log lines."""
        url = health_url(ctx, svc)
        t0 = time.monotonic()
        if svc.start_timeout_s == 0:
            return {**_state_view(await inspect(ctx, svc.container)), "healthy": None}
        await ctx.progress(f"waiting for {url}")
        health: dict[str, Any] = {}
        while time.monotonic() - t0 < svc.start_timeout_s:
            health = await check_health(url)
            if health["ok"]:
                await ctx.progress(f"{name} is healthy", data=health)
                view = _state_view(await inspect(ctx, svc.container))
                return {**view, "healthy": True, "health": health,
                        "ready_s": round(time.monotonic() - t0, 3)}  # fmt: skip
            state = await inspect(ctx, svc.container)
            if state is None or (not state.get("Running") and not state.get("Restarting")):
                raise ServiceFailed(f"{name} exited while starting: {await _logs(ctx, svc)}")
            await asyncio.sleep(POLL_S)
        detail = health.get("status_code") or health.get("error") or "no answer"
        raise ServiceFailed(
            f"{name} not healthy after {svc.start_timeout_s} s ({url}: {detail}); the container "
            "was left running", code="SERVICE_NOT_READY",
        )  # fmt: skip

    async def _record(self, ctx: JobContext, name: str, result: dict[str, Any]) -> None:
        record = {**result, "checked_at": c.now(), "job_id": ctx.job.id}
        with contextlib.suppress(Exception):  # the status is a convenience, not the job's result
            await self.bus.state.put(services.state_key(ctx.host.alias, name), c.encode(record))


def _state_view(state: dict[str, Any] | None) -> dict[str, Any]:
    if state is None:
        return {"state": "absent", "running": False}
    return {"state": str(state.get("Status") or "unknown"), "running": bool(state.get("Running")),
            "exit_code": state.get("ExitCode"), "started_at": state.get("StartedAt")}  # fmt: skip


async def _logs(ctx: JobContext, svc: services.Service) -> str:
    res = await ctx.runner.run(
        f"docker logs --tail 20 {shellsafe.quote(svc.container)} 2>&1", timeout=60
    )
    return _last(res.stdout, 3)


# --- NIM -------------------------------------------------------------------------------------


def ngc_key(settings: Settings) -> str:
    key = settings.ngc_key
    if not key:
        raise SparkError("no NGC key configured (settings ngc_key / NGC_API_KEY)",
                         code="NGC_KEY_MISSING", status=409)  # fmt: skip
    if not _KEY_OK.fullmatch(key):
        raise SparkError("settings ngc_key: must be printable ASCII without spaces",
                         code="NGC_KEY_INVALID", status=500)  # fmt: skip
    return key


def nim_script(nim: services.Nim, nonce: str) -> str:
    """The remote script (bash). Line 1 of its stdin is the NGC key. Prints
    ``__SPARK_<nonce> <step> <exit>`` after the login and the run."""
    mark = f"__SPARK_{nonce}"
    login = ""
    if nim.login:
        login = (
            f"printf '%s\\n' \"$__k\" | docker login {services.NIM_REGISTRY} "
            "--username '$oauthtoken' --password-stdin 2>&1\n"
            f"rc=$?; printf '\\n{mark} login %d\\n' \"$rc\"\n"
            'if [ "$rc" -ne 0 ]; then exit 0; fi\n'
        )
    return (
        "IFS= read -r __k || true\n"
        f"if [ -z \"$__k\" ]; then printf '\\n{mark} nokey 1\\n'; exit 0; fi\n"
        f"{login}"
        f"docker rm -f {shellsafe.quote(nim.container)} >/dev/null 2>&1\n"
        f'{services.NIM_KEY_ENV}="$__k" {shellsafe.quote_argv(services.nim_run_argv(nim))} '
        "</dev/null 2>&1\n"
        f"rc=$?; unset __k; printf '\\n{mark} run %d\\n' \"$rc\"\n"
    )


class NimInstall:
    """``nim_install {image, container, port, volume?, env?, login?}``: log in to nvcr.io with
    the executor's NGC key and start the NIM container with the key in its environment."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # run again: the container is re-created

    async def run(self, ctx: JobContext) -> Any:
        nim = services.validate_nim(ctx.job.args, source="command")
        key = ngc_key(self.settings)
        nonce = secrets.token_hex(8)
        command = f"bash --noprofile --norc -c {shellsafe.quote(nim_script(nim, nonce))}"
        mark = f"__SPARK_{nonce} "
        steps: dict[str, int] = {}
        tail: list[str] = []
        await ctx.progress(f"installing {nim.image} as {nim.container}")
        lines = ctx.runner.transport.stream_input(command, key.encode() + b"\n")
        async with contextlib.aclosing(lines):
            async for raw in lines:
                line = raw.replace(key, MASK)
                if line.startswith(mark):
                    step, _, rc = line[len(mark) :].partition(" ")
                    with contextlib.suppress(ValueError):
                        steps[step] = int(rc)
                    if step == "login" and steps.get(step) == 0:
                        await ctx.progress(f"logged in to {services.NIM_REGISTRY}")
                    continue
                if line.strip():
                    tail = [*tail[-(TAIL - 1) :], line]
                    await ctx.log(line[:4096])
        if "nokey" in steps:
            raise HostError("the NGC key did not reach the host", code="NGC_KEY_MISSING")
        if steps.get("login", 0) != 0:
            raise SparkError(
                f"docker login {services.NIM_REGISTRY} failed (exit {steps['login']}): "
                f"{' | '.join(tail[-3:])[:500] or '(no output)'}",
                code="NGC_LOGIN_FAILED", status=502,
            )  # fmt: skip
        if "run" not in steps:
            raise HostError("nim install ended without an exit status (killed?)",
                            code="NIM_INSTALL_FAILED")  # fmt: skip
        if steps["run"] != 0:
            raise ServiceFailed(
                f"docker run of {nim.image} failed (exit {steps['run']}): "
                f"{' | '.join(tail[-3:])[:500]}", code="NIM_INSTALL_FAILED",
            )  # fmt: skip
        state = await inspect(ctx, nim.container)
        view = _state_view(state)
        if not view["running"]:
            raise ServiceFailed(f"{nim.container} is not running after docker run "
                                f"({view['state']})", code="NIM_INSTALL_FAILED")  # fmt: skip
        return {
            "host": ctx.host.alias, "image": nim.image, "container": nim.container,
            "port": nim.port, "volume": nim.volume, "logged_in": nim.login,
            "url": f"http://{_address(ctx)}:{nim.port}", **view,
        }  # fmt: skip
