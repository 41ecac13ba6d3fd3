"""Probe parsers on realistic samples (incl. a DGX Spark), and a probe over a local shell."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.contracts import Container, DiskUsage, Gpu
from app.errors import HostError
from workers.probe import (
    MARK,
    parse_df,
    parse_docker_ps,
    parse_loadavg,
    parse_meminfo,
    parse_nvidia_smi,
    parse_probe,
    parse_uptime,
    probe,
)
from workers.runner import ShellRunner
from workers.transport import LocalTransport

SHIMS = Path(__file__).resolve().parents[1] / "shims"

SPARK_MEMINFO = """\
MemTotal:       128509124 kB
MemFree:        101234560 kB
MemAvailable:   119876544 kB
Buffers:          1234567 kB
Cached:          15432100 kB
SwapCached:             0 kB
SwapTotal:       16777212 kB
SwapFree:        16777212 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

SPARK_SMI = "NVIDIA GB10, 0, [N/A], [N/A], 45, 4.89\n"
H100_SMI = """\
NVIDIA H100 80GB HBM3, 97, 79283, 81559, 67, 612.45
NVIDIA H100 80GB HBM3, 0, 1, 81559, 31, 69.10
"""

DF = """\
Filesystem           1-blocks          Used     Available Capacity Mounted on
/dev/nvme0n1p2  3936818208768  812345475072 2924381958144      22% /
"""

DOCKER_PS = (
    '{"Command":"\\"python3 -m vllm.en…\\"","CreatedAt":"2025-10-20 10:11:12 +0000 UTC",'
    '"ID":"3f2a9c1b7d4e","Image":"nvcr.io/nvidia/vllm:25.09-py3","Labels":"a=b,c=d",'
    '"LocalVolumes":"0","Mounts":"/root/.cache/h…","Names":"vllm_node","Networks":"host",'
    '"Ports":"","RunningFor":"2 hours ago","Size":"0B","State":"running","Status":"Up 2 hours"}\n'
    '{"ID":"9e8d7c6b5a41","Image":"nginx:1.27","Names":"proxy","Status":"Up 5 minutes",'
    '"Ports":"0.0.0.0:8080->80/tcp"}\n'
)


def test_parse_meminfo_dgx_spark_unified_memory() -> None:
    mem = parse_meminfo(SPARK_MEMINFO)
    assert mem["MemTotal"] == 128509124 * 1024  # ~131.6 GB, shared by CPU and GPU
    assert mem["MemAvailable"] == 119876544 * 1024
    assert mem["SwapTotal"] == mem["SwapFree"] == 16777212 * 1024
    assert mem["HugePages_Total"] == 0  # no unit: a count, not KiB


def test_parse_uptime_and_loadavg() -> None:
    assert parse_uptime("351735.47 2787020.64\n") == 351735.47
    assert parse_loadavg("0.52 0.58 0.59 2/1234 98765\n") == (0.52, 0.58, 0.59)


def test_parse_df_posix_bytes() -> None:
    assert parse_df(DF) == [
        DiskUsage(
            path="/",
            total_bytes=3936818208768,
            used_bytes=812345475072,
            free_bytes=2924381958144,
        )
    ]


def test_parse_df_mount_point_with_spaces_and_garbage() -> None:
    text = "Filesystem 1-blocks Used Available Capacity Mounted on\n" + (
        "//nas/share  1000  400  600  40% /mnt/my models\ndf: /nope: No such file or directory\n"
    )
    assert parse_df(text) == [
        DiskUsage(path="/mnt/my models", total_bytes=1000, used_bytes=400, free_bytes=600)
    ]


def test_parse_docker_ps() -> None:
    assert parse_docker_ps(DOCKER_PS + "Cannot connect to the Docker daemon\n") == [
        Container(
            id="3f2a9c1b7d4e",
            name="vllm_node",
            image="nvcr.io/nvidia/vllm:25.09-py3",
            status="Up 2 hours",
        ),
        Container(
            id="9e8d7c6b5a41",
            name="proxy",
            image="nginx:1.27",
            status="Up 5 minutes",
            ports="0.0.0.0:8080->80/tcp",
        ),
    ]
    assert parse_docker_ps("") == []


def test_parse_nvidia_smi_dgx_spark_reports_na_memory() -> None:
    assert parse_nvidia_smi(SPARK_SMI) == [
        Gpu(name="NVIDIA GB10", utilization_pct=0.0, temperature_c=45.0, power_w=4.89)
    ]


