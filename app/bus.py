"""NATS connection shared by the web front and the workers: streams, buckets, publishing.

Everything here speaks the contract in ``app.contracts``; nats errors become ``BusUnavailable``.
No web framework is imported, so workers use this module too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from app import contracts as c
from app.config import ConfigError, Settings
from app.errors import BusUnavailable, Conflict

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)


SUBMIT_RETRY_S = 5.0
"""How long a submit retries its command (and its ``accepted`` event) before BUS_UNAVAILABLE:
an HTTP request never waits the whole ``publish_retry_s``."""


@dataclass
class Bus:
    """A connected client with JetStream and the project's buckets."""

    nc: NatsClient
    js: JetStreamContext
    settings: Settings
    kv: dict[str, KeyValue] = field(default_factory=dict)
    publish_retry_s: float = 120.0

    @property
    def jobs(self) -> KeyValue:
        return self.kv[c.JOBS_BUCKET]

    @property
    def state(self) -> KeyValue:
        return self.kv[c.STATE_BUCKET]

    # --- setup ---------------------------------------------------------------------------

    async def ensure(self) -> None:
        """Create (or update) the streams and buckets; safe to run from every process."""
        s = self.settings
        await self._stream(
            StreamConfig(
                name=c.CMD_STREAM,
                subjects=[c.CMD_HOST_WILDCARD],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=s.dedupe_window_s,
                max_msg_size=c.MAX_COMMAND_BYTES,
                num_replicas=s.stream_replicas,
            )
        )
        await self._stream(
            StreamConfig(
                name=c.EVT_STREAM,
                subjects=[c.EVT_WILDCARD],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=s.event_max_age_days * 86400,
                duplicate_window=s.dedupe_window_s,
                num_replicas=s.stream_replicas,
            )
        )
        for bucket in c.BUCKETS:
            # job records expire with their events; the other buckets keep their keys
            ttl = s.event_max_age_days * 86400 if bucket == c.JOBS_BUCKET else None
            try:
                self.kv[bucket] = await self.js.key_value(bucket)
                await self._bucket_in_step(bucket, ttl)
            except nats.js.errors.BucketNotFoundError:
                self.kv[bucket] = await self.js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket,
                        history=1,
                        storage=StorageType.FILE,
                        ttl=ttl,
                        replicas=s.stream_replicas,
                    )
                )

    async def _bucket_in_step(self, bucket: str, ttl: float | None) -> None:
        """An existing bucket follows changed settings (TTL, replicas): its stream is updated."""
        info = await self.js.stream_info(f"KV_{bucket}")
        cfg = info.config
        want_age = ttl or 0.0
        if (cfg.max_age or 0.0) != want_age or (
            cfg.num_replicas or 1
        ) != self.settings.stream_replicas:
            cfg.max_age, cfg.num_replicas = want_age, self.settings.stream_replicas
            await self.js.update_stream(cfg)

    async def _stream(self, config: StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self.js.update_stream(config)  # an older config: bring it up to date

    async def close(self) -> None:
        """Drain (finish in-flight work); if NATS is away, just close."""
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except (TimeoutError, nats.errors.Error):
            await self.nc.close()

    # --- publishing ----------------------------------------------------------------------

    async def publish_command(
        self,
        host: str,
        action: str,
        command: c.Command,
        msg_id: str,
        lock_token: str | None = None,
    ) -> bool:
        """Publish a host command into SPARK_CMD. Returns False when it was a duplicate."""
        headers = {MSG_ID: msg_id}
        if lock_token:
            headers[c.LOCK_TOKEN_HEADER] = lock_token
        ack = await self._js_publish(
            c.cmd_host(host, action), c.encode(command), headers, retry_s=SUBMIT_RETRY_S
        )
        return not ack.duplicate

    async def publish_event(
        self, subject: str, event: c.Event, msg_id: str | None = None, retry_s: float | None = None
    ) -> int:
        """Publish an event and wait for the stream to hold it, riding out a NATS restart
        (retrying up to ``retry_s``, default ``publish_retry_s``).

        ``msg_id`` makes a retried publish idempotent. Returns the stream sequence.
        """
        headers = {MSG_ID: msg_id} if msg_id else None
        wait = self.publish_retry_s if retry_s is None else retry_s
        ack = await self._js_publish(subject, c.encode(event), headers, wait)
        return int(ack.seq)

    async def _js_publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, retry_s: float
    ) -> nats.js.api.PubAck:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_s
        delay = 0.05
        while True:
            try:
                return await self.js.publish(subject, payload, timeout=2.0, headers=headers)
            except RETRYABLE as exc:
                if loop.time() + delay > deadline:
                    raise BusUnavailable("message bus did not acknowledge in time") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # --- jobs ----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> tuple[c.JobRecord, int] | None:
        try:
            entry = await self.jobs.get(c.job_key(job_id))
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return c.decode_job(entry.value), int(entry.revision or 0)

    async def create_job(self, job: c.JobRecord) -> int | None:
        """Create the record; None if one already exists."""
        try:
            return int(await self.jobs.create(c.job_key(job.id), c.encode(job)))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def update_job(self, job: c.JobRecord, revision: int) -> int:
        """Compare-and-set write; Conflict when someone else wrote first."""
        try:
            return int(await self.jobs.update(c.job_key(job.id), c.encode(job), last=revision))
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict("job record changed concurrently") from exc

    async def _job_keys(self) -> list[str]:
        """Every job id in the bucket. Not ``KeyValue.keys()``: under load nats-py can decide
        the bucket is empty when the server has already sent every key but none has been
        handled yet (it compares the consumer's pending count with what it processed)."""
        stream = f"KV_{c.JOBS_BUCKET}"
        if not (await self.js.stream_info(stream)).state.messages:
            return []
        prefix = f"$KV.{c.JOBS_BUCKET}."
        sub = await self.js.subscribe(
            f"{prefix}>", stream=stream, ordered_consumer=True, headers_only=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )  # fmt: skip
        keys: list[str] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=5)
                if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                    keys.append(msg.subject[len(prefix) :])
                if msg.metadata.num_pending == 0:
                    break
        except nats.errors.TimeoutError:
            pass  # what was there expired meanwhile
        finally:
            await sub.unsubscribe()
        return keys

    async def list_jobs(self, limit: int = 200) -> list[c.JobRecord]:
        keys = await self._job_keys()
        found = await asyncio.gather(*(self.get_job(k) for k in keys))
        jobs = [j for j, _ in filter(None, found)]
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        return jobs[:limit]

    async def get_host_state(self, host: str) -> c.HostState | None:
        try:
            entry = await self.state.get(c.host_state_key(host))
        except nats.js.errors.KeyNotFoundError:
            return None
        return c.decode_host_state(entry.value) if entry.value else None

    async def get_model_state(self, host: str) -> c.ModelState | None:
        try:
            entry = await self.state.get(c.model_state_key(host))
        except nats.js.errors.KeyNotFoundError:
            return None
        return msgspec.json.decode(entry.value, type=c.ModelState) if entry.value else None

    async def put_model_state(self, state: c.ModelState) -> None:
        await self.state.put(c.model_state_key(state.host), c.encode(state))

    async def put_host_state(self, state: c.HostState) -> None:
        await self.state.put(c.host_state_key(state.host), c.encode(state))

    async def get_disk_scan(self, host: str) -> dict[str, Any] | None:
        """The last ``scan`` result of a host (workers/scan.py), or None if never scanned."""
        try:
            entry = await self.state.get(c.disk_state_key(host))
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        value = msgspec.json.decode(entry.value)
        return value if isinstance(value, dict) else None

    async def get_vllm_flags(self, host: str) -> frozenset[str]:
        """The flags the host's vLLM reported at its last ``vllm_flags`` (empty if never)."""
        try:
            entry = await self.state.get(c.vllm_flags_key(host))
        except nats.js.errors.KeyNotFoundError:
            return frozenset()
        value = msgspec.json.decode(entry.value) if entry.value else {}
        flags = value.get("flags") if isinstance(value, dict) else None
        return frozenset(f for f in flags or [] if isinstance(f, str))

    async def put_vllm_flags(self, host: str, record: dict[str, Any]) -> None:
        await self.state.put(c.vllm_flags_key(host), c.encode(record))

    async def put_disk_scan(self, host: str, scan: dict[str, Any]) -> None:
        await self.state.put(c.disk_state_key(host), c.encode(scan))

    # --- replay --------------------------------------------------------------------------

    async def open_job_events(self, job_id: str, after_seq: int = 0) -> Any:
        """The subscription ``job_events`` reads (opened ahead to overlap other work)."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after_seq else DeliverPolicy.ALL,
            opt_start_seq=after_seq + 1 if after_seq else None,
        )
        return await self.js.subscribe(
            c.evt_job_filter(job_id), stream=c.EVT_STREAM, ordered_consumer=True, config=config
        )

    async def job_events(
        self,
        job_id: str,
        after_seq: int = 0,
        idle_timeout: float | None = None,
        sub: Any = None,
    ) -> AsyncIterator[tuple[int, c.Event]]:
        """A job's events from the start (or after ``after_seq``), then live, until final."""
        sub = sub or await self.open_job_events(job_id, after_seq)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle_timeout or 3600)
                except nats.errors.TimeoutError:
                    if idle_timeout:
                        return
                    continue
                try:
                    event = c.decode_event(msg.data)
                except msgspec.DecodeError:
                    continue
                yield int(msg.metadata.sequence.stream), event
                if event.kind in c.FINAL_KINDS:
                    return
        finally:
            await sub.unsubscribe()


