"""The bus contract: every subject, stream, consumer, bucket and message Struct, in one place.

Workers and other programs import this without the web framework (stdlib + msgspec only).
No other module writes a subject string: they call the builders below, which refuse tokens
that would change a subject's shape (dots, spaces, wildcards).
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

import msgspec

# --- names -------------------------------------------------------------------------------

ROOT = "spark"
CMD_STREAM = "SPARK_CMD"
EVT_STREAM = "SPARK_EVT"
CMD_HOST_WILDCARD = f"{ROOT}.cmd.host.>"  # the only subjects the command stream captures
EVT_WILDCARD = f"{ROOT}.evt.>"

JOBS_BUCKET = "spark_jobs"
STATE_BUCKET = "spark_state"
LOCKS_BUCKET = "spark_locks"
SETTINGS_BUCKET = "spark_settings"
BUCKETS = (JOBS_BUCKET, STATE_BUCKET, LOCKS_BUCKET, SETTINGS_BUCKET)
SWAP_LOCK_KEY = "swap"  # in LOCKS_BUCKET: the swap reservation
SCHEDULE_KEY_PREFIX = "schedule"  # in SETTINGS_BUCKET: ``schedule.<id>``, the job registry

EXECUTOR_SERVICE = "spark-ssh-executor"
SIGNER_SERVICE = "spark-blob-signer"
SIGNER_QUEUE = "spark-blob-signer"
SERVICE_VERSION = "0.1.0"

SRV_PING = "$SRV.PING"
SRV_INFO = "$SRV.INFO"
SRV_STATS = "$SRV.STATS"

ACTIONS = (
    "probe",
    "swap",
    "stop",
    "restart",
    "download",
    "delete",
    "disk",
    "scan",
    "service",
    "nim_install",
    "push",
    "pull",
    "vllm_flags",
)
"""Host actions the executor knows (download/delete/disk: workers/weights.py; scan:
workers/scan.py; push/pull: workers/transfer.py; vllm_flags: workers/vllmflags.py)."""

LOCKED_ACTIONS = frozenset({"swap", "stop", "restart"})
"""Actions that change the served model: refused while the swap lock is held, unless the
command carries the lock's token in the ``LOCK_TOKEN_HEADER`` header."""
LOCK_TOKEN_HEADER = "Spark-Lock-Token"
"""Header of a command message carrying the swap lock's token (never copied into the job
record or any event)."""

JOB_KINDS = ("accepted", "started", "progress", "log", "done", "failed", "cancelled")
FINAL_KINDS = frozenset({"done", "failed", "cancelled"})
HOST_KINDS = ("up", "down", "probed", "model")
SERVICE_KINDS = ("up", "down", "probed", "report", "restart")
"""Kinds of ``spark.evt.service.<endpoint>.<kind>`` (workers/health.py, POST /api/health-event)."""
HOST_REPORT_KIND = "report"
"""A client's report about a host (``spark.evt.host.<host>.report``): recorded, never a state."""
HEALTH_LEADER_KEY = "health"
"""In LOCKS_BUCKET: the health loop's leadership ``{worker, expires_at}``, compare-and-set."""

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

MAX_COMMAND_BYTES = 64 * 1024

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HOST_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class BadToken(ValueError):
    """A value that cannot be one token of a subject."""


def token(value: str, what: str = "token") -> str:
    """Return ``value`` if it is a safe single subject token, else raise BadToken."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise BadToken(f"bad {what}: must match [A-Za-z0-9_-]{{1,64}}")
    return value


def host_alias(value: str) -> str:
    """Return ``value`` if it is a valid host alias (lower-case, starts with a letter)."""
    if not isinstance(value, str) or not HOST_ALIAS.match(value):
        raise BadToken("bad host alias: must match [a-z][a-z0-9_-]{0,31}")
    return value


# --- subject builders --------------------------------------------------------------------


def cmd_host(host: str, action: str) -> str:
    """Command for one host: ``spark.cmd.host.<host>.<action>`` (into SPARK_CMD)."""
    return f"{ROOT}.cmd.host.{host_alias(host)}.{token(action, 'action')}"


def cmd_host_filter(host: str) -> str:
    """Filter of one host's durable consumer."""
    return f"{ROOT}.cmd.host.{host_alias(host)}.>"


