"""The model catalog: launch recipes from the bundled ``models.yaml`` plus a user overrides file.

Layering, as in llama-swap: defaults → decode → normalise → validate. A field set to ``null``
takes its default; errors name the file and the key path (``models.yaml: models.qwen3.
max_model_len: expected int``) and never repeat a refused value.

Merge rule: an overrides entry whose key is also bundled is merged field by field over the
bundled entry: each field it sets replaces that field as a whole (``extra_args``, ``env`` and
``aliases`` included: they are not merged key by key); setting ``repo`` drops the bundled
``local_path`` and vice versa; ``null`` puts a field back to its default. A new key adds an
entry; ``key: null`` hides a bundled entry. ``POST /api/models`` writes one overrides entry
(replacing that key's previous one) through :func:`add_entry`, validated exactly like the files.

Imports only the standard library, msgspec, PyYAML and the project's error and shell-safety
modules, so workers can load recipes without the web framework.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
import yaml

from app import shellsafe
from app.errors import BadRequest, SparkError
from app.yamlfile import read_section

PACKAGE = Path(__file__).resolve().parent
REQUEST = "request"
"""The source named in errors about a recipe sent over HTTP."""
DEFAULT_IMAGE = "nvcr.io/nvidia/vllm:25.09-py3"
MEMORY_CEILING = 0.85
"""Practical ceiling of ``--gpu-memory-utilization`` on a DGX Spark (unified memory)."""
HIGH_MEMORY_CEILING = 0.95
OVERRIDES_FILE = "models.overrides.yaml"
BUNDLED_ENV = ("SPARK_CONTROL_MODELS_YAML", "MODELS_YAML")
OVERRIDES_ENV = ("SPARK_CONTROL_MODELS_OVERRIDES", "MODELS_OVERRIDES")

DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
MODES = ("docker", "cluster")
RESERVED_FLAGS = frozenset(
    {
        "model",
        "host",
        "port",
        "served-model-name",
        "max-model-len",
        "gpu-memory-utilization",
        "tensor-parallel-size",
        "max-num-seqs",
        "dtype",
        "quantization",
        "api-key",
    }
)
"""vLLM flags that a recipe sets through its own fields or that the launcher owns."""
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|API_KEY|ACCESS_KEY|PRIVATE_KEY|NGC_KEY")
_CLUSTER_UNSAFE = re.compile(r"[\s*?\[]")
_SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_QUANTIZATION = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_NOTES = 4000


class CatalogError(BadRequest):
    """A recipe or catalog file is invalid; the message names the file (or request) and key."""

    code = "BAD_RECIPE"


class UnsafeRecipeValue(CatalogError, shellsafe.UnsafeValue):
    """A recipe value that may not reach a shell (an UnsafeValue that also names the file)."""

    code = "UNSAFE_VALUE"


class CatalogUnwritable(SparkError):
    """The overrides file cannot be written (permissions, full disk, missing mount)."""

    code = "CATALOG_UNWRITABLE"
    status = 500


class BrokenCatalog(SparkError):
    """A catalog file on this server does not load: the operator must fix it, not the caller."""

    code = "BAD_CATALOG"
    status = 500


class Recipe(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How to launch one model with vLLM; see the header of ``models.yaml`` for each field."""

    name: str = ""
    repo: str | None = None
    local_path: str | None = None
    image: str = DEFAULT_IMAGE
    mode: Literal["docker", "cluster"] = "docker"
    port: int = 8888
    container: str = "vllm_node"
    served_name: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.82
    allow_high_memory: bool = False
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    quantization: str | None = None
    extra_args: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)
    """vLLM flags by long name without the leading ``--``; ``true`` = bare flag, ``false`` =
    left out, anything else = the flag's value."""
    env: dict[str, str] = msgspec.field(default_factory=dict)
    start_timeout_s: int = 900
    on_demand: bool = False
    restore_previous_on_failure: bool = True
    aliases: list[str] = msgspec.field(default_factory=list)
    weight_bytes: int | None = None
    notes: str | None = None


