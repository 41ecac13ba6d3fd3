"""The model catalog: the bundled models.yaml, validation with errors naming file and key path,
the overrides merge, shell-safety of every field that reaches a host, and atomic saves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import catalog as cat
from app.catalog import CatalogError, Recipe, UnsafeRecipeValue, validate_recipe
from app.errors import BadRequest
from app.shellsafe import UnsafeValue

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models.yaml"
GOOD: dict[str, Any] = {"repo": "Qwen/Qwen3-8B", "max_model_len": 8192}


def write(path: Path, models: Any) -> Path:
    path.write_text(yaml.safe_dump({"models": models}))
    return path


# --- the bundled file -------------------------------------------------------------------------


def test_bundled_file_is_found_and_every_entry_validates() -> None:
    assert cat.bundled_path() == BUNDLED
    catalog = cat.load_catalog(BUNDLED)
    assert len(catalog.models) >= 5
    assert set(catalog.sources.values()) == {"bundled"}
    raw = yaml.safe_load(BUNDLED.read_text())["models"]
    for key, recipe in catalog.models.items():
        assert validate_recipe(key, raw[key], "models.yaml") == recipe
        assert recipe.gpu_memory_utilization <= cat.MEMORY_CEILING
        assert not recipe.allow_high_memory
        assert recipe.image.startswith("nvcr.io/nvidia/vllm:")
        assert (recipe.repo is None) != (recipe.local_path is None)
        assert recipe.served_name == key and recipe.name
    modes = {(r.mode, r.tensor_parallel_size) for r in catalog.models.values()}
    assert ("docker", 1) in modes and ("cluster", 2) in modes


def test_bundled_header_documents_every_field_and_the_merge_rule() -> None:
    header = BUNDLED.read_text().split("\nmodels:", 1)[0]
    assert all(line.startswith("#") or not line.strip() for line in header.splitlines())
    for field in Recipe.__struct_fields__:
        assert re.search(rf"^#\s+{field}\s", header, re.M), f"{field} is not documented"
    assert "FIELD BY FIELD" in header and "MODELS_OVERRIDES" in header and "MODELS_YAML" in header


def test_the_commented_local_path_example_in_the_header_validates() -> None:
    header = BUNDLED.read_text().split("\nmodels:", 1)[0]
    block = header.split("A weights-on-disk entry looks like:", 1)[1]
    example = yaml.safe_load("\n".join(line[3:] for line in block.splitlines() if line[3:]))
    ((key, raw),) = example.items()
    recipe = validate_recipe(key, raw, "models.yaml")
    assert recipe.local_path and recipe.repo is None


# --- one recipe ---------------------------------------------------------------------------------


def test_defaults_and_normalisation() -> None:
    r = validate_recipe("qwen3", {**GOOD, "extra_args": {"--enable_prefix_caching": True}})
    assert (r.name, r.served_name, r.image, r.mode, r.port) == (
        "qwen3", "qwen3", cat.DEFAULT_IMAGE, "docker", 8888,
    )  # fmt: skip
    assert (r.container, r.gpu_memory_utilization, r.tensor_parallel_size) == ("vllm_node", 0.82, 1)
    assert (r.start_timeout_s, r.on_demand, r.restore_previous_on_failure) == (900, False, True)
    assert r.extra_args == {"enable-prefix-caching": True}
    assert validate_recipe("q", {**GOOD, "port": None}).port == 8888  # null → the default


@pytest.mark.parametrize(
    "raw",
    [
        {"max_model_len": 8192},
        {"repo": "Qwen/Qwen3-8B", "local_path": "/models/qwen3"},
    ],
)
def test_exactly_one_of_repo_or_local_path(raw: dict[str, Any]) -> None:
    with pytest.raises(CatalogError, match=r"^request: models\.qwen3: exactly one of repo"):
        validate_recipe("qwen3", raw)
    assert validate_recipe("qwen3", {"local_path": "/models/qwen3"}).local_path == "/models/qwen3"


def test_memory_fraction_above_ceiling_is_refused_unless_allowed() -> None:
    with pytest.raises(CatalogError) as info:
        validate_recipe("qwen3", {**GOOD, "gpu_memory_utilization": 0.9}, "models.yaml")
    assert info.value.message.startswith("models.yaml: models.qwen3.gpu_memory_utilization: ")
    assert info.value.code == "BAD_RECIPE" and info.value.status == 400
    assert isinstance(info.value, BadRequest)
    for bad in (0.05, float("nan"), 0.96):
        with pytest.raises(CatalogError, match="gpu_memory_utilization"):
            validate_recipe("q", {**GOOD, "gpu_memory_utilization": bad, "allow_high_memory": True})
    r = validate_recipe("q", {**GOOD, "gpu_memory_utilization": 0.9, "allow_high_memory": True})
    assert r.gpu_memory_utilization == 0.9
    assert validate_recipe("q", {**GOOD, "gpu_memory_utilization": 0.85}).gpu_memory_utilization


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"max_model_len": "lots"}, "models.qwen3.max_model_len: expected int, got str"),
        ({"max_model_len": True}, "models.qwen3.max_model_len: expected int, got bool"),
        ({"port": "8000"}, "models.qwen3.port: expected int, got str"),
        ({"aliases": ["ok", 3]}, "models.qwen3.aliases[1]: expected str, got int"),
        ({"extra_args": {"seed": [1]}}, "models.qwen3.extra_args: expected bool | int | float"),
        ({"env": {"A": 1}}, "models.qwen3.env: expected str, got int"),
        ({"mode": "swarm"}, "models.qwen3.mode: expected one of docker, cluster"),
        ({"dtype": "int3"}, "models.qwen3.dtype: expected one of auto, half"),
        ({"max_model_len": 4}, "models.qwen3.max_model_len: must be 16.."),
        ({"start_timeout_s": 0}, "models.qwen3.start_timeout_s: must be 10.."),
        ({"tensor_parallel_size": 2}, "models.qwen3.tensor_parallel_size: must be 1 in docker"),
        ({"mode": "cluster"}, "models.qwen3.tensor_parallel_size: must be 2..16 in cluster"),
        ({"extra_args": {"max-model-len": 9}}, "models.qwen3.extra_args.max-model-len: set by"),
        ({"extra_args": {"api_key": "x"}}, "models.qwen3.extra_args.api-key: set by"),
        ({"env": {"HF_TOKEN": "hf_x"}}, "models.qwen3.env.HF_TOKEN: secrets do not belong"),
        ({"aliases": ["a", "a"]}, "models.qwen3.aliases: listed twice"),
        ({"notes": "x" * 5000}, "models.qwen3.notes: must be at most"),
    ],
)
def test_bad_values_name_the_file_and_key_path(
    tmp_path: Path, extra: dict[str, Any], needle: str
) -> None:
    path = write(tmp_path / "models.yaml", {"qwen3": {**GOOD, **extra}})
    with pytest.raises(CatalogError) as info:
        cat.load_catalog(path)
    assert info.value.message.startswith(f"{path}: {needle}"), info.value.message
    assert "Traceback" not in info.value.message


def test_cluster_mode_takes_tensor_parallel_two() -> None:
    r = validate_recipe("big", {**GOOD, "mode": "cluster", "tensor_parallel_size": 2})
    assert cat.vllm_flags(r)[-2:] == ["--tensor-parallel-size", "2"]


def test_unknown_fields_are_refused_with_a_hint() -> None:
    with pytest.raises(CatalogError, match=r"models\.q\.max_model_length: unknown field \(did you"):
        validate_recipe("q", {**GOOD, "max_model_length": 8192})
    with pytest.raises(CatalogError) as info:
        validate_recipe("q", {**GOOD, "PWNED$(reboot)": 1})
    assert info.value.message == "request: models.q: unknown field"


def test_file_level_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("models:\n  q: {repo: [unclosed\n")
    with pytest.raises(CatalogError, match=rf"^{re.escape(str(broken))}: not valid YAML at line"):
        cat.load_catalog(broken)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("qwen3:\n  repo: a/b\n")
    with pytest.raises(CatalogError, match="expected only a `models:` mapping at the top level"):
        cat.load_catalog(wrong)
    with pytest.raises(CatalogError, match="catalog file not found"):
        cat.load_catalog(tmp_path / "absent.yaml")
    listed = write(tmp_path / "list.yaml", {"q": ["repo", "a/b"]})
    with pytest.raises(CatalogError, match=r"models\.q: expected a mapping"):
        cat.load_catalog(listed)


def test_vllm_flags_follow_the_documented_extra_args_rule() -> None:
    r = validate_recipe(
        "q",
        {
            **GOOD,
            "served_name": "Qwen/Qwen3-8B",
            "extra_args": {"enforce-eager": True, "trust-remote-code": False, "seed": 7},
        },
    )
    assert cat.vllm_flags(r) == [
        "--served-model-name", "Qwen/Qwen3-8B", "--max-model-len", "8192",
        "--gpu-memory-utilization", "0.82", "--enforce-eager", "--seed", "7",
    ]  # fmt: skip


# --- shell safety -------------------------------------------------------------------------------

MARK = "PWNED"
INJECTIONS: list[tuple[str, dict[str, Any]]] = [
    ("repo", {"repo": f"Qwen/{MARK};reboot"}),
    ("repo", {"repo": f"$({MARK})/x"}),
    ("repo", {"repo": f"a/{MARK} --trust-remote-code"}),
    ("local_path", {"repo": None, "local_path": f"/models/../{MARK}"}),
    ("local_path", {"repo": None, "local_path": f"/models/{MARK}`id`"}),
    ("local_path", {"repo": None, "local_path": f"models/{MARK}"}),
    ("image", {"image": f"nvcr.io/x:{MARK};reboot"}),
    ("image", {"image": f"-{MARK}"}),
    ("container", {"container": f"vllm {MARK}"}),
    ("container", {"container": f"-{MARK}"}),
    ("extra_args", {"extra_args": {f"x; {MARK}": 1}}),
    ("extra_args", {"extra_args": {f"$({MARK})": True}}),
    ("extra_args.chat-template", {"extra_args": {"chat-template": f"x\n{MARK}"}}),
    ("extra_args.tool-call-parser", {"extra_args": {"tool-call-parser": f"--model={MARK}"}}),
    ("extra_args.seed", {"extra_args": {"seed": float("inf")}}),
    ("env", {"env": {f"A;{MARK}": "x"}}),
    ("env", {"env": {f"lower_{MARK}": "x"}}),
    ("env.VLLM_LOGGING_LEVEL", {"env": {"VLLM_LOGGING_LEVEL": f"INFO\n{MARK}"}}),
    ("served_name", {"served_name": f"x; {MARK}"}),
    ("aliases[0]", {"aliases": [f"-{MARK}"]}),
    ("quantization", {"quantization": f"fp8 {MARK}"}),
]


@pytest.mark.parametrize(("field", "extra"), INJECTIONS)
def test_injection_payloads_are_refused_without_echo(field: str, extra: dict[str, Any]) -> None:
    with pytest.raises(UnsafeValue) as info:
        validate_recipe("qwen3", {**GOOD, **extra}, "models.yaml")
    exc = info.value
    assert isinstance(exc, CatalogError) and isinstance(exc, UnsafeRecipeValue)
    assert exc.code == "UNSAFE_VALUE" and exc.status == 400
    assert exc.message.startswith(f"models.yaml: models.qwen3.{field}: "), exc.message
    assert MARK not in exc.message and MARK.lower() not in exc.message


@pytest.mark.parametrize("key", [f"Bad;{MARK}", f"../{MARK}", "", "x" * 65, 7])
def test_bad_keys_are_refused_without_echo(key: Any) -> None:
    with pytest.raises(UnsafeValue) as info:
        validate_recipe(key, GOOD)
    assert info.value.message.startswith("request: models (a key): ")
    assert MARK not in info.value.message


# --- overrides ------------------------------------------------------------------------------------


@pytest.fixture
def bundled(tmp_path: Path) -> Path:
    return write(
        tmp_path / "models.yaml",
        {
            "qwen3": {**GOOD, "max_num_seqs": 8, "extra_args": {"seed": 1}, "aliases": ["q3"]},
            "llama": {"repo": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 32768},
            "gone": {"repo": "a/b"},
        },
    )


def test_overrides_merge_field_by_field_and_add_new_keys(tmp_path: Path, bundled: Path) -> None:
    overrides = write(
        tmp_path / "over.yaml",
        {
            "qwen3": {"gpu_memory_utilization": 0.7, "max_num_seqs": None, "extra_args": {}},
            "llama": {"local_path": "/models/llama"},
            "gone": None,
            "mine": {"repo": "openai/gpt-oss-20b", "port": 8001},
        },
    )
    catalog = cat.load_catalog(bundled, overrides)
    assert catalog.sources == {"qwen3": "overrides", "llama": "overrides", "mine": "overrides"}
    q = catalog.models["qwen3"]
    assert (q.repo, q.max_model_len, q.gpu_memory_utilization) == ("Qwen/Qwen3-8B", 8192, 0.7)
    assert q.max_num_seqs is None and q.extra_args == {} and q.aliases == ["q3"]
    llama = catalog.models["llama"]  # local_path replaces the bundled repo
    assert (llama.repo, llama.local_path, llama.max_model_len) == (None, "/models/llama", 32768)
    assert catalog.models["mine"].port == 8001 and "gone" not in catalog.models
    assert [e["key"] for e in catalog.entries()] == ["llama", "mine", "qwen3"]
    assert catalog.entry("mine")["source"] == "overrides"
    assert cat.load_catalog(bundled, tmp_path / "absent.yaml").sources["qwen3"] == "bundled"


def test_override_errors_name_the_overrides_file(tmp_path: Path, bundled: Path) -> None:
    overrides = write(tmp_path / "over.yaml", {"qwen3": {"gpu_memory_utilization": 0.99}})
    with pytest.raises(CatalogError, match=rf"^{re.escape(str(overrides))}: models\.qwen3\.gpu_"):
        cat.load_catalog(bundled, overrides)
    clash = write(tmp_path / "clash.yaml", {"new": {"repo": "a/b", "aliases": ["q3"]}})
    with pytest.raises(CatalogError, match=r"models\.new\.aliases\[0\]: already names models\.q"):
        cat.load_catalog(bundled, clash)
    with pytest.raises(cat.BrokenCatalog) as info:
        cat.current(bundled, clash)
    assert (info.value.status, info.value.code) == (500, "BAD_CATALOG")


def test_catalog_paths_follow_the_environment(tmp_path: Path) -> None:
    class S:
        data_dir = str(tmp_path)

    assert cat.catalog_paths(S(), {}) == (BUNDLED, tmp_path / "models.overrides.yaml")
    env = {"MODELS_YAML": "/etc/m.yaml", "MODELS_OVERRIDES": " /var/o.yaml "}
    assert cat.catalog_paths(S(), env) == (Path("/etc/m.yaml"), Path("/var/o.yaml"))
    assert cat.catalog_paths(S(), {"MODELS_YAML": "  "})[0] == BUNDLED


# --- saving -------------------------------------------------------------------------------------


def test_save_override_round_trips_and_keeps_other_entries(tmp_path: Path, bundled: Path) -> None:
    overrides = tmp_path / "sub" / "over.yaml"
    cat.save_override(overrides, "mine", {"repo": "openai/gpt-oss-20b", "max_model_len": 4096})
    cat.save_override(overrides, "qwen3", {"port": 8002})
    cat.save_override(overrides, "mine", {"repo": "openai/gpt-oss-20b", "max_model_len": 8192})
    data = yaml.safe_load(overrides.read_text())
    assert data == {
        "models": {
            "mine": {"repo": "openai/gpt-oss-20b", "max_model_len": 8192},
            "qwen3": {"port": 8002},
        }
    }
    assert overrides.read_text().startswith("# ")
    catalog = cat.load_catalog(bundled, overrides)
    assert catalog.models["mine"].max_model_len == 8192 and catalog.models["qwen3"].port == 8002
    assert sorted(p.name for p in overrides.parent.iterdir()) == [".over.yaml.lock", "over.yaml"]


def test_add_entry_validates_merged_then_persists(tmp_path: Path, bundled: Path) -> None:
    overrides = tmp_path / "over.yaml"
    catalog = cat.add_entry(bundled, overrides, "qwen3", {"gpu_memory_utilization": 0.6})
    assert catalog.entry("qwen3")["repo"] == "Qwen/Qwen3-8B"  # merged over the bundled entry
    raw = {"repo": "openai/gpt-oss-20b", "extra_args": {"--max_num_batched_tokens": 4096}}
    catalog = cat.add_entry(bundled, overrides, "mine", raw)
    assert catalog.models["mine"].extra_args == {"max-num-batched-tokens": 4096}
    saved = yaml.safe_load(overrides.read_text())["models"]
    assert saved == {
        "qwen3": {"gpu_memory_utilization": 0.6},
        "mine": {"repo": "openai/gpt-oss-20b", "extra_args": {"max-num-batched-tokens": 4096}},
    }
    assert cat.load_catalog(bundled, overrides) == catalog


@pytest.mark.parametrize(
    ("key", "raw", "code"),
    [
        ("new", {"max_model_len": 8192}, "BAD_RECIPE"),  # neither repo nor local_path
        ("qwen3", {"gpu_memory_utilization": 0.9}, "BAD_RECIPE"),
        ("new", {"repo": "a/b", "aliases": ["q3"]}, "BAD_RECIPE"),  # alias taken
        ("new", {"repo": f"a/{MARK};x"}, "UNSAFE_VALUE"),
        ("new", "not a mapping", "BAD_RECIPE"),
        (f"{MARK}/..", GOOD, "UNSAFE_VALUE"),
    ],
)
def test_add_entry_refuses_and_writes_nothing(
    tmp_path: Path, bundled: Path, key: Any, raw: Any, code: str
) -> None:
    overrides = tmp_path / "over.yaml"
    with pytest.raises(CatalogError) as info:
        cat.add_entry(bundled, overrides, key, raw)
    assert info.value.code == code and info.value.message.startswith("request: models")
    assert MARK not in info.value.message
    assert not overrides.exists()


def test_add_entry_names_an_unwritable_overrides_file(tmp_path: Path, bundled: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(cat.CatalogUnwritable) as info:
        cat.add_entry(bundled, blocker / "over.yaml", "mine", GOOD)
    assert (info.value.status, info.value.code) == (500, "CATALOG_UNWRITABLE")
    assert info.value.message.startswith(f"{blocker / 'over.yaml'}: cannot write")


def test_concurrent_adds_lose_no_entry(tmp_path: Path, bundled: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    overrides = tmp_path / "over.yaml"
    keys = [f"m{i}" for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: cat.add_entry(bundled, overrides, k, GOOD), keys))
    assert set(yaml.safe_load(overrides.read_text())["models"]) == set(keys)
