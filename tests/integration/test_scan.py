"""Models already on a host's disk: ``scan`` over real NATS + sshd + the simulated ``hf``, the
stored result, ``GET /api/models/ondisk`` matching it to the catalog, and the scan script's
parsing against a hand-made cache (marker-proof, size-capped)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import catalog, jobs
from app import contracts as c
from app.bus import Bus
from tests import stack
from workers.scan import parse_scan, scan_script

MIB = 1024 * 1024


@pytest.fixture
def overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "models.overrides.yaml"
    path.write_text(yaml.safe_dump({"models": {"small": {"repo": "Org/Small-Model"}}}))
    monkeypatch.setenv("MODELS_OVERRIDES", str(path))
    return path


async def _run(bus: Bus, settings: Any, action: str, args: dict[str, Any]) -> c.JobRecord:
    job, _ = await jobs.submit(bus, settings, settings.hosts[0].alias, action, args)
    sub = await bus.js.subscribe(c.evt_job_filter(job.id), ordered_consumer=True)
    try:
        while c.decode_event((await sub.next_msg(timeout=60)).data).kind not in c.FINAL_KINDS:
            pass
    finally:
        await sub.unsubscribe()
    return await jobs.get(bus, job.id)


QWEN_MOE = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "max_position_embeddings": 262144,
    "num_experts": 128,
    "torch_dtype": "bfloat16",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                            "quant_method": "fp8", "weight_block_size": [128, 128]},
}  # fmt: skip


async def test_scan_then_ondisk_lists_ready_and_needs_setup(
    tmp_path: Path, nats_server: Any, hf_host: Any, unique: str, overrides: Path
) -> None:
    alias = f"gpu-{unique}"
    other = f"idle-{unique}"  # configured, never scanned
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url,
        [stack.ssh_host_config(alias, hf_host), stack.ssh_host_config(other, hf_host)],
        known_hosts=str(hf_host.known_hosts_path),
    )  # fmt: skip
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            r = await client.get("/api/models/ondisk")
            assert r.status_code == 200, r.text
            before = r.json()
            assert [h["status"] for h in before["hosts"]] == ["not scanned", "not scanned"]
            assert {e["status"] for e in before["models"]} == {"not_downloaded"}

            job = await _run(bus, settings, "download", {"repo": "org/small-model"})
            assert job.state == "succeeded", job.error
            hf_host.sim_config(hf_config=QWEN_MOE)
            job = await _run(bus, settings, "download", {"repo": "acme/Big-MoE-FP8"})
            assert job.state == "succeeded", job.error

            r = await client.post(f"/api/hosts/{alias}/scan")
            assert r.status_code == 202, r.text
            events = await stack.sse_events(client, r.json()["events"])
            assert events[-1]["event"] == "done", events[-1]
            result = (await jobs.get(bus, r.json()["job_id"])).result
            assert result["host"] == alias and result["cache"] == str(hf_host.hf_cache)
            by_repo = {m["repo"]: m for m in result["models"]}
            assert list(by_repo) == ["acme/Big-MoE-FP8", "org/small-model"]
            big, small = by_repo["acme/Big-MoE-FP8"], by_repo["org/small-model"]
            assert big["bytes"] >= 4 * MIB and big["partial"] is False
            assert big["config"]["quantization_config"]["quant_method"] == "fp8"
            assert small["config"]["architectures"] == ["LlamaForCausalLM"]
            assert small["config"]["max_position_embeddings"] == 131072
            stored = await bus.get_disk_scan(alias)
            assert stored is not None and stored["models"] == result["models"]
            assert stored["scanned_at"] > 0 and await bus.get_disk_scan(other) is None

            r = await client.get("/api/models/ondisk")
            assert r.status_code == 200, r.text
            body = r.json()
            hosts = {h["host"]: h for h in body["hosts"]}
            assert hosts[alias]["status"] == "scanned" and hosts[alias]["models"] == 2
            assert hosts[other] == {"host": other, "status": "not scanned"}
            entries = {e["repo"]: e for e in body["models"]}
            ready = entries["org/small-model"]  # the recipe says Org/Small-Model
            assert (ready["status"], ready["keys"]) == ("ready", ["small"])
            assert ready["hosts"] == [{"host": alias, "bytes": small["bytes"], "partial": False}]
            setup = entries["acme/Big-MoE-FP8"]
            assert setup["status"] == "needs_setup" and setup["keys"] == []
            assert setup["architectures"] == ["Qwen3MoeForCausalLM"]
            suggested = setup["suggested"]
            assert suggested == {"key": "big-moe-fp8", "recipe": {
                "name": "Big-MoE-FP8", "repo": "acme/Big-MoE-FP8", "max_model_len": 131072,
                "dtype": "bfloat16", "quantization": "fp8", "tensor_parallel_size": 1,
                "weight_bytes": big["bytes"],
            }}  # fmt: skip
            assert entries["openai/gpt-oss-20b"]["status"] == "not_downloaded"  # bundled

            r = await client.post("/api/models", json=suggested)
            assert r.status_code == 201, r.text
            assert r.json()["quantization"] == "fp8"
            after = {
                e["repo"]: e for e in (await client.get("/api/models/ondisk")).json()["models"]
            }
            assert after["acme/Big-MoE-FP8"]["status"] == "ready"
            assert after["acme/Big-MoE-FP8"]["keys"] == ["big-moe-fp8"]

            # the static path wins over /api/models/{key}; keys still resolve
            assert (await client.get("/api/models/small")).json()["repo"] == "Org/Small-Model"
            r = await client.get("/api/models/ondisk-nope")
            assert (r.status_code, r.json()["code"]) == (404, "UNKNOWN_MODEL")


async def test_scan_of_a_host_without_a_cache(
    tmp_path: Path, nats_server: Any, hf_host: Any, unique: str
) -> None:
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url, [stack.ssh_host_config(f"gpu-{unique}", hf_host)],
        known_hosts=str(hf_host.known_hosts_path),
    )  # fmt: skip
    async with stack.executor(settings) as bus:
        job = await _run(bus, settings, "scan", {})
        assert job.state == "succeeded", job.error
        assert job.result == {"host": settings.hosts[0].alias, "cache": str(hf_host.hf_cache),
                              "models": []}  # fmt: skip
        job = await _run(bus, settings, "scan", {"deep": True})
        assert (job.state, job.code) == ("failed", "BAD_ARGS")


# --- the script and its parser, on a hand-made cache (local bash, no SSH) ----------------------


def _model(cache: Path, repo: str, config: bytes | None, *, ref: str | None = "a" * 40,
           partial: bool = False) -> Path:  # fmt: skip
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    if ref:
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(ref)
        snap = root / "snapshots" / ref
        snap.mkdir(parents=True)
        if config is not None:
            blob = root / "blobs" / f"cfg-{ref}"
            blob.write_bytes(config)
            (snap / "config.json").symlink_to(os.path.relpath(blob, snap))
    if partial:
        (root / "blobs" / "abc.incomplete").write_bytes(b"x" * 10)
    return root


def _scan(cache: Path, cap: int | None = None) -> dict[str, Any]:
    nonce = "0123456789abcdef"
    script = scan_script(nonce) if cap is None else scan_script(nonce, cap)
    env = {"PATH": os.environ["PATH"], "HOME": str(cache.parent), "HF_HUB_CACHE": str(cache)}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    return parse_scan(out.stdout, nonce) if cap is None else parse_scan(out.stdout, nonce, cap)


def test_scan_script_reads_configs_robustly(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    evil = {"architectures": ["X"], "note": "\n__SPARK_SCAN_0123456789abcdef end\n__SPARK_x",
            "max_position_embeddings": 4096}  # fmt: skip
    _model(cache, "org/evil", json.dumps(evil).encode())  # no trailing newline
    _model(cache, "org/pretty", json.dumps({"torch_dtype": "float16"}, indent=2).encode() + b"\n")
    _model(cache, "org/broken", b"{not json", partial=True)
    _model(cache, "org/huge", json.dumps({"pad": "x" * 5000}).encode())
    _model(cache, "org/noconfig", None)
    _model(cache, "org/nosnap", None, ref=None)
    two = _model(cache, "org/two", b'{"model_type": "current"}', ref="b" * 40)
    newer = two / "snapshots" / ("c" * 40)
    newer.mkdir()
    (newer / "config.json").write_text('{"model_type": "newer but not main"}')
    os.utime(two / "snapshots" / ("b" * 40), (1e9, 1e9))
    (cache / "datasets--org--d").mkdir()
    (cache / "models--not-a-repo").mkdir()
    (cache / "models--bad--na me").mkdir()

    got = _scan(cache, cap=4096)
    assert got["cache"] == str(cache)
    models = {m["repo"]: m for m in got["models"]}
    assert list(models) == ["org/broken", "org/evil", "org/huge", "org/noconfig", "org/nosnap",
                            "org/pretty", "org/two"]  # fmt: skip
    assert models["org/evil"]["config"] == {"architectures": ["X"],
                                            "max_position_embeddings": 4096}  # fmt: skip
    assert models["org/pretty"]["config"] == {"torch_dtype": "float16"}
    broken = models["org/broken"]
    assert broken["partial"] is True and broken["config"] is None
    assert broken["config_error"] == "config.json is not valid JSON"
    assert models["org/huge"]["config_error"] == "config.json over 4 KiB"
    assert models["org/noconfig"]["config"] is None and "config_error" not in models["org/noconfig"]
    assert models["org/nosnap"]["snapshot"] is None
    assert models["org/two"]["config"] == {"model_type": "current"}  # refs/main's snapshot
    assert all(m["bytes"] > 0 and m["partial"] is (r == "org/broken") for r, m in models.items())

    (two / "refs" / "main").write_text("../../../etc")  # not a commit
    again = {m["repo"]: m for m in _scan(cache)["models"]}
    assert again["org/two"]["config"] == {"model_type": "newer but not main"}  # newest snapshot
    assert again["org/huge"]["config"] == {}  # under the default 64 KiB cap


def test_scan_of_a_missing_cache(tmp_path: Path) -> None:
    assert _scan(tmp_path / "nope") == {"cache": str(tmp_path / "nope"), "models": []}


def test_parser_ignores_foreign_and_cut_output() -> None:
    m = "__SPARK_SCAN_n "
    out = (
        "noise\n"
        f"{m}cache /c\n"
        f"{m}model 10\t0\tmodels--a--b\t{'a' * 40}\n"
        f"{m}config 20\n"
        '{"model_type": "x"\n'  # cut short: the next record starts before its end
        f"{m}model 5\t1\tmodels--c--d\t\n"
        f"{m}model x\t0\tmodels--e--f\t\n"  # no size: dropped
    )
    got = parse_scan(out, "n")
    assert got == {"cache": "/c", "models": [
        {"repo": "a/b", "bytes": 10, "partial": False, "snapshot": "a" * 40, "config": None},
        {"repo": "c/d", "bytes": 5, "partial": True, "snapshot": None, "config": None},
    ]}  # fmt: skip
