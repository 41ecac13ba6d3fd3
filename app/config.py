"""Settings: defaults → settings file (YAML) → environment → validation.

Every setting has an environment name (``SPARK_CONTROL_<KEY>``, plus the earlier dashboard's
names kept working). Errors name the key and where it came from, never a traceback.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from app.access.tokens import ApiToken, normalise, parse_env
from app.contracts import HOST_ALIAS
from app.errors import BadRequest
from app.shellsafe import check_local_path

LOCAL_HOST = "local"
DEFAULT_CLUSTER_SCRIPT = "$HOME/spark-vllm-docker/launch-cluster.sh"
"""The community two-box launcher on the head node; ``$HOME`` is expanded there."""


class ConfigError(Exception):
    """A setting is missing, malformed or unusable; the message names the key."""


class HostConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One GPU host. ``transport: local`` runs commands on this machine without SSH."""

    alias: str = ""
    address: str = ""
    user: str | None = None
    port: int = 22
    transport: Literal["ssh", "local"] = "ssh"
    key_path: str | None = None


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = str(Path("~/.local/share/spark-control").expanduser())
    bind_host: str = "127.0.0.1"
    bind_port: int = 9999
    published_host: str | None = None
    """Where the front is reachable when a container runtime publishes ``bind_host`` elsewhere
    (compose: ``SPARK_PUBLISH_HOST``); the start-up exposure check uses it instead."""
    api_tokens: list[ApiToken] = msgspec.field(default_factory=list)
    """API tokens with scopes (``SPARK_API_TOKENS="name:control+read:token,…"``, or entries
    ``{name, scopes, sha256 | token}`` in the file); kept as SHA-256 digests; secrets."""
    allow_open_lan: bool = False
    """Serve beyond loopback without tokens (``SPARK_ALLOW_OPEN_LAN=1``); a banner on every page."""
    nats_url: str | None = None
    """External NATS (a cluster: its URLs comma-separated); when unset, ``spark-control up``
    starts the embedded server."""
    nats_user: str | None = None
    """NATS user of this process (each part may have its own: deploy/nats.conf)."""
    nats_password: str | None = None
    """Its password; a secret."""
    nats_creds: str | None = None
    """A NATS ``.creds`` file (JWT + nkey seed) instead of user and password."""
    nats_tls_ca: str | None = None
    """CA bundle to verify a ``tls://`` NATS server with."""
    nats_inbox_prefix: str | None = None
    """Reply subjects under this prefix instead of ``_INBOX`` (so permissions can give each user
    its own replies only)."""
    nats_connect_timeout_s: float = 30.0
    """How long a part waits for NATS at start before giving up with a clear message."""
    hosts: list[HostConfig] = msgspec.field(default_factory=list)
    ssh_key_path: str | None = None
    ssh_known_hosts: str = str(Path("~/.ssh/known_hosts").expanduser())
    ssh_connect_timeout_s: float = 10.0
    ssh_keepalive_s: float = 15.0
    command_timeout_s: float = 300.0
    ack_wait_s: float = 30.0
    """How long a job may go without a heartbeat before another replica takes it over."""
    dedupe_window_s: float = 120.0
    event_max_age_days: float = 7.0
    discovery_window_s: float = 0.25
    worker_name: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    webhook_urls: list[str] = msgspec.field(default_factory=list)
    """Where swap outcomes are POSTed (``swap_complete`` / ``swap_failed``), signed."""
    webhook_secret: str | None = None
    """HMAC key of ``X-Spark-Signature``; a secret: never logged or shown."""
    cluster_script: str = DEFAULT_CLUSTER_SCRIPT
    """The head node's two-box launcher (cluster-mode recipes); ``$HOME`` is the host's."""
    stream_replicas: int = 1
    """JetStream replicas of the streams and buckets (3 on a NATS cluster)."""
    probe_max_age_s: float = 2.0
    """A probe reads /proc live every time; its disks, containers and GPUs (each a process
    start on the host: df, docker, nvidia-smi) are reused from a probe at most this old, unless
    a command that may change the host ran since. 0: every probe runs them all."""
    health_poll_s: float = 15.0
    """The health loop: how often every host is probed and every endpoint's health URL read."""
    health_deep_s: float = 300.0
    """How often each endpoint gets a deep probe (vLLM: /v1/models then a 1-token completion;
    speech: a second of silence; embeddings: one short input)."""
    health_timeout_s: float = 60.0
    """Longest wait for one health check or deep probe request."""
    health_leader_ttl_s: float = 15.0
    """Leadership of the health loop (one replica probes): renewed every third of this; another
    replica takes over when it lapses."""
    health_auto_restart: bool = True
    """Restart a wedged endpoint's container (a ``restart`` / ``service`` restart job)."""
    health_restart_max: int = 3
    """At most this many automatic restarts of one endpoint per ``health_restart_window_s``."""
    health_restart_window_s: float = 1800.0
    health_restart_gap_s: float = 120.0
    """At least this long between two automatic restarts of one endpoint."""
    health_restart_grace_s: float = 60.0
    """No automatic restart within this long of an endpoint (or the health loop) starting."""
    hf_token: str | None = None
    """Hugging Face token for ``download`` (gated repos); a secret: it reaches a host only on
    the download's stdin, never in a command line, log, event or job record."""
    ngc_key: str | None = None
    """NVIDIA NGC API key for ``nim_install``; a secret: it reaches a host only on stdin (for
    ``docker login`` and the container's environment), never in a command line, log, event or
    job record."""
    upstreams: list[str] = msgspec.field(default_factory=list)
    """Externally managed OpenAI-compatible servers (``SPARK_UPSTREAMS``): the /v1 proxy asks
    each its ``/v1/models`` and routes the names it reports there."""
    upstream_poll_s: float = 15.0
    """How often the proxy re-reads each external upstream's ``/v1/models``."""
    proxy_timeout_s: float = 1800.0
    """Longest wait for an upstream's next bytes (generation can be slow)."""
    proxy_upload_max_bytes: int = 200 * 1024 * 1024
    """Largest audio upload streamed through ``/v1/audio/transcriptions`` (over it: 413)."""
    proxy_queue_limit: int = 64
    """Requests that may wait for an on-demand swap at once; more get 503 with Retry-After."""
    proxy_min_residency_s: float = 60.0
    """An on-demand model stays at least this long before another may replace it."""
    proxy_max_wait_s: float = 30.0
    """Ageing: a queued model waiting this long stops new requests to the loaded one (which
    drains), so alternating clients batch instead of thrashing."""
    proxy_diarization_url: str | None = None
    """Diarization server for ``/api/audio/transcribe-with-speakers``: takes the multipart
    upload, answers ``{"segments": [{"start", "end", "speaker"}]}``."""
    s3_endpoint_url: str | None = None
    """The blob signer's S3-compatible store; unset means AWS's own endpoint for the region."""
    s3_public_endpoint_url: str | None = None
    """Where clients (GPU hosts, programs) reach the store, when not at ``s3_endpoint_url``:
    presigned URLs carry this host, since the signed Host must be the one the client reaches."""
    s3_region: str = "us-east-1"
    s3_bucket: str | None = None
    """Bucket of ``rel_path`` signing; the signer answers 503 STORE_UNCONFIGURED without it."""
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """``auto``: path-style for a custom endpoint, virtual-hosted for AWS."""
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    """A secret: it stays in the signer process; never logged, shown or sent on the bus."""
    s3_session_token: str | None = None
    signer_tokens: dict[str, str] = msgspec.field(default_factory=dict)
    """Bearer token → namespace for ``POST /api/v1/blob/sign`` (``tokenA=ns-a,tokenB=ns-b``);
    secrets."""
    signer_prefix: str = "projects/{namespace}/"
    """Where a namespace may write: a rel_path must start with this (``{namespace}`` filled)."""
    signer_ttl_s: int = 604_800
    """Lifetime of presigned URLs (the SigV4 maximum, seven days, is also the ceiling)."""
    signer_get_allow: list[str] = msgspec.field(default_factory=list)
    """``s3://bucket/prefix/`` entries a full-``uri`` get may read; empty: none."""
    signer_timeout_s: float = 30.0
    """How long the web front waits for the signer's whole answer."""
    transfer_namespace: str = "fleet"
    """The signer namespace of the dashboard's "copy model to host" (push, then pull)."""
    redaction_map_db: str | None = None
    """SQLite file of the redaction maps (``REDACTION_MAP_DB``); default in ``data_dir``."""
    redaction_key: str | None = None
    """Secret the map's values are encrypted with (AES-GCM, HKDF-derived); unset: a key file
    is made once in ``data_dir``. Never logged or shown."""
    redaction_ttl_s: float = 86400.0
    """A redaction map lives this long after its last scrub, then is purged."""
    redaction_ner_url: str | None = None
    """OpenAI-compatible base URL (``…/v1``) of the NER model; unset: the gateway's own /v1."""
    redaction_ner_model: str | None = None
    """Model asked for names; ``ner: auto`` uses NER only when this is set."""
    redaction_ner_timeout_s: float = 30.0
    redaction_clients: dict[str, str] = msgspec.field(default_factory=dict)
    """Bearer token → redaction policy enforced on that client's /v1 chat (``on`` or a JSON
    object of /scrub's fields; ``SPARK_CONTROL_REDACTION_CLIENTS="tokenA=on"``); secrets."""

    def __repr__(self) -> str:
        """Secrets are masked: a settings object may end up in a log or a traceback."""
        shown = {
            f: ("***" if f in SECRET_FIELDS and getattr(self, f) else getattr(self, f))
            for f in self.__struct_fields__
        }
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def host(self, alias: str) -> HostConfig | None:
        return next((h for h in self.hosts if h.alias == alias), None)

    @property
    def aliases(self) -> list[str]:
        return [h.alias for h in self.hosts]


ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "data_dir": ("SPARK_DATA_DIR",),
    "bind_port": ("BIND_PORT",),
    "bind_host": ("BIND_HOST",),
    "published_host": ("SPARK_PUBLISH_HOST",),
    "api_tokens": ("SPARK_API_TOKENS",),
    "allow_open_lan": ("SPARK_ALLOW_OPEN_LAN",),
    "nats_url": ("NATS_URL",),
    "nats_user": ("NATS_USER",),
    "nats_password": ("NATS_PASSWORD",),
    "nats_creds": ("NATS_CREDS",),
    "nats_tls_ca": ("NATS_CA",),
    "nats_inbox_prefix": ("NATS_INBOX_PREFIX",),
    "ssh_key_path": ("SSH_KEY_PATH",),
    "ssh_known_hosts": ("SSH_KNOWN_HOSTS",),
    "hf_token": ("HF_TOKEN",),
    "ngc_key": ("NGC_API_KEY",),
    "upstreams": ("SPARK_UPSTREAMS",),
    "s3_endpoint_url": ("SPARK_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "s3_public_endpoint_url": ("SPARK_S3_PUBLIC_ENDPOINT_URL",),
    "s3_region": ("SPARK_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    "s3_bucket": ("SPARK_S3_BUCKET",),
    "s3_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "s3_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "s3_session_token": ("AWS_SESSION_TOKEN",),
    "signer_tokens": ("SPARK_SIGNER_TOKENS",),
    "signer_prefix": ("SPARK_SIGNER_PREFIX",),
    "signer_ttl_s": ("SPARK_SIGNER_TTL_S",),
    "signer_get_allow": ("SPARK_SIGNER_GET_ALLOW",),
    "transfer_namespace": ("SPARK_TRANSFER_NAMESPACE",),
    "redaction_map_db": ("REDACTION_MAP_DB",),
    "redaction_key": ("REDACTION_KEY",),
}
"""Earlier or conventional names, read after ``SPARK_CONTROL_<KEY>``."""

LIST_FIELDS = frozenset({"webhook_urls", "upstreams", "signer_get_allow"})
MAP_FIELDS = frozenset({"signer_tokens", "redaction_clients"})
"""Settings given in the environment as ``key=value,key=value``."""
SECRET_FIELDS = frozenset(
    {"webhook_secret", "nats_password", "hf_token", "ngc_key", "s3_secret_access_key",
     "s3_session_token", "signer_tokens", "redaction_key", "redaction_clients", "api_tokens"}
)  # fmt: skip
"""Settings given in the environment as comma-separated lists."""

_LEGACY_HOST = re.compile(r"^SPARK(\d+)_(HOST|USER|PORT)$")


def env_names(field: str) -> tuple[str, ...]:
    return (f"SPARK_CONTROL_{field.upper()}", *ENV_ALIASES.get(field, ()))


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    hosts = data.get("hosts")
    if isinstance(hosts, dict):  # ``hosts: {spark1: {...}}`` is the friendly form
        data["hosts"] = [{"alias": k, **(v or {})} for k, v in hosts.items()]
    return data


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings from the environment; blank values count as unset."""
    out: dict[str, Any] = {}
    for field in Settings.__struct_fields__:
        if field == "hosts":
            continue
        for name in env_names(field):
            value = env.get(name, "").strip()
            if not value:
                continue
            if field == "log_level":
                out[field] = value.lower()
            elif field == "api_tokens":
                try:
                    out[field] = parse_env(value)
                except ValueError as exc:
                    raise ConfigError(f"{name}: {exc}") from exc
            elif field in MAP_FIELDS:
                out[field] = _env_map(name, value)
            elif field in LIST_FIELDS:
                out[field] = [v.strip() for v in value.split(",") if v.strip()]
            else:
                out[field] = value
            break
    return out


def _env_map(name: str, value: str) -> dict[str, str]:
    """``a=x,b=y`` → {a: x, b: y}; a bad entry is named by position, never by its text."""
    out: dict[str, str] = {}
    for i, entry in enumerate(e.strip() for e in value.split(",")):
        key, sep, val = entry.partition("=")
        if not entry:
            continue
        if not sep or not key.strip() or not val.strip():
            raise ConfigError(f"{name}: entry {i + 1}: expected key=value")
        out[key.strip()] = val.strip()
    return out


def _legacy_hosts(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        m = _LEGACY_HOST.match(name)
        if not m or not value.strip():
            continue
        alias = f"spark{int(m.group(1))}"
        key = {"HOST": "address", "USER": "user", "PORT": "port"}[m.group(2)]
        found.setdefault(alias, {"alias": alias})[key] = value.strip()
    return found


def _convert(raw: dict[str, Any], source: str) -> Settings:
    try:
        return msgspec.convert(raw, type=Settings, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says "Expected `int`, got `str` - at `$.bind_port`"; name the key plainly.
        msg = str(exc)
        where = ""
        if " - at `$." in msg:
            msg, _, path = msg.partition(" - at `$.")
            where = path.rstrip("`") + ": "
        raise ConfigError(f"{source}: {where}{msg[:1].lower()}{msg[1:]}") from exc


def _validate(s: Settings, source: str) -> Settings:
    if not 0 <= s.bind_port <= 65535:
        raise ConfigError(f"{source}: bind_port: must be 0..65535")
    seen: set[str] = set()
    for i, h in enumerate(s.hosts):
        if not HOST_ALIAS.match(h.alias):
            raise ConfigError(
                f"{source}: hosts[{i}].alias: {h.alias!r} must match [a-z][a-z0-9_-]{{0,31}}"
            )
        if h.alias in seen:
            raise ConfigError(f"{source}: hosts.{h.alias}: defined twice")
        seen.add(h.alias)
        if h.transport == "ssh":
            if not h.address:
                raise ConfigError(f"{source}: hosts.{h.alias}.address: required for ssh")
            if not h.user:
                raise ConfigError(f"{source}: hosts.{h.alias}.user: required (no default user)")
            if not 1 <= h.port <= 65535:
                raise ConfigError(f"{source}: hosts.{h.alias}.port: must be 1..65535")
    for i, url in enumerate(s.webhook_urls):
        if not url.startswith(("http://", "https://")) or any(ch.isspace() for ch in url):
            raise ConfigError(f"{source}: webhook_urls[{i}]: must be an http(s) URL")
    if s.webhook_urls and not s.webhook_secret:
        raise ConfigError(f"{source}: webhook_secret: required when webhook_urls are set")
    if s.cluster_script != DEFAULT_CLUSTER_SCRIPT:
        try:
            check_local_path(s.cluster_script, field="cluster_script")
        except BadRequest as exc:
            raise ConfigError(f"{source}: {exc.message}") from exc
    for i, url in enumerate(s.upstreams):
        if not url.startswith(("http://", "https://")) or any(ch.isspace() for ch in url):
            raise ConfigError(f"{source}: upstreams[{i}]: must be an http(s) URL")
    if s.proxy_diarization_url and not s.proxy_diarization_url.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: proxy_diarization_url: must be an http(s) URL")
    if s.proxy_queue_limit < 0:
        raise ConfigError(f"{source}: proxy_queue_limit: must be >= 0")
    _validate_signer(s, source)
    try:
        s.api_tokens = normalise(s.api_tokens)  # plain tokens hashed, then dropped
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    if s.redaction_ner_url and not s.redaction_ner_url.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: redaction_ner_url: must be an http(s) URL")
    for name in ("redaction_ttl_s", "redaction_ner_timeout_s"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{source}: {name}: must be > 0")
    for i, policy in enumerate(s.redaction_clients.values()):
        if policy.strip() != "on" and not policy.strip().startswith("{"):
            raise ConfigError(
                f"{source}: redaction_clients[{i + 1}]: must be 'on' or a JSON object"
            )
    for name in ("health_restart_max", "health_restart_gap_s", "health_restart_grace_s"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{source}: {name}: must be >= 0")
    if not 1 <= s.stream_replicas <= 5:
        raise ConfigError(f"{source}: stream_replicas: must be 1..5")
    for name in (
        "ssh_connect_timeout_s",
        "command_timeout_s",
        "ack_wait_s",
        "dedupe_window_s",
        "event_max_age_days",
        "upstream_poll_s",
        "proxy_timeout_s",
        "proxy_upload_max_bytes",
        "health_poll_s",
        "health_deep_s",
        "health_timeout_s",
        "health_leader_ttl_s",
        "health_restart_window_s",
    ):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{source}: {name}: must be > 0")
    return s


def _validate_signer(s: Settings, source: str) -> None:
    for i, namespace in enumerate(s.signer_tokens.values()):
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", namespace):
            raise ConfigError(
                f"{source}: signer_tokens[{i + 1}]: namespace must match [A-Za-z0-9_-]{{1,64}}"
            )
    if "{namespace}" not in s.signer_prefix or not s.signer_prefix.endswith("/"):
        raise ConfigError(f"{source}: signer_prefix: must contain {{namespace}} and end with '/'")
    if not 1 <= s.signer_ttl_s <= 604_800:
        raise ConfigError(f"{source}: signer_ttl_s: must be 1..604800")
    for i, entry in enumerate(s.signer_get_allow):
        if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S*", entry):
            raise ConfigError(f"{source}: signer_get_allow[{i}]: must be s3://bucket/prefix")
    for name in ("s3_endpoint_url", "s3_public_endpoint_url"):
        url = getattr(s, name)
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{source}: {name}: must be an http(s) URL")
    if s.signer_timeout_s <= 0:
        raise ConfigError(f"{source}: signer_timeout_s: must be > 0")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", s.transfer_namespace):
        raise ConfigError(f"{source}: transfer_namespace: must match [A-Za-z0-9_-]{{1,64}}")


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from an optional YAML file and the environment."""
    env = os.environ if env is None else env
    path = path or env.get("SPARK_CONTROL_CONFIG") or None
    raw: dict[str, Any] = _read_file(path) if path else {}
    from_env = _env_layer(env)
    raw.update(from_env)
    source = path or "environment"
    if path and from_env:
        source = f"{path} (with environment overrides)"
    hosts = {h.get("alias", ""): dict(h) for h in raw.get("hosts", []) if isinstance(h, dict)}
    legacy = _legacy_hosts(env)
    if path and legacy and not from_env:
        source = f"{path} (with environment overrides)"
    for alias, values in legacy.items():
        hosts.setdefault(alias, {}).update(values)
    raw["hosts"] = list(hosts.values())
    settings = _validate(_convert(raw, source), source)
    if not settings.hosts:
        settings.hosts = [HostConfig(alias=LOCAL_HOST, address="localhost", transport="local")]
    settings.data_dir = str(Path(settings.data_dir).expanduser())
    settings.ssh_known_hosts = str(Path(settings.ssh_known_hosts).expanduser())
    if settings.ssh_key_path:
        settings.ssh_key_path = str(Path(settings.ssh_key_path).expanduser())
    return settings


def ensure_data_dir(settings: Settings) -> Path:
    """Create the data dir if missing and prove it writable; a clear ConfigError otherwise."""
    path = Path(settings.data_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"data_dir: {path} is not a writable folder ({exc.strerror}); "
            "set SPARK_DATA_DIR to a folder this user can write"
        ) from exc
    return path
