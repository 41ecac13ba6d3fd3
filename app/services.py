"""Auxiliary services: containers beside vLLM (speech to text, text to speech, embeddings, a
vector store) declared in the bundled ``services.yaml`` plus a user overrides file.

Layering as in :mod:`app.catalog`: defaults → decode → normalise → validate, errors naming the
file and key path (``services.yaml: services.kokoro.port: expected int, got str``) and never
repeating a refused value. An overrides entry is merged field by field over the bundled entry of
the same name (each field it sets replaces that field as a whole; ``null`` puts a field back to
its default); a new name adds a service; ``name: null`` hides a bundled one.
``DISABLED_SERVICES=a,b`` (or ``disabled: true``) disables by name: listed, never started.

The front resolves a definition and sends it in the ``service`` command; the executor validates
it again (:func:`validate_service`): the bus is a boundary too. Every value that reaches a shell
passes :mod:`app.shellsafe` here and is quoted where the command is built
(:func:`docker_run_argv`). Imports no web framework, so workers load it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from app import shellsafe
from app.contracts import HOST_ALIAS
from app.errors import BadRequest, SparkError
from app.yamlfile import read_section

PACKAGE = Path(__file__).resolve().parent
DEFAULT_HOST = "spark2"
OVERRIDES_FILE = "services.overrides.yaml"
BUNDLED_ENV = ("SPARK_CONTROL_SERVICES_YAML", "SERVICES_YAML")
OVERRIDES_ENV = ("SPARK_CONTROL_SERVICES_OVERRIDES", "SERVICES_OVERRIDES")
DISABLED_ENV = ("SPARK_CONTROL_DISABLED_SERVICES", "DISABLED_SERVICES")
KINDS = ("stt", "tts", "embeddings", "vectordb", "other")
RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
OPS = ("start", "stop", "restart", "status")

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""A service name: one URL path segment and one subject token (no dots)."""
HEALTH_RE = re.compile(r"/[A-Za-z0-9._~/?=&%-]{0,255}")
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|API_KEY|ACCESS_KEY|PRIVATE_KEY|NGC_KEY")
MAX_NOTES = 4000
MAX_WORDS = 64

Source = Literal["bundled", "overrides"]


class ServiceError(BadRequest):
    """A service definition or file is invalid; the message names the file and key."""

    code = "BAD_SERVICE"


class UnsafeServiceValue(ServiceError, shellsafe.UnsafeValue):
    """A value that may not reach a shell (an UnsafeValue that also names the file)."""

    code = "UNSAFE_VALUE"


class BrokenServices(SparkError):
    """A services file on this server does not load: the operator must fix it (500)."""

    code = "BAD_SERVICES"
    status = 500