def cmd_job_cancel(job_id: str) -> str:
    """Core request/reply (not in a stream): ask the replica running a job to cancel it."""
    return f"{ROOT}.cmd.job.{token(job_id, 'job id')}.cancel"


def evt_job(job_id: str, kind: str) -> str:
    """Event of one job: ``spark.evt.job.<job_id>.<kind>``."""
    return f"{ROOT}.evt.job.{token(job_id, 'job id')}.{token(kind, 'kind')}"


def evt_job_filter(job_id: str) -> str:
    return f"{ROOT}.evt.job.{token(job_id, 'job id')}.>"


def evt_host(host: str, kind: str) -> str:
    """Event of one host: ``spark.evt.host.<host>.<kind>``."""
    return f"{ROOT}.evt.host.{host_alias(host)}.{token(kind, 'kind')}"


def evt_proxy(kind: str) -> str:
    """Events of the /v1 proxy: ``spark.evt.proxy.<kind>`` (``stats``: per-model figures)."""
    return f"{ROOT}.evt.proxy.{token(kind, 'kind')}"


def evt_redaction(kind: str) -> str:
    """Audit events of the redaction gateway (counts only, never a value):
    ``spark.evt.redaction.<kind>`` (``scrub``, ``rehydrate``, ``chat``, ``refused``)."""
    return f"{ROOT}.evt.redaction.{token(kind, 'kind')}"


def evt_service(endpoint: str, kind: str) -> str:
    """Health of one endpoint (a host's vLLM ``vllm-<host>`` or an auxiliary service):
    ``spark.evt.service.<endpoint>.<kind>`` (SERVICE_KINDS)."""
    return f"{ROOT}.evt.service.{token(endpoint, 'endpoint')}.{token(kind, 'kind')}"


def cmd_health_deep(endpoint: str) -> str:
    """Core publish (no reply, not stored): ask the health loop's leader to deep-probe one
    endpoint now (a client's failure report, the proxy seeing an upstream 500)."""
    return f"{ROOT}.cmd.health.deep.{token(endpoint, 'endpoint')}"


HEALTH_DEEP_WILDCARD = f"{ROOT}.cmd.health.deep.*"


CONNECTIVITY_FILTERS = tuple(
    f"{ROOT}.evt.{scope}.*.{kind}"
    for scope in ("host", "service")
    for kind in ("up", "down", HOST_REPORT_KIND)
)
"""What the connectivity history reads from SPARK_EVT: transitions and client reports."""


def vllm_endpoint(host: str) -> str:
    """Endpoint name of a host's vLLM (``vllm-<host>``)."""
    return f"vllm-{host_alias(host)}"


def endpoint_state_key(endpoint: str) -> str:
    """Last health of one endpoint (``spark_state``): ``endpoint.<endpoint>``."""
    return f"endpoint.{token(endpoint, 'endpoint')}"


def blob_sign(namespace: str) -> str:
    """Request/reply of the blob signer for one namespace."""
    return f"{ROOT}.cmd.blob.sign.{token(namespace, 'namespace')}"


BLOB_SIGN_WILDCARD = f"{ROOT}.cmd.blob.sign.*"
BLOB_SIGN_ENDPOINT = "sign"
"""Name of the signer's micro-service endpoint (``$SRV.STATS`` shows it)."""
CHUNK_HEADER = "Spark-Chunk"
"""Reply of the signer: this message's index (0-based). Answers over the server's max payload
are split into several messages on the reply subject; the last carries ``Spark-Chunks`` (how
many) and ``Spark-Bytes`` (the whole body's length). Wire shapes: app/signer/shapes.py."""
CHUNKS_HEADER = "Spark-Chunks"
CHUNK_BYTES_HEADER = "Spark-Bytes"
ANSWER_HEADER = "Spark-Answer"
"""On a request to the signer, ``Spark-Answer: compact`` asks for a multipart answer's compact
form (part-URL template + raw signatures; app/signer/compact.py), which the web front expands;
every message of such an answer carries the same header. Without it the answer is the full
JSON, so other bus clients see no change."""
ANSWER_COMPACT = "compact"