async def connect(settings: Settings, name: str, url: str | None = None) -> Bus:
    """Connect (retrying while the server starts, up to ``nats_connect_timeout_s``), then
    ensure streams and buckets exist. Unreachable → BusUnavailable, one clear line."""
    server = url or settings.nats_url or "nats://127.0.0.1:4222"
    connect_timeout_s = settings.nats_connect_timeout_s

    async def disconnected() -> None:
        log.info("nats disconnected")

    async def reconnected() -> None:
        log.info("nats reconnected")

    async def error_cb(exc: Exception) -> None:
        log.debug("nats error: %s", exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                [u.strip() for u in server.split(",") if u.strip()], name=name,
                max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                connect_timeout=2, allow_reconnect=True, drain_timeout=5,
                disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error_cb,
                **_auth(settings),
            ),
            connect_timeout_s,
        )  # fmt: skip
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise BusUnavailable(
            f"cannot reach NATS at {_safe_url(server)} within {connect_timeout_s:g} s"
        ) from exc
    bus = Bus(nc=nc, js=nc.jetstream(timeout=5.0), settings=settings)
    try:
        await bus.ensure()
    except nats.js.errors.APIError as exc:
        await nc.close()
        raise ConfigError(
            f"NATS refused the streams/buckets ({exc.description}); check stream_replicas "
            "(more than 1 needs a NATS cluster) and the server's JetStream limits"
        ) from exc
    return bus


def _auth(settings: Settings) -> dict[str, Any]:
    """Credentials and TLS of this process's NATS connection, from the settings."""
    kw: dict[str, Any] = {}
    if settings.nats_user:
        kw["user"], kw["password"] = settings.nats_user, settings.nats_password or ""
    if settings.nats_creds:
        kw["user_credentials"] = settings.nats_creds
    if settings.nats_tls_ca:
        kw["tls"] = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_inbox_prefix:
        kw["inbox_prefix"] = settings.nats_inbox_prefix
    return kw


def _safe_url(url: str) -> str:
    """The URL without credentials, for messages (each of a comma-separated list)."""
    if "," in url:
        return ",".join(_safe_url(u.strip()) for u in url.split(","))
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url.rpartition("@")[2]
