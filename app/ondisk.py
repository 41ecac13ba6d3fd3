"""Models already on the hosts' disks, matched to the catalog; pure (no I/O, no bus).

A ``scan`` (workers/scan.py) lists each ``models--owner--name`` folder of a host's Hugging Face
cache with its size, whether a download is unfinished (``*.incomplete`` blobs) and a subset of
its ``config.json`` (:func:`config_subset`). :func:`match` joins the scans of every host with
the catalog, one entry per repo (case-insensitive, as the Hub treats repo ids):

``ready``
    on disk (a complete copy on at least one host) and named by a recipe: ``keys``.
``partial``
    named by a recipe, but every copy on disk is an unfinished download.
``needs_setup``
    on disk without a recipe: ``suggested`` is ``{"key", "recipe"}``, the body of
    ``POST /api/models``, inferred from config.json and the size on disk (it validates with
    :func:`app.catalog.validate_recipe`; review it before launching).
``not_downloaded``
    a recipe (with a ``repo``: local_path recipes are not cache entries) on no scanned host.

Imports only the standard library and the catalog, so workers load it too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from app import catalog as cat
from app import shellsafe

GIB = 1 << 30
MAX_SUGGESTED_LEN = 131072
"""Suggested ``max_model_len`` at most this (a longer context costs KV-cache memory)."""
CLUSTER_ABOVE_BYTES = 100 * GIB
"""Weights larger than this do not leave room on one 128 GB Spark: suggest two (cluster)."""
CONFIG_CAP = 64 * 1024
"""config.json larger than this is not read (the scan says ``config_error``)."""

_SCALAR = (str, int, float, bool)
_MAX_TEXT = 200
_CONFIG_KEYS = (
    "architectures", "model_type", "max_position_embeddings", "n_positions", "max_seq_len",
    "seq_length", "torch_dtype", "dtype", "num_hidden_layers", "hidden_size",
    "num_attention_heads", "num_key_value_heads", "vocab_size", "num_experts",
    "num_local_experts", "num_experts_per_tok", "sliding_window",
)  # fmt: skip
_NESTED = ("quantization_config", "rope_scaling")
_TEXT_CONFIG = "text_config"
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
_QUANTIZATION = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_KEY_CHAR = re.compile(r"[^a-z0-9._-]+")


# --- config.json -------------------------------------------------------------------------------


def _scalar(value: object) -> object | None:
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else None
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value if isinstance(value, _SCALAR) or value is None else None


def _flat(raw: object, depth: int = 1) -> dict[str, Any]:
    """Scalars (and short lists of scalars) of a mapping, nested mappings ``depth`` deep."""
    out: dict[str, Any] = {}
    if not isinstance(raw, Mapping):
        return out
    for name, value in list(raw.items())[:64]:
        if not isinstance(name, str) or len(name) > 64:
            continue
        if isinstance(value, list) and len(value) <= 16:
            items = [_scalar(v) for v in value]
            if all(i is not None for i in items):
                out[name] = items
        elif isinstance(value, Mapping):
            if depth > 0:
                out[name] = _flat(value, depth - 1)
        elif (v := _scalar(value)) is not None or value is None:
            out[name] = v
    return out


def _subset(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _CONFIG_KEYS:
        value = raw.get(name)
        if name == "architectures":
            if isinstance(value, list):
                out[name] = [a for a in value[:8] if isinstance(a, str) and len(a) <= 128]
        elif value is not None and (v := _scalar(value)) is not None:
            out[name] = v
    for name in _NESTED:
        if isinstance(raw.get(name), Mapping):
            out[name] = _flat(raw[name])
    return out


def config_subset(raw: object) -> dict[str, Any]:
    """What a scan keeps of a parsed config.json: the fields that shape a launch (context
    length, dtype, quantization, architecture, size), bounded; ``text_config`` (multimodal
    models) keeps the same fields one level down."""
    if not isinstance(raw, Mapping):
        return {}
    out = _subset(raw)
    if isinstance(raw.get(_TEXT_CONFIG), Mapping):
        out[_TEXT_CONFIG] = _subset(raw[_TEXT_CONFIG])
    return out


def _field(config: Mapping[str, Any], name: str) -> Any:
    """A field at the top level, else in ``text_config``."""
    value = config.get(name)
    if value is None and isinstance(config.get(_TEXT_CONFIG), Mapping):
        value = config[_TEXT_CONFIG].get(name)
    return value


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- inference ---------------------------------------------------------------------------------


def suggest_key(repo: str, taken: Iterable[str] = ()) -> str:
    """A catalog key from the repo's name (``Qwen/Qwen3-8B`` → ``qwen3-8b``), valid per
    :func:`shellsafe.check_model_key` and not in ``taken`` (else ``-2``, ``-3``, ...)."""
    name = repo.rsplit("/", 1)[-1].lower()
    base = _KEY_CHAR.sub("-", name)
    base = re.sub(r"^[^a-z0-9]+", "", base)[: shellsafe.MAX_MODEL_KEY].rstrip("-._") or "model"
    used = set(taken)
    key, n = base, 1
    while key in used:
        n += 1
        tail = f"-{n}"
        key = base[: shellsafe.MAX_MODEL_KEY - len(tail)].rstrip("-._") + tail
    return shellsafe.check_model_key(key)


def _quantization(config: Mapping[str, Any]) -> str | None:
    q = _field(config, "quantization_config")
    if not isinstance(q, Mapping) or not isinstance(q.get("quant_method"), str):
        return None
    method = q["quant_method"].strip().lower()
    algo = q.get("quant_algo")
    if method == "modelopt" and isinstance(algo, str) and "FP4" in algo.upper():
        method = "modelopt_fp4"  # vLLM's name for NVIDIA's NVFP4 checkpoints
    return method if _QUANTIZATION.fullmatch(method) else None


def infer_recipe(
    repo: str, config: Mapping[str, Any] | None, weight_bytes: int | None
) -> dict[str, Any]:
    """Recipe fields for a repo from its config.json (subset) and its size on disk."""
    config = config or {}
    recipe: dict[str, Any] = {"name": repo.rsplit("/", 1)[-1][:128], "repo": repo}
    length = next(
        (n for k in _LENGTH_KEYS if (n := _int(_field(config, k))) is not None and n >= 16), None
    )
    if length is not None:
        recipe["max_model_len"] = min(length, MAX_SUGGESTED_LEN)
    dtype = _field(config, "torch_dtype") or _field(config, "dtype")
    if isinstance(dtype, str) and dtype in cat.DTYPES:
        recipe["dtype"] = dtype
    if (quant := _quantization(config)) is not None:
        recipe["quantization"] = quant
    if weight_bytes is not None and weight_bytes > CLUSTER_ABOVE_BYTES:
        recipe["mode"], recipe["tensor_parallel_size"] = "cluster", 2
    else:
        recipe["tensor_parallel_size"] = 1
    if weight_bytes is not None and 1 <= weight_bytes <= 1 << 50:
        recipe["weight_bytes"] = weight_bytes
    return recipe


def suggest(
    repo: str,
    config: Mapping[str, Any] | None,
    weight_bytes: int | None,
    taken: Iterable[str] = (),
) -> dict[str, Any]:
    """``{"key", "recipe"}`` for ``POST /api/models``; checked with validate_recipe."""
    key = suggest_key(repo, taken)
    recipe = infer_recipe(repo, config, weight_bytes)
    try:
        cat.validate_recipe(key, recipe)
    except cat.CatalogError:  # a value the catalog refuses: fall back to the bare minimum
        recipe = {"repo": repo, "tensor_parallel_size": 1}
        cat.validate_recipe(key, recipe)
    return {"key": key, "recipe": recipe}


# --- matching ----------------------------------------------------------------------------------


def _architectures(config: Mapping[str, Any] | None) -> list[str]:
    value = _field(config or {}, "architectures")
    return [a for a in value if isinstance(a, str)] if isinstance(value, list) else []


def match(
    catalog: cat.Catalog, scans: Mapping[str, Mapping[str, Any] | None]
) -> list[dict[str, Any]]:
    """One entry per repo on any host's disk or in the catalog, sorted by status then repo.

    ``scans``: host alias → its stored scan result (``{"models": [{"repo", "bytes", "partial",
    "config"}]}``), or None for a host never scanned (it contributes nothing).
    Every entry has ``repo``, ``status``, ``keys`` (catalog keys whose recipe names the repo)
    and ``hosts`` (``[{"host", "bytes", "partial"}]``); on-disk ones also ``bytes`` (largest
    complete copy, else largest copy), ``partial`` (no complete copy) and ``architectures``;
    ``needs_setup`` ones ``suggested``.
    """
    by_repo: dict[str, list[str]] = {}
    for key in sorted(catalog.models):
        repo = catalog.models[key].repo
        if repo:
            by_repo.setdefault(repo.lower(), []).append(key)
    taken = set(catalog.models) | {a for r in catalog.models.values() for a in r.aliases}

    found: dict[str, dict[str, Any]] = {}
    for host in sorted(scans):
        scan = scans[host]
        if not scan:
            continue
        for model in scan.get("models") or []:
            repo = model.get("repo")
            if not isinstance(repo, str):
                continue
            entry = found.setdefault(repo.lower(), {"repo": repo, "hosts": [], "config": None})
            size = _int(model.get("bytes"))
            entry["hosts"].append(
                {"host": host, "bytes": size, "partial": bool(model.get("partial"))}
            )
            config = model.get("config")
            if isinstance(config, Mapping) and (
                entry["config"] is None or not model.get("partial")
            ):
                entry["config"] = config

    out: list[dict[str, Any]] = []
    for low, entry in found.items():
        copies = entry["hosts"]
        complete = [c["bytes"] for c in copies if not c["partial"] and c["bytes"] is not None]
        sizes = complete or [c["bytes"] for c in copies if c["bytes"] is not None]
        keys = by_repo.get(low, [])
        item: dict[str, Any] = {
            "repo": entry["repo"],
            "status": ("ready" if complete else "partial") if keys else "needs_setup",
            "keys": keys,
            "hosts": copies,
            "bytes": max(sizes) if sizes else None,
            "partial": not complete,
            "architectures": _architectures(entry["config"]),
        }
        if not keys:
            weight = max(complete) if complete else None
            try:
                item["suggested"] = suggest(entry["repo"], entry["config"], weight, taken)
                taken.add(item["suggested"]["key"])
            except cat.CatalogError:  # a repo id the catalog refuses: nothing to suggest
                item["suggested"] = None
        out.append(item)
    for low, keys in by_repo.items():
        if low not in found:
            repo = catalog.models[keys[0]].repo
            out.append({"repo": repo, "status": "not_downloaded", "keys": keys, "hosts": []})
    order = {"ready": 0, "partial": 1, "needs_setup": 2, "not_downloaded": 3}
    out.sort(key=lambda e: (order[e["status"]], e["repo"].lower()))
    return out


def hosts_view(
    aliases: Iterable[str], scans: Mapping[str, Mapping[str, Any] | None]
) -> list[dict[str, Any]]:
    """Per configured host: when it was scanned and its cache, or ``not scanned``."""
    out: list[dict[str, Any]] = []
    for alias in aliases:
        scan = scans.get(alias)
        if not scan:
            out.append({"host": alias, "status": "not scanned"})
            continue
        out.append({
            "host": alias, "status": "scanned", "scanned_at": scan.get("scanned_at"),
            "cache": scan.get("cache"), "models": len(scan.get("models") or []),
        })  # fmt: skip
    return out
