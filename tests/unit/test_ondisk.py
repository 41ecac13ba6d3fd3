"""On-disk models matched to the catalog, and recipes inferred from config.json (app/ondisk.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app import catalog as cat
from app import ondisk
from app.shellsafe import check_model_key

GB = 1_000_000_000
GIB = 1 << 30

# Real config.json files, as published on the Hub (long lists shortened).
LLAMA_31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
QWEN3_30B_A3B_FP8: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 262144,
    "max_window_layers": 48,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "num_attention_heads": 32,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 48,
    "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000000,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "modules_to_not_convert": ["lm_head", *(f"model.layers.{i}.mlp.gate" for i in range(48))],
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
}
GPT_OSS_120B: dict[str, Any] = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": 200002,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 18,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "num_local_experts": 128,
    "output_router_logits": False,
    "pad_token_id": 199999,
    "quantization_config": {
        "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
        "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False,
    },
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "transformers_version": "4.55.0.dev0",
    "use_cache": True,
    "vocab_size": 201088,
}  # fmt: skip
GEMMA3_27B: dict[str, Any] = {  # multimodal: the language model's fields are in text_config
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "text_config": {
        "hidden_size": 5376, "max_position_embeddings": 131072, "model_type": "gemma3_text",
        "num_hidden_layers": 62, "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model"},
}  # fmt: skip


def catalog_of(models: dict[str, dict[str, Any]]) -> cat.Catalog:
    return cat.Catalog(
        models={k: cat.validate_recipe(k, v) for k, v in models.items()},
        sources=dict.fromkeys(models, "bundled"),
    )


def scan(*models: dict[str, Any]) -> dict[str, Any]:
    return {"host": "x", "cache": "/c", "models": list(models), "scanned_at": 1.0}


def on_disk(repo: str, size: int, config: Any, partial: bool = False) -> dict[str, Any]:
    return {"repo": repo, "bytes": size, "partial": partial,
            "config": ondisk.config_subset(config)}  # fmt: skip


CATALOG = catalog_of({
    "llama-3.1-8b": {"repo": "meta-llama/Llama-3.1-8B-Instruct", "aliases": ["llama"]},
    "llama-long": {"repo": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 131072},
    "qwen3-30b-a3b": {"repo": "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8"},
    "mine": {"local_path": "/models/mine"},
})  # fmt: skip


# --- inference ---------------------------------------------------------------------------------


def test_llama_recipe_from_config() -> None:
    sub = ondisk.config_subset(LLAMA_31_8B)
    assert sub["rope_scaling"]["rope_type"] == "llama3"
    assert "eos_token_id" not in sub and "transformers_version" not in sub
    got = ondisk.suggest("meta-llama/Llama-3.1-8B-Instruct", sub, 16_060_000_000)
    assert got == {
        "key": "llama-3.1-8b-instruct",
        "recipe": {
            "name": "Llama-3.1-8B-Instruct", "repo": "meta-llama/Llama-3.1-8B-Instruct",
            "max_model_len": 131072, "dtype": "bfloat16", "tensor_parallel_size": 1,
            "weight_bytes": 16_060_000_000,
        },
    }  # fmt: skip


def test_qwen_fp8_quantization_and_capped_context() -> None:
    sub = ondisk.config_subset(QWEN3_30B_A3B_FP8)
    q = sub["quantization_config"]
    assert q["quant_method"] == "fp8" and q["weight_block_size"] == [128, 128]
    assert "modules_to_not_convert" not in q  # a long list: not kept
    recipe = ondisk.infer_recipe("Qwen/Qwen3-30B-A3B-Instruct-2507-FP8", sub, 31 * GB)
    assert recipe["max_model_len"] == ondisk.MAX_SUGGESTED_LEN  # 262144 capped
    assert (recipe["dtype"], recipe["quantization"]) == ("bfloat16", "fp8")
    assert recipe["tensor_parallel_size"] == 1 and "mode" not in recipe


def test_gpt_oss_mxfp4_on_one_box_and_big_weights_on_two() -> None:
    sub = ondisk.config_subset(GPT_OSS_120B)
    assert sub["architectures"] == ["GptOssForCausalLM"] and sub["num_local_experts"] == 128
    one = ondisk.infer_recipe("openai/gpt-oss-120b", sub, 65_300_000_000)
    assert one["quantization"] == "mxfp4" and one["tensor_parallel_size"] == 1
    assert one["max_model_len"] == 131072
    two = ondisk.infer_recipe("openai/gpt-oss-120b", sub, 101 * GIB)
    assert (two["mode"], two["tensor_parallel_size"]) == ("cluster", 2)
    assert ondisk.infer_recipe("a/b", sub, 100 * GIB)["tensor_parallel_size"] == 1
    for recipe in (one, two):
        cat.validate_recipe("gpt-oss-120b", recipe)


def test_multimodal_fields_come_from_text_config() -> None:
    sub = ondisk.config_subset(GEMMA3_27B)
    assert "vision_config" not in sub
    recipe = ondisk.infer_recipe("google/gemma-3-27b-it", sub, 55 * GB)
    assert (recipe["max_model_len"], recipe["dtype"]) == (131072, "bfloat16")


@pytest.mark.parametrize(
    ("config", "expect"),
    [
        ({}, {}),
        ({"torch_dtype": "float8_e4m3fn"}, {}),  # not a vLLM --dtype
        ({"dtype": "float16"}, {"dtype": "float16"}),  # transformers >= 4.56 spelling
        ({"max_position_embeddings": 8}, {}),  # below the catalog's minimum
        ({"max_position_embeddings": True}, {}),
        ({"n_positions": 2048}, {"max_model_len": 2048}),
        ({"max_position_embeddings": 1 << 30}, {"max_model_len": 131072}),
        ({"quantization_config": {"quant_method": "AWQ"}}, {"quantization": "awq"}),
        ({"quantization_config": {"quant_method": "x; rm -rf /"}}, {}),
        ({"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}},
         {"quantization": "modelopt_fp4"}),
        ({"quantization_config": {"quant_method": "compressed-tensors"}},
         {"quantization": "compressed-tensors"}),
        ({"quantization_config": "fp8"}, {}),
    ],
)  # fmt: skip
def test_inference_takes_only_what_vllm_accepts(config: Any, expect: dict[str, Any]) -> None:
    recipe = ondisk.infer_recipe("org/m", ondisk.config_subset(config), None)
    picked = {k: recipe[k] for k in ("max_model_len", "dtype", "quantization") if k in recipe}
    assert picked == expect
    assert "weight_bytes" not in recipe
    cat.validate_recipe("m", recipe)


def test_config_subset_is_bounded() -> None:
    raw = {
        "architectures": ["A" * 129, "Ok", 5],
        "model_type": "x" * 1000,
        "max_position_embeddings": float("nan"),
        "quantization_config": {"quant_method": "fp8", "nested": {"deep": {"deeper": 1}},
                                "n" * 100: 1},
        "text_config": {"text_config": {"max_position_embeddings": 5}},
    }  # fmt: skip
    sub = ondisk.config_subset(raw)
    assert sub["architectures"] == ["Ok"]
    assert "model_type" not in sub and "max_position_embeddings" not in sub
    assert sub["quantization_config"] == {"quant_method": "fp8", "nested": {}}
    assert sub["text_config"] == {}
    assert ondisk.config_subset(["not", "a", "mapping"]) == {}


@pytest.mark.parametrize(
    ("repo", "key"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b-instruct"),
        ("Qwen/Qwen3-30B-A3B-Instruct-2507-FP8", "qwen3-30b-a3b-instruct-2507-fp8"),
        ("org/__Weird..Name__", "weird..name"),
        ("org/___", "model"),
        ("org/" + "X" * 120, "x" * 64),
        ("org/A_B", "a_b"),
    ],
)
def test_suggested_keys_are_valid(repo: str, key: str) -> None:
    assert ondisk.suggest_key(repo) == key
    assert check_model_key(key) == key


def test_suggested_key_avoids_taken_names() -> None:
    assert ondisk.suggest_key("org/qwen3", {"qwen3"}) == "qwen3-2"
    assert ondisk.suggest_key("org/qwen3", {"qwen3", "qwen3-2"}) == "qwen3-3"
    long = ondisk.suggest_key("org/" + "y" * 80, {"y" * 64})
    assert long == "y" * 62 + "-2" and check_model_key(long) == long


# --- matching ----------------------------------------------------------------------------------


def test_match_ready_needs_setup_and_not_downloaded() -> None:
    scans = {
        "spark1": scan(
            on_disk("META-LLAMA/llama-3.1-8b-instruct", 16 * GB, LLAMA_31_8B),  # other case
            on_disk("openai/gpt-oss-120b", 65 * GB, GPT_OSS_120B),
        ),
        "spark2": scan(on_disk("openai/gpt-oss-120b", 3 * GB, GPT_OSS_120B, partial=True)),
        "spark3": None,  # never scanned
    }
    got = ondisk.match(CATALOG, scans)
    assert [(e["status"], e["repo"]) for e in got] == [
        ("ready", "META-LLAMA/llama-3.1-8b-instruct"),
        ("needs_setup", "openai/gpt-oss-120b"),
        ("not_downloaded", "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8"),
    ]  # the local_path recipe is no cache entry: not listed
    ready, setup, missing = got
    assert ready["keys"] == ["llama-3.1-8b", "llama-long"]
    assert ready["hosts"] == [{"host": "spark1", "bytes": 16 * GB, "partial": False}]
    assert ready["architectures"] == ["LlamaForCausalLM"] and "suggested" not in ready
    assert setup["keys"] == [] and setup["partial"] is False and setup["bytes"] == 65 * GB
    assert [h["host"] for h in setup["hosts"]] == ["spark1", "spark2"]
    assert setup["architectures"] == ["GptOssForCausalLM"]
    suggested = setup["suggested"]
    assert suggested["key"] == "gpt-oss-120b"
    assert suggested["recipe"]["weight_bytes"] == 65 * GB  # the complete copy's size
    assert suggested["recipe"]["quantization"] == "mxfp4"
    cat.validate_recipe(suggested["key"], suggested["recipe"])
    assert missing == {
        "repo": "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8",
        "status": "not_downloaded",
        "keys": ["qwen3-30b-a3b"],
        "hosts": [],
    }


def test_partial_copies_only() -> None:
    scans = {"a": scan(
        on_disk("meta-llama/Llama-3.1-8B-Instruct", 1 * GB, LLAMA_31_8B, partial=True),
        on_disk("org/half", 2 * GB, QWEN3_30B_A3B_FP8, partial=True),
    )}  # fmt: skip
    got = {e["repo"]: e for e in ondisk.match(CATALOG, scans)}
    assert got["meta-llama/Llama-3.1-8B-Instruct"]["status"] == "partial"
    half = got["org/half"]
    assert (half["status"], half["partial"], half["bytes"]) == ("needs_setup", True, 2 * GB)
    assert "weight_bytes" not in half["suggested"]["recipe"]  # unknown until complete


def test_suggested_keys_avoid_the_catalog_and_each_other() -> None:
    scans = {"a": scan(
        on_disk("other/llama", GB, {}), on_disk("third/llama", GB, {}),
        on_disk("x/Llama-3.1-8B", GB, {}), on_disk("bad/name with space", GB, {}),
    )}  # fmt: skip
    got = {e["repo"]: e for e in ondisk.match(CATALOG, scans)}
    keys = [got[r]["suggested"]["key"] for r in ("other/llama", "third/llama")]
    assert keys == ["llama-2", "llama-3"]  # "llama" is an alias in the catalog
    assert got["x/Llama-3.1-8B"]["suggested"]["key"] == "llama-3.1-8b-2"
    assert got["bad/name with space"]["suggested"] is None  # the catalog refuses the repo


def test_every_suggestion_posts_into_the_catalog(tmp_path: Any) -> None:
    bundled = cat.bundled_path()
    overrides = tmp_path / "models.overrides.yaml"
    configs = [LLAMA_31_8B, QWEN3_30B_A3B_FP8, GPT_OSS_120B, GEMMA3_27B]
    models = [on_disk(f"someone/model-{i}", (i + 1) * 40 * GIB, c) for i, c in enumerate(configs)]
    models.append(on_disk("openai/gpt-oss-120b", 65 * GB, copy.deepcopy(GPT_OSS_120B)))
    got = ondisk.match(cat.load_catalog(bundled), {"a": scan(*models)})
    setup = [e for e in got if e["status"] == "needs_setup"]
    assert len(setup) == 4  # gpt-oss-120b is in the bundled catalog: ready
    assert any(e["status"] == "ready" and e["keys"] == ["gpt-oss-120b"] for e in got)
    for entry in setup:
        key, recipe = entry["suggested"]["key"], entry["suggested"]["recipe"]
        after = cat.add_entry(bundled, overrides, key, recipe)
        assert after.models[key].repo == entry["repo"]
    again = ondisk.match(cat.load_catalog(bundled, overrides), {"a": scan(*models)})
    assert {e["repo"] for e in again if e["status"] == "ready"} >= {e["repo"] for e in setup}
    assert "needs_setup" not in {e["status"] for e in again}


def test_hosts_view() -> None:
    view = ondisk.hosts_view(["a", "b"], {"a": scan(on_disk("o/m", 1, {})), "b": None})
    assert view == [
        {"host": "a", "status": "scanned", "scanned_at": 1.0, "cache": "/c", "models": 1},
        {"host": "b", "status": "not scanned"},
    ]