def evt_blob(namespace: str, kind: str) -> str:
    """Audit event of the blob signer: ``spark.evt.blob.<namespace>.<kind>`` (``signed``)."""
    return f"{ROOT}.evt.blob.{token(namespace, 'namespace')}.{token(kind, 'kind')}"


def parse_blob_sign_subject(subject: str) -> str:
    """``spark.cmd.blob.sign.<namespace>`` → namespace; raise BadToken otherwise."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:4] != [ROOT, "cmd", "blob", "sign"]:
        raise BadToken("not a blob sign subject")
    return token(parts[4], "namespace")


def parse_cmd_subject(subject: str) -> tuple[str, str]:
    """``spark.cmd.host.<host>.<action>`` → (host, action); raise BadToken otherwise."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:3] != [ROOT, "cmd", "host"]:
        raise BadToken("not a host command subject")
    return host_alias(parts[3]), token(parts[4], "action")


def host_consumer(host: str) -> str:
    """Durable consumer name of one host (shared by every executor replica)."""
    return f"exec_{host_alias(host)}"


def job_key(job_id: str) -> str:
    return token(job_id, "job id")


def host_state_key(host: str) -> str:
    return f"host.{host_alias(host)}"


def model_state_key(host: str) -> str:
    """What model runs on a host (``spark_state`` bucket)."""
    return f"model.{host_alias(host)}"


def disk_state_key(host: str) -> str:
    """The last ``scan`` of a host's HF cache (``spark_state`` bucket)."""
    return f"disk.{host_alias(host)}"


def vllm_flags_key(host: str) -> str:
    """The flags a host's vLLM image reported (``vllm_flags`` action; ``spark_state``)."""
    return f"vllm_flags.{host_alias(host)}"


def schedule_key(entry_id: str) -> str:
    """Key of one schedule registry entry in SETTINGS_BUCKET."""
    return f"{SCHEDULE_KEY_PREFIX}.{token(entry_id, 'schedule id')}"


RUNTIME_KEY_PREFIX = "runtime"  # in SETTINGS_BUCKET: ``runtime.<setting>``, the /settings page


def runtime_setting_key(name: str) -> str:
    """Key of one runtime setting in SETTINGS_BUCKET (app/runtime_settings.py): every replica
    watches ``runtime.>`` and applies what it finds."""
    return f"{RUNTIME_KEY_PREFIX}.{token(name, 'setting name')}"


def push_state_key(digest: str) -> str:
    """The upload id of an unfinished ``push`` of one object (``spark_state`` bucket), keyed
    by the sha256 hex of ``<namespace>/<key>``."""
    return f"push.{token(digest, 'digest')}"


# --- messages ----------------------------------------------------------------------------


def now() -> float:
    return time.time()