class Service(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One auxiliary container; see the header of ``services.yaml`` for each field."""

    image: str
    port: int
    kind: Literal["stt", "tts", "embeddings", "vectordb", "other"] = "other"
    host: str = DEFAULT_HOST
    container: str = ""
    container_port: int | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    volumes: list[str] = msgspec.field(default_factory=list)
    gpus: bool = False
    command: list[str] = msgspec.field(default_factory=list)
    health: str = "/health"
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"
    start_timeout_s: int = 300
    disabled: bool = False
    notes: str | None = None


FIELDS: tuple[str, ...] = Service.__struct_fields__


class Services(msgspec.Struct, kw_only=True):
    """The merged declarations, where each came from, and the names disabled by environment."""

    services: dict[str, Service] = msgspec.field(default_factory=dict)
    sources: dict[str, Source] = msgspec.field(default_factory=dict)
    disabled_by_env: frozenset[str] = frozenset()
    bundled_path: str = ""
    overrides_path: str | None = None

    def disabled(self, name: str) -> bool:
        return name in self.disabled_by_env or self.services[name].disabled


# --- where the files are ----------------------------------------------------------------------


def bundled_path() -> Path:
    """``app/services.yaml`` in an installed wheel, else ``services.yaml`` at the checkout root."""
    for candidate in (PACKAGE / "services.yaml", PACKAGE.parent / "services.yaml"):
        if candidate.is_file():
            return candidate
    return PACKAGE.parent / "services.yaml"


def _env(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((v.strip() for n in names if (v := env.get(n, "")).strip()), None)


class HasDataDir(Protocol):
    data_dir: str


def service_paths(settings: HasDataDir, env: Mapping[str, str]) -> tuple[Path, Path]:
    """(bundled, overrides): ``SERVICES_OVERRIDES`` else ``<data_dir>/services.overrides.yaml``;
    ``SPARK_CONTROL_SERVICES_YAML`` replaces the bundled file. Blank counts as unset."""
    bundled = _env(env, BUNDLED_ENV)
    overrides = _env(env, OVERRIDES_ENV)
    return (
        Path(bundled).expanduser() if bundled else bundled_path(),
        Path(overrides).expanduser() if overrides else Path(settings.data_dir) / OVERRIDES_FILE,
    )


def disabled_names(env: Mapping[str, str]) -> frozenset[str]:
    """``DISABLED_SERVICES=a, b`` → {"a", "b"} (blank items ignored)."""
    raw = _env(env, DISABLED_ENV) or ""
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


# --- one definition: decode → normalise → validate --------------------------------------------


def _problem(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's message as (field path, problem), without the offending value."""
    msg, path = str(exc), ""
    if m := re.search(r" - at `key` in `\$\.?(.*)`$", msg):
        return m.group(1), "keys must be strings"
    if m := re.search(r" - at `\$\.?(.*)`$", msg):
        path, msg = m.group(1).replace("[...]", ""), msg[: m.start()]
    if m := re.match(r"Expected `(.+?)`, got `(\w+)`", msg):
        return path, f"expected {m.group(1).removesuffix(' | null')}, got {m.group(2)}"
    if m := re.match(r"Object contains unknown field `([A-Za-z0-9_-]{1,64})`", msg):
        return ".".join(p for p in (path, m.group(1)) if p), "unknown field"
    if msg.startswith("Object contains unknown field"):
        return path, "unknown field"
    if m := re.match(r"Object missing required field `(\w+)`", msg):
        return ".".join(p for p in (path, m.group(1)) if p), "required"
    if msg.startswith("Invalid enum value"):
        choices = {"kind": KINDS, "restart": RESTART_POLICIES}.get(path)
        return path, ("expected one of " + ", ".join(choices)) if choices else "not allowed"
    return path, "invalid value"


def check_name(name: object, source: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UnsafeServiceValue(f"{source}: services (a name): must match {NAME_RE.pattern}")
    return name


def check_volume(spec: object, field: str) -> str:
    """``source:target[:ro|rw]``: source a named volume or an absolute path, target absolute."""
    if not isinstance(spec, str) or spec.count(":") not in (1, 2):
        raise shellsafe.UnsafeValue(f"{field}: must be source:target or source:target:ro")
    source, target, *mode = spec.split(":")
    if source.startswith("/"):
        shellsafe.check_local_path(source, field=f"{field} (source)")
    else:
        shellsafe.check_container(source, field=f"{field} (source, a named volume)")
    shellsafe.check_local_path(target, field=f"{field} (target)")
    if mode and mode[0] not in ("ro", "rw"):
        raise shellsafe.UnsafeValue(f"{field}: the mode must be ro or rw")
    return spec


def check_env(env: Mapping[str, str], where: str) -> None:
    """Names and values through shellsafe; secret-looking names refused (a definition is shown
    by the API, travels in commands and sits in job records)."""
    for name, value in env.items():
        shellsafe.check_env_name(name, field=f"{where}.env")
        shellsafe.check_env_value(value, field=f"{where}.env.{name}")
        if SECRET_ENV.search(name):
            raise ServiceError(
                f"{where}.env.{name}: secrets do not belong in a service definition; "
                "configure them on the host"
            )


def _check_safe(where: str, s: Service) -> None:
    try:
        shellsafe.check_image(s.image, field=f"{where}.image")
        shellsafe.check_container(s.container, field=f"{where}.container")
        shellsafe.check_port(s.port, field=f"{where}.port")
        shellsafe.check_port(s.container_port, field=f"{where}.container_port")
        for i, spec in enumerate(s.volumes):
            check_volume(spec, f"{where}.volumes[{i}]")
        for i, word in enumerate(s.command):  # quoted at the sink, after the image
            shellsafe.check_env_value(word, field=f"{where}.command[{i}]")
        check_env(s.env, where)
    except shellsafe.UnsafeValue as exc:
        raise UnsafeServiceValue(exc.message) from exc
    if not HOST_ALIAS.fullmatch(s.host):
        raise UnsafeServiceValue(f"{where}.host: must be a host alias ({HOST_ALIAS.pattern})")
    if not HEALTH_RE.fullmatch(s.health):
        raise UnsafeServiceValue(f"{where}.health: must be a URL path ({HEALTH_RE.pattern})")


def _check_knobs(where: str, s: Service) -> None:
    if not 0 <= s.start_timeout_s <= 86400:
        raise ServiceError(f"{where}.start_timeout_s: must be 0..86400")
    if len(s.command) > MAX_WORDS:
        raise ServiceError(f"{where}.command: at most {MAX_WORDS} words")
    if len(s.volumes) > MAX_WORDS:
        raise ServiceError(f"{where}.volumes: at most {MAX_WORDS} entries")
    if s.notes is not None and (len(s.notes) > MAX_NOTES or re.search(r"[\x00-\x08\x0b-\x1f]",
                                                                       s.notes)):  # fmt: skip
        raise ServiceError(f"{where}.notes: at most {MAX_NOTES} characters, no control characters")


def validate_service(name: object, raw: object, source: str = "request") -> Service:
    """One service from its raw mapping (YAML or the command's JSON)."""
    checked = check_name(name, source)
    where = f"{source}: services.{checked}"
    if not isinstance(raw, Mapping):
        raise ServiceError(f"{where}: expected a mapping of service fields")
    present = {k: v for k, v in raw.items() if v is not None}  # null → the default
    try:
        service = msgspec.convert(present, type=Service, strict=True)
    except msgspec.ValidationError as exc:
        path, problem = _problem(exc)
        raise ServiceError(f"{where}{'.' + path if path else ''}: {problem}") from exc
    service = msgspec.structs.replace(
        service,
        container=service.container or checked,
        container_port=service.port if service.container_port is None else service.container_port,
    )
    _check_safe(where, service)
    _check_knobs(where, service)
    return service


# --- files -------------------------------------------------------------------------------------


def _read(path: Path, *, missing_ok: bool) -> dict[str, Any]:
    """The raw ``services:`` mapping of one file ({} for a missing overrides file)."""
    return read_section(
        path, "services", missing_ok=missing_ok, error=ServiceError, what="services"
    )


def _check_clashes(found: Services) -> None:
    """Two enabled services of one host may not share a host port or a container name."""
    seen: dict[tuple[str, str, object], str] = {}
    for name in sorted(found.services, key=lambda n: (found.sources[n] == "overrides", n)):
        if found.disabled(name):
            continue
        s = found.services[name]
        where = found.overrides_path if found.sources[name] == "overrides" else found.bundled_path
        for field, value in (("port", s.port), ("container", s.container)):
            other = seen.setdefault((s.host, field, value), name)
            if other != name:
                raise ServiceError(
                    f"{where}: services.{name}.{field}: also used by services.{other} on "
                    f"{s.host} (disable one: DISABLED_SERVICES)"
                )


def load_services(
    bundled: Path, overrides: Path | None = None, disabled: frozenset[str] = frozenset()
) -> Services:
    """Bundled file, then the overrides merged over it; raises ServiceError naming file + key."""
    found = Services(
        disabled_by_env=disabled, bundled_path=str(bundled),
        overrides_path=str(overrides) if overrides else None,
    )  # fmt: skip
    raw = _read(bundled, missing_ok=False)
    for name, entry in raw.items():
        found.services[check_name(name, str(bundled))] = validate_service(name, entry, str(bundled))
        found.sources[name] = "bundled"
    for name, entry in (_read(overrides, missing_ok=True) if overrides else {}).items():
        checked = check_name(name, str(overrides))
        if entry is None:  # ``name: null`` hides a bundled service
            found.services.pop(checked, None)
            found.sources.pop(checked, None)
            continue
        base = raw.get(checked) or {}
        merged = {**base, **entry} if isinstance(entry, Mapping) else entry
        found.services[checked] = validate_service(checked, merged, str(overrides))
        found.sources[checked] = "overrides"
    _check_clashes(found)
    return found


def current(settings: HasDataDir, env: Mapping[str, str]) -> Services:
    """The services as the files and environment say now; a broken file is a 500."""
    try:
        return load_services(*service_paths(settings, env), disabled_names(env))
    except ServiceError as exc:
        raise BrokenServices(exc.message) from exc


# --- what runs on the host --------------------------------------------------------------------


def docker_run_argv(name: str, s: Service) -> list[str]:
    """``docker run -d`` of a (validated) service, as argv words; quoted at the sink."""
    argv = ["docker", "run", "-d", "--name", s.container, "--restart", s.restart,
            "-p", f"{s.port}:{s.container_port}",
            "--label", f"spark-control.service={name}"]  # fmt: skip
    if s.gpus:
        argv += ["--gpus", "all"]
    for spec in s.volumes:
        argv += ["-v", spec]
    for env_name, value in sorted(s.env.items()):
        argv += ["-e", f"{env_name}={value}"]
    return [*argv, s.image, *s.command]


def state_key(host: str, name: str) -> str:
    """Last known status of a service in the ``spark_state`` bucket: ``service.<host>.<name>``."""
    if not HOST_ALIAS.fullmatch(host) or not NAME_RE.fullmatch(name):
        raise BadRequest("bad service state key", code="BAD_KEY")
    return f"service.{host}.{name}"


# --- NVIDIA NIM ---------------------------------------------------------------------------------

NIM_REGISTRY = "nvcr.io"
NIM_PORT = 8000
"""Where a NIM container serves its OpenAI-compatible API."""
NIM_CACHE = "/opt/nim/.cache"
"""Where a NIM keeps downloaded models (the volume's default target)."""
NIM_KEY_ENV = "NGC_API_KEY"


class Nim(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/nim/install`` and the ``nim_install`` command: never the NGC key itself."""

    image: str
    container: str
    port: int
    volume: str | None = None
    """``source`` (mounted at /opt/nim/.cache) or ``source:target[:ro|rw]``."""
    env: dict[str, str] = msgspec.field(default_factory=dict)
    login: bool = True
    """``docker login nvcr.io`` with the key first (false: the host already can pull)."""


def validate_nim(raw: object, source: str = "request") -> Nim:
    if not isinstance(raw, Mapping):
        raise ServiceError(f"{source}: expected a mapping of NIM fields")
    try:
        nim = msgspec.convert(dict(raw), type=Nim, strict=True)
    except msgspec.ValidationError as exc:
        path, problem = _problem(exc)
        raise ServiceError(f"{source}{': ' + path if path else ''}: {problem}") from exc
    if nim.volume is not None and ":" not in nim.volume:
        nim = msgspec.structs.replace(nim, volume=f"{nim.volume}:{NIM_CACHE}")
    try:
        shellsafe.check_image(nim.image, field=f"{source}: image")
        shellsafe.check_container(nim.container, field=f"{source}: container")
        shellsafe.check_port(nim.port, field=f"{source}: port")
        if nim.volume is not None:
            check_volume(nim.volume, f"{source}: volume")
        check_env(nim.env, f"{source}: nim")
    except shellsafe.UnsafeValue as exc:
        raise UnsafeServiceValue(exc.message) from exc
    if not nim.image.startswith(f"{NIM_REGISTRY}/"):
        raise ServiceError(f"{source}: image: a NIM image lives on {NIM_REGISTRY}/")
    return nim


def nim_run_argv(nim: Nim) -> list[str]:
    """``docker run -d`` of a (validated) NIM. ``-e NGC_API_KEY`` has no value: docker copies
    it from its own environment, where the remote shell put it from stdin."""
    argv = ["docker", "run", "-d", "--name", nim.container, "--gpus", "all", "--shm-size", "16g",
            "--restart", "unless-stopped", "-p", f"{nim.port}:{NIM_PORT}",
            "-e", NIM_KEY_ENV, "--label", "spark-control.nim=1"]  # fmt: skip
    if nim.volume:
        argv += ["-v", nim.volume]
    for env_name, value in sorted(nim.env.items()):
        argv += ["-e", f"{env_name}={value}"]
    return [*argv, nim.image]
