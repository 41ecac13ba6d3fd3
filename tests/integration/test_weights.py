"""Model weights end to end: NATS → executor → real sshd → the simulated ``hf`` CLI.

``download`` streams progress and lands in the host's HF cache; a gated repo needs the token,
which reaches the host on the download channel's stdin only; cancel kills the remote download;
``disk`` lists the cache; ``delete`` removes a model (never a local_path one); values that
could inject are refused before anything runs on the host.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from app import contracts as c
from app import jobs
from app.bus import Bus
from tests import stack
from workers.weights import Progress, parse_disk, repo_of

MIB = 1024 * 1024


def _settings(tmp_path: Path, nats_server: Any, host: Any, unique: str, **kw: Any) -> Any:
    config = stack.ssh_host_config(f"gpu-{unique}", host)
    return stack.make_settings(
        tmp_path / "data", nats_server.url, [config], known_hosts=str(host.known_hosts_path), **kw
    )


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, hf_host: Any, unique: str) -> Any:
    return _settings(tmp_path, nats_server, hf_host, unique)


async def _events(bus: Bus, job_id: str, timeout: float = 60) -> list[c.Event]:
    """Every event of a job, from the first, until its final one."""
    sub = await bus.js.subscribe(c.evt_job_filter(job_id), ordered_consumer=True)
    out: list[c.Event] = []
    try:
        while not out or out[-1].kind not in c.FINAL_KINDS:
            out.append(c.decode_event((await sub.next_msg(timeout=timeout)).data))
    finally:
        await sub.unsubscribe()
    return out


async def _run(
    bus: Bus, settings: Any, action: str, args: dict[str, Any] | None = None
) -> tuple[list[c.Event], c.JobRecord]:
    job, _ = await jobs.submit(bus, settings, settings.hosts[0].alias, action, args)
    events = await _events(bus, job.id)
    return events, await jobs.get(bus, job.id)


def _hf_pids(host: Any) -> list[int]:
    """Live simulated ``hf`` processes of this host (dockersim.py hf …)."""
    found = []
    for pid in host.sim_processes():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"dockersim.py") for a in argv) and b"hf" in argv:
            found.append(pid)
    return found


def _model_dir(host: Any, repo: str) -> Path:
    return Path(host.hf_cache) / f"models--{repo.replace('/', '--')}"


# --- download, disk, delete --------------------------------------------------------------------


async def test_download_progress_then_disk_then_delete(settings: Any, hf_host: Any) -> None:
    hf_host.sim_config(download_bytes=8 * MIB, download_seconds=2.0)
    repo = "org/model-a"
    async with stack.executor(settings) as bus:
        events, job = await _run(bus, settings, "download", {"repo": repo})
        assert events[-1].kind == "done", events[-1]
        bars = [e.data for e in events if e.kind == "progress" and isinstance(e.data, dict)]
        assert len(bars) >= 3, bars
        sizes = [b["bytes"] for b in bars]
        assert sizes == sorted(sizes) and sizes[0] < 8 * MIB
        assert bars[-1]["bytes"] == bars[-1]["total"] > 8_000_000  # tqdm counts in SI units
        middle = [b for b in bars if 0 < b["bytes"] < b["total"]]
        assert middle and all(b["eta_s"] is not None and b["rate_bps"] > 0 for b in middle)
        times = [e.ts for e in events if e.kind == "progress" and e.data]
        assert all(b - a >= 0.4 for a, b in itertools.pairwise(times[:-1]))  # ~2/s, then final

        result = job.result
        assert job.state == "succeeded" and result["repo"] == repo
        assert result["cache"] == str(hf_host.hf_cache)
        weights = list(_model_dir(hf_host, repo).glob("snapshots/*/model.safetensors"))
        assert len(weights) == 1 and weights[0].stat().st_size == 8 * MIB
        assert result["path"] == str(weights[0].parent)
        assert result["bytes"] >= 8 * MIB
        call = hf_host.commands("hf")[-1]["argv"]
        assert call[:3] == ["hf", "download", repo]
        assert call[3:] == ["--cache-dir", str(hf_host.hf_cache)]

        events, job = await _run(bus, settings, "disk")
        assert events[-1].kind == "done", events[-1]
        disk = job.result
        assert disk["cache"] == str(hf_host.hf_cache)
        assert disk["total_bytes"] >= disk["free_bytes"] > 0
        [model] = disk["models"]
        assert model["repo"] == repo and model["bytes"] >= 8 * MIB and model["partial"] is False

        events, job = await _run(bus, settings, "delete", {"repo": repo})
        assert events[-1].kind == "done", events[-1]
        assert job.result["deleted"] is True and job.result["freed_bytes"] >= 8 * MIB
        assert not _model_dir(hf_host, repo).exists()
        events, job = await _run(bus, settings, "delete", {"repo": repo})
        assert (job.state, job.result["deleted"]) == ("succeeded", False)  # absent: still fine
        _, job = await _run(bus, settings, "disk")
        assert job.result["models"] == []


async def test_delete_refuses_local_path_and_the_served_model(settings: Any, hf_host: Any) -> None:
    repo = "org/model-b"
    alias = settings.hosts[0].alias
    async with stack.executor(settings) as bus:
        _, job = await _run(bus, settings, "download", {"repo": repo})
        assert job.state == "succeeded", job.error

        events, job = await _run(bus, settings, "delete", {"local_path": "/data/models/x"})
        assert (events[-1].kind, events[-1].code) == ("failed", "LOCAL_PATH_MODEL")
        assert job.code == "LOCAL_PATH_MODEL"
        events, _ = await _run(bus, settings, "delete", {"repo": repo, "local_path": "/m/x"})
        assert events[-1].code == "LOCAL_PATH_MODEL"

        await bus.put_model_state(
            c.ModelState(host=alias, model="b", recipe={"repo": repo}, container="vllm_node")
        )
        events, _ = await _run(bus, settings, "delete", {"repo": repo})
        assert (events[-1].kind, events[-1].code) == ("failed", "MODEL_IN_USE")
        assert _model_dir(hf_host, repo).is_dir()
        _, job = await _run(bus, settings, "delete", {"repo": repo, "force": True})
        assert job.result["deleted"] is True and not _model_dir(hf_host, repo).exists()


# --- errors and the token ----------------------------------------------------------------------


async def test_gated_and_missing_repos_fail_with_their_codes(settings: Any, hf_host: Any) -> None:
    hf_host.sim_config(hf_gated_repos=["org/gated"], hf_missing_repos=["org/nope"])
    async with stack.executor(settings) as bus:
        events, job = await _run(bus, settings, "download", {"repo": "org/gated"})
        assert (events[-1].kind, events[-1].code) == ("failed", "HF_GATED")
        assert job.code == "HF_GATED" and "gated" in (job.error or "")
        events, job = await _run(bus, settings, "download", {"repo": "org/nope"})
        assert (events[-1].kind, events[-1].code) == ("failed", "HF_NOT_FOUND")
        assert not _model_dir(hf_host, "org/gated").exists()


async def test_gated_repo_with_token_and_the_token_never_shows(
    tmp_path: Path, nats_server: Any, hf_host: Any, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "hf_" + secrets.token_hex(16)
    settings = _settings(tmp_path, nats_server, hf_host, unique, hf_token=token)
    hf_host.sim_config(hf_gated_repos=["org/gated"], download_seconds=2.0)
    seen_ps: list[str] = []
    async with stack.executor(settings) as bus:
        every = await bus.js.subscribe(c.EVT_WILDCARD, ordered_consumer=True)
        job, _ = await jobs.submit(bus, settings, settings.hosts[0].alias, "download",
                                   {"repo": "org/gated"})  # fmt: skip
        events = asyncio.create_task(_events(bus, job.id))
        while not events.done():  # what anyone on the host sees in `ps` meanwhile
            ps = await asyncio.create_subprocess_exec(
                "ps", "-eww", "-o", "args", stdout=asyncio.subprocess.PIPE
            )
            seen_ps.append((await ps.communicate())[0].decode(errors="replace"))
            await asyncio.sleep(0.2)
        got = await events
        raw: list[bytes] = []
        while True:
            try:
                raw.append((await every.next_msg(timeout=1.0)).data)
            except TimeoutError:
                break
        await every.unsubscribe()
        record = await jobs.get(bus, job.id)

    assert got[-1].kind == "done", got[-1]
    assert _model_dir(hf_host, "org/gated").is_dir()  # the token reached the CLI
    assert any("dockersim.py hf download" in text for text in seen_ps)  # ps did see it run
    assert len(raw) >= len(got)
    assert not [m for m in raw if token.encode() in m]
    assert token not in json.dumps(msgspec.to_builtins(record))
    assert token not in (hf_host.sim_dir / "commands.log").read_text()
    assert token not in caplog.text
    assert not [text for text in seen_ps if token in text]


async def test_cancel_kills_the_remote_download(settings: Any, hf_host: Any) -> None:
    hf_host.sim_config(download_bytes=8 * MIB, download_seconds=5.0)
    repo = "org/slow"
    async with stack.executor(settings) as bus:
        job, _ = await jobs.submit(bus, settings, settings.hosts[0].alias, "download",
                                   {"repo": repo})  # fmt: skip
        sub = await bus.js.subscribe(c.evt_job_filter(job.id), ordered_consumer=True)
        while True:  # wait until bytes flow
            ev = c.decode_event((await sub.next_msg(timeout=30)).data)
            assert ev.kind not in c.FINAL_KINDS, ev
            if ev.kind == "progress" and isinstance(ev.data, dict) and ev.data["bytes"] > 0:
                break
        await sub.unsubscribe()
        assert _hf_pids(hf_host)
        cancelled = await jobs.cancel(bus, job.id)
        assert cancelled.state == "cancelled" and cancelled.code == "CANCELLED"
        events = await _events(bus, job.id)
        assert events[-1].kind == "cancelled"
        assert _hf_pids(hf_host) == []  # gone by the time the job says cancelled
        partial = list(_model_dir(hf_host, repo).glob("blobs/*.incomplete"))
        assert partial and partial[0].stat().st_size < 8 * MIB
        await asyncio.sleep(1.0)
        assert partial[0].stat().st_size == (size := partial[0].stat().st_size)  # not growing
        assert size < 8 * MIB

        _, disk = await _run(bus, settings, "disk")
        assert disk.result["models"] == [
            {"repo": repo, "bytes": disk.result["models"][0]["bytes"], "partial": True}
        ]
        hf_host.sim_config(download_seconds=0.5)
        _, again = await _run(bus, settings, "download", {"repo": repo})  # resumes
        assert again.state == "succeeded", again.error
        assert not list(_model_dir(hf_host, repo).glob("blobs/*.incomplete"))


# --- the boundary ------------------------------------------------------------------------------

PAYLOADS: list[Any] = [
    "org/x; touch /tmp/pwned-{u}",
    "$(touch /tmp/pwned-{u})/x",
    "org/`touch /tmp/pwned-{u}`",
    "org/x\ntouch /tmp/pwned-{u}",
    "../../tmp",
    "org/..",
    "-rf/x",
    "org/x/y",
    "org--evil/x",
    "org/x'$(touch /tmp/pwned-{u})'",
    "",
    5,
    None,
]


async def test_injection_is_refused_before_the_host(
    settings: Any, hf_host: Any, unique: str
) -> None:
    alias = settings.hosts[0].alias
    cases: list[tuple[str, dict[str, Any], str]] = []
    for p in PAYLOADS:
        value = p.format(u=unique) if isinstance(p, str) else p
        cases += [("download", {"repo": value}, "UNSAFE_VALUE")]
        cases += [("delete", {"repo": value}, "UNSAFE_VALUE")]
    for rev in ("main; touch /tmp/pwned-{u}", "-x", "../x", "$(id)", "a b"):
        args = {"repo": "org/ok", "revision": rev.format(u=unique)}
        cases.append(("download", args, "UNSAFE_VALUE"))
    cases.append(("download", {"repo": "org/ok", "token": "hf_x"}, "BAD_ARGS"))
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            for action, args, code in cases:
                r = await client.post(f"/api/hosts/{alias}/{action}", json={"args": args})
                assert r.status_code == 202, r.text
                events = await _events(bus, r.json()["job_id"])
                assert (events[-1].kind, events[-1].code) == ("failed", code), (args, events[-1])
                assert "pwned" not in (events[-1].message or "")  # never repeats the value
    assert hf_host.commands() == []  # nothing reached the simulated host's tools
    assert not list(Path("/tmp").glob(f"pwned-{unique}"))


# --- pure pieces -------------------------------------------------------------------------------


def test_progress_parses_tqdm_bars() -> None:
    p = Progress()
    assert p.feed("Fetching 4 files:  25%|██▌       | 1/4 [00:00<00:01,  2.10it/s]")
    assert p.feed("model.safetensors:  45%|████▌     | 3.62G/8.05G [00:41<00:49, 89.6MB/s]")
    assert p.feed("\x1b[Aother.bin:  10%|█         | 100M/1.00G [00:01<00:09, 100MB/s]")
    assert not p.feed("Downloading 'config.json' to '/x/blobs/abc.incomplete'")
    snap = p.snapshot()
    assert (snap["bytes"], snap["total"]) == (3_720_000_000, 9_050_000_000)
    assert snap["rate_bps"] == 189_600_000 and snap["eta_s"] == pytest.approx(28.1, abs=0.1)
    assert (snap["files_done"], snap["files_total"]) == (1, 4)
    assert p.feed("model.safetensors:   0%|          | 0.00/8.05G [00:00<?, ?B/s]")
    p.finish()
    snap = p.snapshot()
    assert snap["bytes"] == snap["total"] and snap["eta_s"] == 0.0 and snap["files_done"] == 4


def test_disk_output_and_folder_names() -> None:
    out = (
        "cache\t/home/u/.cache/huggingface/hub\n"
        "df\t/dev/nvme0n1p2 3936551178240 1000 3736551178240 6% /\n"
        "model\t8392000\t0\tmodels--org--b\n"
        "model\t100\t1\tmodels--Org--A\n"
        "model\t5\t0\tdatasets--x--y\n"
    )
    got = parse_disk(out)
    assert got["cache"] == "/home/u/.cache/huggingface/hub"
    assert (got["total_bytes"], got["used_bytes"], got["free_bytes"]) == (
        3936551178240, 1000, 3736551178240,
    )  # fmt: skip
    assert got["models"] == [
        {"repo": "Org/A", "bytes": 100, "partial": True},
        {"repo": "org/b", "bytes": 8392000, "partial": False},
    ]
    assert repo_of("models--a--b") == "a/b"
    assert repo_of("models--a--b--c") is None and repo_of("models--a") is None


async def test_http_download_then_delete_on_every_host(
    settings: Any, hf_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from app import catalog

    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    overrides = tmp_path / "models.overrides.yaml"
    overrides.write_text(yaml.safe_dump({"models": {
        "small": {"repo": "org/small-model"}, "mine": {"local_path": "/models/mine"},
    }}))  # fmt: skip
    monkeypatch.setenv("MODELS_OVERRIDES", str(overrides))
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            r = await client.post("/api/models/small/download")
            assert r.status_code == 202, r.text
            events = await stack.sse_events(client, r.json()["events"])
            assert events[-1]["event"] == "done", events[-1]
            assert _model_dir(hf_host, "org/small-model").exists()

            r = await client.request("DELETE", "/api/models/small/weights")
            assert r.status_code == 202
            (job,) = r.json()["jobs"]  # one per configured host
            assert job["host"] == settings.hosts[0].alias
            events = await stack.sse_events(client, job["events"])
            assert events[-1]["event"] == "done"
            assert events[-1]["data"]["data"]["deleted"] is True
            assert not _model_dir(hf_host, "org/small-model").exists()

            for method, path in (("DELETE", "/api/models/mine/weights"),
                                 ("POST", "/api/models/mine/download")):  # fmt: skip
                r = await client.request(method, path)
                assert (r.status_code, r.json()["code"]) == (400, "LOCAL_PATH_MODEL")
            r = await client.request("DELETE", "/api/models/nope/weights")
            assert (r.status_code, r.json()["code"]) == (404, "UNKNOWN_MODEL")