FIELDS: tuple[str, ...] = Recipe.__struct_fields__
Source = Literal["bundled", "overrides"]


class Catalog(msgspec.Struct, kw_only=True):
    """The merged catalog: recipes by key and where each came from."""

    models: dict[str, Recipe] = msgspec.field(default_factory=dict)
    sources: dict[str, Source] = msgspec.field(default_factory=dict)
    bundled_path: str = ""
    overrides_path: str | None = None

    def where(self, key: str) -> str:
        """The file an entry came from."""
        if self.sources[key] == "overrides" and self.overrides_path:
            return self.overrides_path
        return self.bundled_path

    def entry(self, key: str) -> dict[str, Any]:
        """The JSON view of one entry: key, source, then every recipe field."""
        return {"key": key, "source": self.sources[key], **msgspec.to_builtins(self.models[key])}

    def entries(self) -> list[dict[str, Any]]:
        return [self.entry(k) for k in sorted(self.models)]


# --- where the files are ----------------------------------------------------------------------


def bundled_path() -> Path:
    """``app/models.yaml`` in an installed wheel, else ``models.yaml`` at the checkout root."""
    for candidate in (PACKAGE / "models.yaml", PACKAGE.parent / "models.yaml"):
        if candidate.is_file():
            return candidate
    return PACKAGE.parent / "models.yaml"