def test_parse_nvidia_smi_discrete_gpus_and_noise() -> None:
    gpus = parse_nvidia_smi(
        H100_SMI + "NVIDIA-SMI has failed because it couldn't communicate with the driver.\n"
    )
    assert [g.memory_total_mib for g in gpus] == [81559.0, 81559.0]
    assert gpus[0] == Gpu(
        name="NVIDIA H100 80GB HBM3",
        utilization_pct=97.0,
        memory_used_mib=79283.0,
        memory_total_mib=81559.0,
        temperature_c=67.0,
        power_w=612.45,
    )
    assert parse_nvidia_smi("Weird, GPU, name, 1, [Not Supported], 2, 3, N/A\n")[0].name == (
        "Weird, GPU, name"
    )


def _probe_output(docker: str) -> str:
    return (
        f"{MARK}uptime\n351735.47 2787020.64\n{MARK}loadavg\n0.52 0.58 0.59 2/1234 98765\n"
        f"{MARK}meminfo\n{SPARK_MEMINFO}"
        f"{MARK}df /home/nv\n{DF}{MARK}df /home/nv/.cache/huggingface/hub\n{DF}"
        f"{docker}{MARK}gpu\n{SPARK_SMI}"
    )


def test_parse_probe_whole_output() -> None:
    res = parse_probe(
        "spark1", _probe_output(f"{MARK}docker\n{DOCKER_PS}"), probed_at=1.0, duration_ms=2.0
    )
    assert res.host == "spark1" and res.uptime_s == 351735.47 and res.load == (0.52, 0.58, 0.59)
    assert res.mem_total_bytes == 128509124 * 1024 and res.swap_free_bytes == 16777212 * 1024
    assert [d.path for d in res.disks] == ["/home/nv", "/home/nv/.cache/huggingface/hub"]
    assert res.docker and [c.name for c in res.containers] == ["vllm_node", "proxy"]
    assert [g.name for g in res.gpus] == ["NVIDIA GB10"]
    assert (res.probed_at, res.duration_ms) == (1.0, 2.0)


def test_parse_probe_docker_states() -> None:
    absent = parse_probe("h", _probe_output(f"{MARK}no-docker\n"), probed_at=0, duration_ms=0)
    assert (absent.docker, absent.containers) == (False, [])
    broken = f"{MARK}docker\n{MARK}docker-error\n"
    daemon_down = parse_probe("h", _probe_output(broken), probed_at=0, duration_ms=0)
    assert (daemon_down.docker, daemon_down.containers) == (True, [])


def test_parse_probe_without_proc_is_a_host_error() -> None:
    with pytest.raises(HostError, match="probe of mac"):
        parse_probe("mac", "cat: /proc/uptime: No such file\n", probed_at=0, duration_ms=0)


# --- a real probe through a local shell ------------------------------------------------------


@pytest.fixture
async def runner() -> AsyncIterator[ShellRunner]:
    r = ShellRunner(LocalTransport())
    yield r
    await r.close()


def _bin_dir(tmp_path: Path, *tools: str) -> Path:
    """A PATH directory holding only ``tools`` (symlinks to the real ones)."""
    d = tmp_path / "bin"
    d.mkdir()
    for tool in tools:
        real = shutil.which(tool)
        assert real, tool
        (d / tool).symlink_to(real)
    return d


BASICS = ("cat", "df", "dirname")


async def test_probe_local_with_shims(
    runner: ShellRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = tmp_path / "sim"
    sim.mkdir()
    row = {"ID": "abc123", "Image": "vllm:1", "Names": "vllm_node", "Status": "Up 1 minute"}
    (sim / "containers.jsonl").write_text(json.dumps(row, separators=(",", ":")) + "\n")
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    path = f"{SHIMS}:{_bin_dir(tmp_path, *BASICS, 'grep', 'sed', 'id')}"
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("SPARK_SIM_DIR", str(sim))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = await probe(runner, "local", timeout=10)
    assert res.host == "local" and res.uptime_s > 0 and len(res.load) == 3
    assert 0 < res.mem_available_bytes <= res.mem_total_bytes
    assert [d.path for d in res.disks] == [os.environ["HOME"], str(hub)]
    assert all(d.total_bytes > 0 for d in res.disks)
    assert res.docker and res.containers == [
        Container(id="abc123", name="vllm_node", image="vllm:1", status="Up 1 minute")
    ]
    assert res.gpus == [Gpu(name="NVIDIA GB10", utilization_pct=3, temperature_c=41, power_w=11.25)]
    assert res.duration_ms > 0 and res.probed_at > 0


async def test_probe_local_without_docker_or_gpu(
    runner: ShellRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(_bin_dir(tmp_path, *BASICS)))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "missing" / "hf"))
    res = await probe(runner, "local", timeout=10)
    assert (res.docker, res.containers, res.gpus) == (False, [], [])
    assert [d.path for d in res.disks] == [os.environ["HOME"], str(tmp_path)]  # nearest parent


async def test_probe_local_docker_daemon_down(
    runner: ShellRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = _bin_dir(tmp_path, *BASICS)
    fake = bin_dir / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    res = await probe(runner, "local", timeout=10)
    assert (res.docker, res.containers) == (True, [])