class Command(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``spark.cmd.host.<host>.<action>``. Host and action come from the subject.

    ``job_id`` defaults to the ``Nats-Msg-Id`` header, else one is derived from the stream
    sequence. ``timeout_s`` bounds the whole job.
    """

    job_id: str | None = None
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    requested_by: str | None = None
    timeout_s: float | None = None


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every event on ``spark.evt.>``."""

    kind: str
    ts: float
    job_id: str | None = None
    host: str | None = None
    action: str | None = None
    worker: str | None = None
    message: str | None = None
    line: str | None = None
    stream: str | None = None
    code: str | None = None
    data: Any = None


class JobRecord(msgspec.Struct, kw_only=True, omit_defaults=False):
    """A job in the ``spark_jobs`` bucket, keyed by job id."""

    id: str
    host: str
    action: str
    state: JobState
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    heartbeat_at: float | None = None
    attempts: int = 0
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    requested_by: str | None = None
    result: Any = None
    error: str | None = None
    code: str | None = None


class DiskUsage(msgspec.Struct, kw_only=True):
    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int


class Container(msgspec.Struct, kw_only=True):
    id: str
    name: str
    image: str
    status: str
    ports: str = ""


class Gpu(msgspec.Struct, kw_only=True):
    name: str
    utilization_pct: float | None = None
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class ProbeResult(msgspec.Struct, kw_only=True):
    """What ``probe`` finds on a host. Memory comes from /proc/meminfo (a Spark's GPU shares it)."""

    host: str
    uptime_s: float
    load: tuple[float, float, float]
    mem_total_bytes: int
    mem_available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int
    disks: list[DiskUsage]
    docker: bool
    containers: list[Container]
    gpus: list[Gpu]
    probed_at: float
    duration_ms: float
    sampled_at: float | None = None
    """When disks, containers and GPUs were read: ``probed_at``, or an earlier probe's time
    when they were reused (at most ``probe_max_age_s`` before, nothing changed since)."""


class HostState(msgspec.Struct, kw_only=True):
    """Last known state of a host in the ``spark_state`` bucket."""

    host: str
    up: bool
    checked_at: float
    probe: ProbeResult | None = None
    error: str | None = None


class ModelState(msgspec.Struct, kw_only=True):
    """The model a host serves, as the last swap left it (``model.<host>`` in ``spark_state``).
    ``model`` None: nothing runs (stopped)."""

    host: str
    model: str | None
    recipe: dict[str, Any] = msgspec.field(default_factory=dict)
    container: str | None = None
    port: int | None = None
    since: float = 0.0
    job_id: str | None = None


class ProxyModelStats(msgspec.Struct, kw_only=True):
    """What the /v1 proxy measured for one model since it started (``data`` of a
    ``spark.evt.proxy.stats`` event, keyed by model name)."""

    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    ttfb_ms_p50: float | None = None
    ttfb_ms_p99: float | None = None
    completion_tokens: int = 0
    tokens_per_s: float | None = None
    swaps: int = 0


class DeepProbe(msgspec.Struct, kw_only=True):
    """One synthetic request to an endpoint (workers/health.py): ``state`` is ``ok``, ``idle``
    (no model loaded), ``down`` (no answer), ``failed`` or ``wedged`` (a wedge pattern)."""

    state: str
    at: float
    ms: float
    check: str
    status_code: int | None = None
    error: str | None = None


class EndpointHealth(msgspec.Struct, kw_only=True):
    """Last known health of one endpoint (``endpoint.<name>`` in ``spark_state``), written by
    the health loop's leader. ``state``: ``up``, ``down``, ``idle``, ``wedged``, ``disabled``."""

    name: str
    kind: str
    host: str
    base_url: str | None
    state: str
    checked_at: float
    since: float
    model: str | None = None
    disabled: bool = False
    busy: bool = False
    error: str | None = None
    deep: DeepProbe | None = None
    restarts: list[float] = msgspec.field(default_factory=list)
    """When automatic restarts were asked for (the restart window's worth)."""
    started_at: float | None = None
    """When the endpoint last came up (start-up grace: no restart soon after)."""


def encode(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def decode_command(data: bytes) -> Command:
    """Decode a command body; an empty body is an empty command. Raises msgspec errors."""
    if len(data) > MAX_COMMAND_BYTES:
        raise msgspec.ValidationError(f"command body over {MAX_COMMAND_BYTES} bytes")
    if not data.strip():
        return Command()
    return msgspec.json.decode(data, type=Command)


def decode_event(data: bytes) -> Event:
    return msgspec.json.decode(data, type=Event)


def decode_job(data: bytes) -> JobRecord:
    return msgspec.json.decode(data, type=JobRecord)


def decode_host_state(data: bytes) -> HostState:
    return msgspec.json.decode(data, type=HostState)
