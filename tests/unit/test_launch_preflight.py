"""The launch-command builder and the pre-flight checks, on the bundled catalog and on
hostile values: the host's shell must see exactly the intended words."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from app import catalog, launch, preflight
from app import contracts as c
from app.catalog import Recipe

GIB = 2**30


def bundled() -> catalog.Catalog:
    return catalog.load_catalog(catalog.bundled_path())


def probed(available_gib: float, free_gib: float = 500) -> c.HostState:
    probe = c.ProbeResult(
        host="spark1", uptime_s=1, load=(0, 0, 0), mem_total_bytes=int(121.7 * GIB),
        mem_available_bytes=int(available_gib * GIB), swap_total_bytes=0, swap_free_bytes=0,
        disks=[
            c.DiskUsage(path="/home/ops", total_bytes=10**12, used_bytes=0, free_bytes=10**12),
            c.DiskUsage(path="/home/ops/.cache/huggingface/hub", total_bytes=10**12,
                        used_bytes=0, free_bytes=int(free_gib * GIB)),
        ],
        docker=True, containers=[], gpus=[], probed_at=0, duration_ms=1,
    )  # fmt: skip
    return c.HostState(host="spark1", up=True, checked_at=0, probe=probe)


@pytest.mark.parametrize("key", sorted(bundled().models))
def test_every_bundled_recipe_passes_command_and_flag_checks(key: str) -> None:
    recipe = bundled().models[key]
    result = preflight.run(key, recipe, "spark1", probed(available_gib=119))
    checks = {ch.name: ch for ch in result.checks}
    assert checks["command"].ok and checks["flags"].ok, checks
    assert result.ok == all(ch.ok for ch in result.checks)
    if recipe.mode == "cluster":
        script = '"$HOME"/spark-vllm-docker/launch-cluster.sh'
        assert result.command.startswith(f"{script} -t {recipe.image} --name {recipe.container} ")
        assert " -d exec vllm serve " in result.command
        assert result.command.count("--distributed-executor-backend") == 1
    else:
        assert result.command.startswith("docker run -d --name ")


def hostile_recipe() -> Recipe:
    """Values the catalog accepts that still carry shell metacharacters (quoted at the sink)."""
    return catalog.validate_recipe(
        "evil-ok",
        {
            "repo": "org/model.v1", "served_name": "a:b@c+d",
            "env": {"VLLM_LOGGING_PREFIX": "$(reboot); `id` 'x' \"y\" * > /tmp/z"},
            "extra_args": {"chat-template": "{% if x %}$HOME; rm -rf /{% endif %}"},
        },
    )  # fmt: skip


def test_host_shell_sees_exactly_the_argv() -> None:
    recipe = hostile_recipe()
    argv = launch.docker_argv("evil-ok", recipe)
    line = launch.render(argv)
    assert launch.round_trips(argv, line)
    # bash parses the line as the host would; $HOME (a constant we wrote) is the only expansion
    out = subprocess.run(
        ["bash", "-c", f"set -- {line}; printf '%s\\0' \"$@\""],
        env={"HOME": "/home/ops", "PATH": "/usr/bin:/bin"}, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    got = out.split("\0")[:-1]
    want = [w.replace("$HOME", "/home/ops") if w == launch.HF_CACHE_WORD else w for w in argv]
    assert got == want
    assert "-e" in got and "VLLM_LOGGING_PREFIX=$(reboot); `id` 'x' \"y\" * > /tmp/z" in got


def test_cluster_launch_passes_image_name_env_and_a_local_model(tmp_path: Path) -> None:
    """The cluster line, run by bash against a stand-in script, hands the script exactly the
    recipe's image, container, env and (in its extra docker args) the local model's mount."""
    recipe = catalog.validate_recipe(
        "tp-local",
        {"local_path": "/srv/models/tp-local", "mode": "cluster", "tensor_parallel_size": 2,
         "image": "nvcr.io/nvidia/vllm:25.10-py3", "container": "tp_node",
         "env": {"NCCL_DEBUG": "WARN"}},
    )  # fmt: skip
    script = tmp_path / "launch-cluster.sh"
    script.write_text('#!/bin/sh\nprintf "%s\\0" "$VLLM_SPARK_EXTRA_DOCKER_ARGS" "$@"\n')
    script.chmod(0o755)
    argv = launch.cluster_argv("tp-local", recipe, str(script))
    line = launch.render(argv)
    assert launch.round_trips(argv, line)
    out = subprocess.run(["bash", "-c", line], capture_output=True, check=True).stdout.decode()
    extra, *args = out.split("\0")[:-1]
    assert extra == "-v /srv/models/tp-local:/models/tp-local:ro"
    assert args[:8] == ["-t", "nvcr.io/nvidia/vllm:25.10-py3", "--name", "tp_node",
                        "-e", "NCCL_DEBUG=WARN", "-d", "exec"]  # fmt: skip
    assert args[8:11] == ["vllm", "serve", "/models/tp-local"]
    assert launch.cluster_stop_argv(recipe, "s.sh") == ["s.sh", "--name", "tp_node", "stop"]
    with pytest.raises(catalog.CatalogError, match=r"env\.NCCL_DEBUG"):
        catalog.validate_recipe(
            "tp-bad", {"repo": "org/m", "mode": "cluster", "tensor_parallel_size": 2,
                       "env": {"NCCL_DEBUG": "WARN INFO"}},
        )  # fmt: skip


def test_unknown_and_repeated_flags_are_refused() -> None:
    argv = launch.docker_argv("k", hostile_recipe())
    assert preflight.check_flags([*argv, "--no-such-flag", "1"]).detail == (
        "not vLLM flags: --no-such-flag"
    )
    bad = preflight.check_flags([*argv, "--served-model-name", "other"])
    assert not bad.ok and bad.detail == "given more than once: --served-model-name"


def test_memory_admission_refuses_with_numbers() -> None:
    recipe = bundled().models["gpt-oss-120b"]  # 0.82 of 121.7 GiB = 99.8 GiB claimed by vLLM
    ok = preflight.check_memory(recipe, probed(available_gib=119))
    assert ok.ok, ok.detail
    refused = preflight.check_memory(recipe, probed(available_gib=40))
    assert not refused.ok
    assert refused.detail.startswith("needs 99.8 GiB (0.82 of 121.7 GiB); 40.0 GiB available")
    # the model the swap stops gives its share back
    running = c.ModelState(host="spark1", model="old", recipe={"gpu_memory_utilization": 0.5})
    freed = preflight.freed_by_stopping(running, probed(available_gib=40))
    assert preflight.check_memory(recipe, probed(available_gib=40), freed).ok is True
    heavy = catalog.validate_recipe("w", {"repo": "o/w", "gpu_memory_utilization": 0.1,
                                          "weight_bytes": 60 * GIB})  # fmt: skip
    assert "weights 60.0 + KV 2" in preflight.check_memory(heavy, probed(40)).detail
    assert not preflight.check_memory(recipe, None).ok  # no probe: cannot admit


def test_flags_found_after_vllm_serve_even_with_a_container_named_serve() -> None:
    recipe = catalog.validate_recipe("k", {"repo": "o/m", "container": "serve"})
    assert preflight.check_flags(launch.docker_argv("k", recipe)).ok


def test_disk_check_for_downloads() -> None:
    recipe = bundled().models["gpt-oss-120b"]
    assert preflight.check_disk(recipe, probed(119, free_gib=500), on_disk=False).ok
    small = preflight.check_disk(recipe, probed(119, free_gib=10), on_disk=False)
    assert not small.ok and "10.0 GiB free" in small.detail
    assert preflight.check_disk(recipe, probed(119, free_gib=10), on_disk=True).ok