def _env(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((v.strip() for n in names if (v := env.get(n, "")).strip()), None)


class HasDataDir(Protocol):
    data_dir: str


def catalog_paths(settings: HasDataDir, env: Mapping[str, str]) -> tuple[Path, Path]:
    """(bundled, overrides): ``MODELS_YAML`` replaces the bundled file; ``MODELS_OVERRIDES``
    else ``<data_dir>/models.overrides.yaml``. Blank variables count as unset."""
    bundled = _env(env, BUNDLED_ENV)
    overrides = _env(env, OVERRIDES_ENV)
    return (
        Path(bundled).expanduser() if bundled else bundled_path(),
        Path(overrides).expanduser() if overrides else Path(settings.data_dir) / OVERRIDES_FILE,
    )


# --- one recipe: decode → normalise → validate ------------------------------------------------


def _problem(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's message as (field path, problem), without repeating the offending value."""
    msg = str(exc)
    path = ""
    if m := re.search(r" - at `key` in `\$\.?(.*)`$", msg):
        path, msg = m.group(1), msg[: m.start()]
        return path, "keys must be strings"
    if m := re.search(r" - at `\$\.?(.*)`$", msg):
        path, msg = m.group(1).replace("[...]", ""), msg[: m.start()]
    if m := re.match(r"Expected `(.+?)`, got `(\w+)`", msg):
        expected = m.group(1).removesuffix(" | null")
        return path, f"expected {expected}, got {m.group(2)}"
    if m := re.match(r"Object contains unknown field `(.*)`", msg, re.S):
        name = m.group(1)
        if not _FIELD_NAME.fullmatch(name):
            return path, "unknown field"
        close = difflib.get_close_matches(name, FIELDS, n=1) if not path else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        return ".".join(p for p in (path, name) if p), f"unknown field{hint}"
    if m := re.match(r"Object missing required field `(\w+)`", msg):
        return ".".join(p for p in (path, m.group(1)) if p), "required"
    if msg.startswith("Invalid enum value"):
        choices = {"mode": MODES, "dtype": DTYPES}.get(path)
        return path, ("expected one of " + ", ".join(choices)) if choices else "not allowed"
    return path, "invalid value"


def _decode(raw: Mapping[str, Any], where: str) -> Recipe:
    present = {k: v for k, v in raw.items() if v is not None}  # null → the default
    try:
        return msgspec.convert(present, type=Recipe, strict=True)
    except msgspec.ValidationError as exc:
        path, problem = _problem(exc)
        raise CatalogError(f"{where}{'.' + path if path else ''}: {problem}") from exc


def _flag_name(name: str) -> str:
    """``--max_num_batched_tokens`` and ``max-num-batched-tokens`` are the same flag."""
    return name.removeprefix("--").replace("_", "-")


def _normalise(key: str, r: Recipe) -> Recipe:
    return msgspec.structs.replace(
        r,
        name=r.name or key,
        served_name=r.served_name or key,
        extra_args={_flag_name(k): v for k, v in r.extra_args.items()},
    )


def _fail(where: str, field: str, problem: str) -> CatalogError:
    return CatalogError(f"{where}.{field}: {problem}")


def _check_text(where: str, field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise _fail(where, field, f"must be at most {limit} characters")
    if _CONTROL.search(value):
        raise _fail(where, field, "must not contain control characters")


def _check_name(where: str, field: str, value: str) -> None:
    if not _SERVED_NAME.fullmatch(value):
        raise UnsafeRecipeValue(
            f"{where}.{field}: must be a model name ({_SERVED_NAME.pattern}, no leading '-')"
        )


def _check_safe(where: str, r: Recipe) -> None:
    """Everything that reaches a shell on a GPU host, through the shell-safety whitelists."""
    try:
        if r.repo is not None:
            shellsafe.check_repo(r.repo, field=f"{where}.repo")
        if r.local_path is not None:
            shellsafe.check_local_path(r.local_path, field=f"{where}.local_path")
        shellsafe.check_image(r.image, field=f"{where}.image")
        shellsafe.check_container(r.container, field=f"{where}.container")
        shellsafe.check_port(r.port, field=f"{where}.port")
        for name, value in r.extra_args.items():
            shellsafe.check_flag(f"--{name}", field=f"{where}.extra_args")
            shellsafe.check_arg_value(value, field=f"{where}.extra_args.{name}")
        for name, text in r.env.items():
            shellsafe.check_env_name(name, field=f"{where}.env")
            shellsafe.check_env_value(text, field=f"{where}.env.{name}")
    except shellsafe.UnsafeValue as exc:
        raise UnsafeRecipeValue(exc.message) from exc
    assert r.served_name is not None  # set by _normalise
    _check_name(where, "served_name", r.served_name)
    for i, alias in enumerate(r.aliases):
        _check_name(where, f"aliases[{i}]", alias)
    if r.quantization is not None and not _QUANTIZATION.fullmatch(r.quantization):
        raise UnsafeRecipeValue(f"{where}.quantization: must match {_QUANTIZATION.pattern}")


def _check_knobs(where: str, r: Recipe) -> None:
    if (r.repo is None) == (r.local_path is None):
        raise CatalogError(f"{where}: exactly one of repo (a Hugging Face id) or local_path")
    ceiling = HIGH_MEMORY_CEILING if r.allow_high_memory else MEMORY_CEILING
    if not 0.1 <= r.gpu_memory_utilization <= ceiling:  # NaN fails too
        hint = "" if r.allow_high_memory else "; allow_high_memory: true permits up to 0.95"
        raise _fail(
            where,
            "gpu_memory_utilization",
            f"must be 0.1..{ceiling} (unified memory: higher values have frozen DGX Sparks{hint})",
        )
    if r.mode == "docker" and r.tensor_parallel_size != 1:
        raise _fail(where, "tensor_parallel_size", "must be 1 in docker mode (use mode: cluster)")
    if r.mode == "cluster" and not 2 <= r.tensor_parallel_size <= 16:
        raise _fail(where, "tensor_parallel_size", "must be 2..16 in cluster mode")
    for field, low, high in (
        ("max_model_len", 16, 1 << 24),
        ("max_num_seqs", 1, 4096),
        ("start_timeout_s", 10, 86400),
        ("weight_bytes", 1, 1 << 50),
    ):
        value = getattr(r, field)
        if value is not None and not low <= value <= high:
            raise _fail(where, field, f"must be {low}..{high}")
    for name in r.extra_args:
        if name in RESERVED_FLAGS:
            raise _fail(where, f"extra_args.{name}", "set by the recipe or the launcher, not here")
    if r.mode == "cluster":
        for name, value in r.env.items():  # the community script word-splits its -e values
            if _CLUSTER_UNSAFE.search(value):
                raise _fail(where, f"env.{name}", "no spaces or * ? [ in cluster mode "
                            "(launch-cluster.sh splits -e values into words)")  # fmt: skip
        if r.local_path and _CLUSTER_UNSAFE.search(r.local_path):
            raise _fail(where, "local_path", "no spaces or * ? [ in cluster mode")
    for name in r.env:
        if _SECRET_ENV.search(name):
            raise _fail(
                where, f"env.{name}", "secrets do not belong in a recipe (GET shows it); "
                "configure them on the host",
            )  # fmt: skip
    if len(set(r.aliases)) != len(r.aliases):
        raise _fail(where, "aliases", "listed twice")
    _check_text(where, "name", r.name, 128)
    if r.notes is not None:
        _check_text(where, "notes", r.notes, MAX_NOTES)


def _check_key(key: object, source: str) -> str:
    try:
        return shellsafe.check_model_key(key, field=f"{source}: models (a key)")
    except shellsafe.UnsafeValue as exc:
        raise UnsafeRecipeValue(exc.message) from exc


def validate_recipe(key: object, raw: object, source: str = REQUEST) -> Recipe:
    """One catalog entry from its raw mapping (YAML or JSON), for the file loader and for POST."""
    checked = _check_key(key, source)
    where = f"{source}: models.{checked}"
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: expected a mapping of recipe fields")
    recipe = _normalise(checked, _decode(raw, where))
    _check_safe(where, recipe)
    _check_knobs(where, recipe)
    return recipe


def vllm_flags(recipe: Recipe) -> list[str]:
    """The recipe's vLLM flags as argv words (unquoted), after the model; the launcher adds
    host, port and the model itself and quotes every word at the sink."""
    argv = ["--served-model-name", recipe.served_name or recipe.name]
    knobs: list[tuple[str, object]] = [
        ("max-model-len", recipe.max_model_len),
        ("gpu-memory-utilization", recipe.gpu_memory_utilization),
        ("max-num-seqs", recipe.max_num_seqs),
        ("dtype", recipe.dtype),
        ("quantization", recipe.quantization),
    ]
    if recipe.tensor_parallel_size > 1:
        knobs.append(("tensor-parallel-size", recipe.tensor_parallel_size))
    for name, value in [*knobs, *recipe.extra_args.items()]:
        if value is None or value is False:
            continue
        argv.append(f"--{name}")
        if value is not True:
            argv.append(shellsafe.check_arg_value(value, field=f"extra_args.{name}"))
    return argv


# --- files -------------------------------------------------------------------------------------


def _read_models(path: Path, *, missing_ok: bool) -> dict[str, Any]:
    """The raw ``models:`` mapping of one file ({} for a missing overrides file)."""
    return read_section(path, "models", missing_ok=missing_ok, error=CatalogError, what="catalog")


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Field-level merge of one override entry over the bundled entry with the same key."""
    merged = dict(base)
    if override.get("repo") is not None:
        merged.pop("local_path", None)
    if override.get("local_path") is not None:
        merged.pop("repo", None)
    merged.update(override)
    return merged


def _check_names(catalog: Catalog, request_key: str | None = None) -> None:
    """A key or alias routes to one entry only. Bundled entries claim names first, then the
    overrides, then an entry sent in a request, so the error names the newer entry."""
    owner: dict[str, str] = {key: key for key in catalog.models}
    rank = {"bundled": 0, "overrides": 1}
    for key in sorted(
        catalog.models, key=lambda k: (2 if k == request_key else rank[catalog.sources[k]], k)
    ):
        for i, alias in enumerate(catalog.models[key].aliases):
            other = owner.setdefault(alias, key)
            if other != key:
                where = REQUEST if key == request_key else catalog.where(key)
                raise CatalogError(
                    f"{where}: models.{key}.aliases[{i}]: already names models.{other}"
                )


def _load(bundled: Path, overrides: Path | None) -> tuple[Catalog, dict[str, Any]]:
    """The merged catalog and the bundled file's raw entries."""
    catalog = Catalog(
        bundled_path=str(bundled), overrides_path=str(overrides) if overrides else None
    )
    raw = _read_models(bundled, missing_ok=False)
    for key, entry in raw.items():
        catalog.models[key] = validate_recipe(key, entry, str(bundled))
        catalog.sources[key] = "bundled"
    for key, entry in (_read_models(overrides, missing_ok=True) if overrides else {}).items():
        if entry is None:  # ``key: null`` hides a bundled entry
            catalog.models.pop(key, None)
            catalog.sources.pop(key, None)
            continue
        merged = _merge(raw.get(key) or {}, entry) if isinstance(entry, Mapping) else entry
        catalog.models[key] = validate_recipe(key, merged, str(overrides))
        catalog.sources[key] = "overrides"
    _check_names(catalog)
    return catalog, raw


def load_catalog(bundled: Path, overrides: Path | None = None) -> Catalog:
    """Bundled file, then the overrides merged over it; raises CatalogError naming file + key."""
    return _load(bundled, overrides)[0]


def current(bundled: Path, overrides: Path | None) -> Catalog:
    """The catalog as the files say now; a broken file is the server's fault (500)."""
    try:
        return load_catalog(bundled, overrides)
    except CatalogError as exc:
        raise BrokenCatalog(exc.message) from exc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock beside ``path``, shared by every process on this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


HEADER = (
    "# User overrides of the model catalog, merged field by field over the bundled models.yaml\n"
    "# (see its header). POST /api/models rewrites this file: comments here are not kept.\n"
)


def save_override(path: Path, key: str, entry: Mapping[str, Any]) -> None:
    """Write (or replace) one key's entry in the overrides file: temp file + os.replace."""
    with _locked(path):
        _save_unlocked(path, key, entry)


def _save_unlocked(path: Path, key: str, entry: Mapping[str, Any]) -> None:
    models = _read_models(path, missing_ok=True)
    models[key] = dict(entry)
    text = yaml.safe_dump(
        {"models": models}, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    _write_atomically(path, HEADER + text)


def _as_written(recipe: Recipe, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the caller set, with their normalised values (null stays null)."""
    values = msgspec.to_builtins(recipe)
    return {f: None if raw[f] is None else values[f] for f in FIELDS if f in raw}


def add_entry(bundled: Path, overrides: Path, key: object, raw: object) -> Catalog:
    """Validate one entry exactly as the reloaded files will see it (merged over a bundled entry
    of the same key), then save it as that key's overrides entry; serialised across processes.
    Returns the catalog including it."""
    checked = _check_key(key, REQUEST)
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{REQUEST}: models.{checked}: expected a mapping of recipe fields")
    try:
        with _locked(overrides):
            try:
                catalog, bundled_raw = _load(bundled, overrides)
            except CatalogError as exc:
                raise BrokenCatalog(exc.message) from exc
            merged = _merge(bundled_raw.get(checked) or {}, raw)
            recipe = validate_recipe(checked, merged, REQUEST)
            catalog.models[checked], catalog.sources[checked] = recipe, "overrides"
            _check_names(catalog, request_key=checked)
            _save_unlocked(overrides, checked, _as_written(recipe, raw))
    except OSError as exc:
        raise CatalogUnwritable(
            f"{overrides}: cannot write the overrides file ({exc.strerror or type(exc).__name__});"
            " set MODELS_OVERRIDES to a writable file"
        ) from exc
    return catalog
