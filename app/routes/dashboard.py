"""The dashboard pages: overview (``/``), connectivity, transfers and settings, each with one SSE
stream of server-rendered fragments (named events the page's ``sse-swap`` elements take).

Streams coalesce: an event marks what it changes, and at most every ``FLUSH_S`` the marked parts
are rendered and sent, so a burst of events costs one render. docs/operations.md, "Dashboard".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import nats.errors
import nats.js.errors
from litestar import Litestar, Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import ServerSentEventMessage, Stream, Template
from markupsafe import Markup

from app import contracts as c
from app import health, jobs, runtime_settings, services, shellsafe, statemirror, swaplock
from app import overview_history as history
from app.bus import Bus
from app.config import HostConfig, Settings
from app.errors import BadRequest, SparkError
from app.routes.deps import bus_of, settings_of
from app.sparkline import outage_bar, sparkline
from app.sse import event_stream, open_job

log = logging.getLogger(__name__)

FLUSH_S = 0.5
"""Longest a change waits before its fragment is sent (bursts coalesce into one render)."""
REFRESH_S = 60.0
"""Everything is re-sent this often anyway (ages, ongoing outages, a lock that expired)."""
TRANSFER_ACTIONS = frozenset({"download", "push", "pull"})
TRANSFERS_SHOWN = 20
CONNECTIVITY_DAYS = 1.0
FORM_LIMIT = 16 * 1024


# --- lifespan: the host history and the runtime settings ---------------------------------------


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Follow an hour of probes into ``app.state.history`` and the runtime settings into
    ``app.state.settings`` (the proxy's queue limit through a listener)."""
    settings: Settings = app.state.settings
    ring = history.History(settings.aliases)
    app.state.history = ring
    feed = asyncio.create_task(history.follow(app.state.bus, ring))
    app.state.mirror = statemirror.StateMirror()
    mirroring = asyncio.create_task(app.state.mirror.follow(app.state.bus))

    def proxy_limit(name: str, value: runtime_settings.Value) -> None:
        proxy = getattr(app.state, "proxy", None)
        if name == "proxy_queue_limit" and proxy is not None:
            proxy.scheduler.limit = int(value)

    try:
        async with runtime_settings.following(app.state.bus, settings, [proxy_limit]) as f:
            app.state.runtime = f
            yield
    finally:
        for task in (feed, mirroring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- shared -----------------------------------------------------------------------------------


def _templates(request: Request[Any, Any, Any], *names: str) -> list[Any]:
    engine = request.app.template_engine
    assert engine is not None
    return [engine.get_template(n) for n in names]


def _one_line(html: str) -> str:
    return html.replace("\n", " ")


async def _subscribe(bus: Bus, subjects: tuple[str, ...], mark: Callable[[str, bytes], None]
                     ) -> list[Any]:  # fmt: skip
    async def on_msg(msg: Any) -> None:
        mark(msg.subject, msg.data)

    return [await bus.nc.subscribe(s, cb=on_msg) for s in subjects]


async def _unsubscribe(subs: list[Any]) -> None:
    for s in subs:
        with contextlib.suppress(nats.errors.Error):
            await s.unsubscribe()


async def _coalesced_until_closed(
    wake: asyncio.Event,
    flush: Callable[[bool], Awaitable[list[ServerSentEventMessage]]],
    subs: list[Any],
) -> AsyncIterator[ServerSentEventMessage]:
    """``_coalesced`` for a page stream, dropping its subscriptions when the client leaves."""
    try:
        async for message in _coalesced(wake, flush):
            yield message
    finally:
        await _unsubscribe(subs)


async def _coalesced(
    wake: asyncio.Event, flush: Callable[[bool], Awaitable[list[ServerSentEventMessage]]]
) -> AsyncIterator[ServerSentEventMessage]:
    """Yield ``flush(everything)`` after each wake (at most every FLUSH_S), and every
    REFRESH_S with ``everything`` True; a comment keeps an idle connection open."""
    loop = asyncio.get_running_loop()
    last_full = loop.time()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), REFRESH_S / 4)
        everything = loop.time() - last_full >= REFRESH_S
        if not wake.is_set() and not everything:
            yield ServerSentEventMessage(comment="keepalive")
            continue
        await asyncio.sleep(FLUSH_S)
        wake.clear()
        if everything:
            last_full = loop.time()
        try:
            messages = await flush(everything)
        except (TimeoutError, nats.errors.Error, SparkError) as exc:  # the bus: next time
            log.warning("dashboard stream: %s", exc)
            continue
        for message in messages:
            yield message


# --- overview ----------------------------------------------------------------------------------


async def _tile(
    bus: Bus, settings: Settings, host: HostConfig, ring: history.History
) -> SimpleNamespace:
    st, model = await asyncio.gather(bus.get_host_state(host.alias),
                                     bus.get_model_state(host.alias))  # fmt: skip
    return _tile_view(settings, host, ring, st, model)


def _tile_view(
    settings: Settings, host: HostConfig, ring: history.History,
    st: c.HostState | None, model: c.ModelState | None,
) -> SimpleNamespace:  # fmt: skip
    now = c.now()
    gap = max(3 * settings.health_poll_s, 60.0)  # a longer silence is a break in the line
    p = st.probe if st is not None else None
    gpu_now = None
    if p is not None:
        utils = [g.utilization_pct for g in p.gpus if g.utilization_pct is not None]
        gpu_now = sum(utils) / len(utils) if utils else None
    return SimpleNamespace(
        alias=host.alias, address=host.address, transport=host.transport, state=st,
        probe=p, model=model, gpu_now=gpu_now, samples=len(ring.rings.get(host.alias, ())),
        mem_spark=_chart(ring, host.alias, "mem_pct", now, gap, "memory"),
        gpu_spark=_chart(ring, host.alias, "gpu_pct", now, gap, "GPU"),
    )  # fmt: skip


def _chart(ring: history.History, alias: str, field: str, now: float, gap: float, what: str
           ) -> Markup:  # fmt: skip
    """The hour's sparkline of one figure, drawn again only when a sample arrived or the
    minute turned (its time axis moves a minute, one column, at a time)."""
    until = math.ceil(now / 60) * 60
    since = until - ring.window_s
    samples = ring.rings.get(alias) or ()
    stamp = (until, gap, len(samples), samples[-1].ts if samples else None)
    hit = ring.charts.get((alias, field))
    if hit is not None and hit[0] == stamp:
        return cast(Markup, hit[1])
    svg = sparkline(ring.series(alias, field, since), since, until, gap_s=gap,
                    label=f"{alias}: {what}, last hour")  # fmt: skip
    ring.charts[(alias, field)] = (stamp, svg)
    return svg


async def _endpoints(
    bus: Bus, settings: Settings, models: dict[str, c.ModelState | None],
    state: State | None = None,
) -> list[dict[str, Any]]:
    """What ``GET /api/endpoints`` says, read concurrently (the model states the tiles already
    hold are reused): the overview's table must not cost a round-trip per host in a row."""
    rows: list[dict[str, Any]] = [
        {"name": c.vllm_endpoint(a), "kind": "llm", "host": a, "disabled": False,
         "model": m.model if m else None}
        for a, m in models.items()
    ]  # fmt: skip
    with contextlib.suppress(SparkError):
        found = await asyncio.to_thread(services.current, settings, os.environ)
        rows += [{"name": n, "kind": svc.kind, "host": svc.host, "model": None,
                  "disabled": found.disabled(n)}
                 for n, svc in sorted(found.services.items())
                 if settings.host(svc.host) is not None]  # fmt: skip
    mirror = statemirror.of(state) if state is not None else None  # live streams read fresh
    if mirror is not None:
        healths = [mirror.endpoint(r["name"]) for r in rows]
    else:
        healths = await asyncio.gather(*(health.get_endpoint(bus, r["name"]) for r in rows))
    for r, h in zip(rows, healths, strict=True):
        r["state"] = "disabled" if r["disabled"] else (h.state if h else "unknown")
        r["since"] = h.since if h else None
    return rows


async def _overview_context(state: State) -> dict[str, Any]:
    bus, settings = bus_of(state), settings_of(state)
    ring: history.History = state.history
    hosts = settings.hosts
    mirror = statemirror.of(state)
    if mirror is not None:  # the bucket in memory: no round-trip per host
        states = [mirror.host(h.alias) for h in hosts]
        models = [mirror.model(h.alias) for h in hosts]
        lock = await swaplock.status(bus)
    else:
        states, models, lock = await asyncio.gather(
            asyncio.gather(*(bus.get_host_state(h.alias) for h in hosts)),
            asyncio.gather(*(bus.get_model_state(h.alias) for h in hosts)),
            swaplock.status(bus),
        )
    tiles = [_tile_view(settings, h, ring, st, m)
             for h, st, m in zip(hosts, states, models, strict=True)]  # fmt: skip
    by_alias = {h.alias: m for h, m in zip(hosts, models, strict=True)}
    return {"tiles": tiles, "endpoints": await _endpoints(bus, settings, by_alias, state),
            "lock": lock}  # fmt: skip


@get("/")
async def overview_page(state: State) -> Template:
    """A tile per host (state, model, memory and GPU with an hour of history, disks), the
    services' health and the swap lock."""
    return Template("overview.html", context=await _overview_context(state))


@get("/overview/stream")
async def overview_stream(state: State, request: Request[Any, Any, Any]) -> Stream:
    """``tile-<alias>`` (a tile's body), ``services`` (the table) and ``lock`` (the banner)."""
    bus, settings = bus_of(state), settings_of(state)
    ring: history.History = state.history
    tile_t, services_t, lock_t = _templates(
        request, "_overview_tile.html", "_services_health.html", "_lock.html"
    )
    dirty: set[str] = set()
    wake = asyncio.Event()
    aliases = set(settings.aliases)

    def mark(subject: str, _: bytes) -> None:
        parts = subject.split(".")
        if len(parts) < 5:
            return
        if parts[2] == "host" and parts[3] in aliases:
            dirty.add(f"tile-{parts[3]}")
            if parts[4] in ("model", "up", "down"):
                dirty.add("services")
        elif parts[2] == "service":
            dirty.add("services")
        elif parts[2] == "lock":
            dirty.add("lock")
        wake.set()

    subs = await _subscribe(bus, (f"{c.ROOT}.evt.host.>", f"{c.ROOT}.evt.service.>"), mark)
    lock_watch = await bus.kv[c.LOCKS_BUCKET].watch(c.SWAP_LOCK_KEY)

    async def on_lock() -> None:
        async for entry in lock_watch:
            if entry is not None:
                mark(f"{c.ROOT}.evt.lock.swap.changed", b"")

    async def flush(everything: bool) -> list[ServerSentEventMessage]:
        if everything:
            dirty.update(f"tile-{a}" for a in aliases)
            dirty.update(("services", "lock"))
        names, out = sorted(dirty), []
        dirty.clear()
        for name in names:
            if name.startswith("tile-"):
                host = settings.host(name[5:])
                if host is None:
                    continue
                html = tile_t.render(t=await _tile(bus, settings, host, ring))
            elif name == "services":
                order = settings.aliases
                models = await asyncio.gather(*(bus.get_model_state(a) for a in order))
                eps = await _endpoints(bus, settings, dict(zip(order, models, strict=True)))
                html = services_t.render(endpoints=eps)
            else:
                html = lock_t.render(lock=await swaplock.status(bus))
            out.append(ServerSentEventMessage(event=name, data=_one_line(html)))
        return out

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        watcher = asyncio.create_task(on_lock())
        try:
            async for message in _coalesced(wake, flush):
                yield message
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await lock_watch.stop()
            await _unsubscribe(subs)

    return event_stream(stream())


@post("/overview/{host:str}/probe", status_code=200)
async def overview_probe(state: State, host: FromPath[str]) -> Template:
    """Probe one host now (read-only): the job's live log in place; the tile follows by itself."""
    job, _ = await jobs.submit(bus_of(state), settings_of(state), host, "probe",
                               requested_by="page")  # fmt: skip
    return Template("_dash_job.html", context={"job": job})


# --- connectivity -------------------------------------------------------------------------------


async def _connectivity_context(state: State) -> dict[str, Any]:
    bus, settings = bus_of(state), settings_of(state)
    data = await health.connectivity(bus, settings, CONNECTIVITY_DAYS)
    since, now = data["since"], data["now"]
    subjects = dict(data["subjects"])
    for alias in settings.aliases:
        subjects.setdefault(f"host.{alias}", {"state": None, "transitions": [], "outages": [],
                                              "reports": []})  # fmt: skip
    rows, transitions, reports = [], [], []
    for key, s in sorted(subjects.items(), key=lambda kv: (not kv[0].startswith("host."), kv[0])):
        outages = s["outages"]
        rows.append(SimpleNamespace(
            key=key, state=s["state"], outages=len(outages),
            down_s=sum(o["duration_s"] or 0 for o in outages),
            ongoing=any(o["ongoing"] for o in outages),
            bar=outage_bar([(o["start"], o["end"]) for o in outages], since, now,
                           label=f"outages of {key}, last 24 h"),
        ))  # fmt: skip
        transitions += [dict(t, subject=key) for t in s["transitions"]]
        reports += [dict(r, subject=key) for r in s["reports"]]
    transitions.sort(key=lambda t: t["ts"], reverse=True)
    reports.sort(key=lambda r: r["ts"], reverse=True)
    return {"rows": rows, "transitions": transitions[:200], "reports": reports[:100],
            "since": since, "now": now}  # fmt: skip


@get("/connectivity")
async def connectivity_page(state: State) -> Template:
    """Outages per host and endpoint over the last 24 h, transitions and client reports."""
    return Template("connectivity.html", context=await _connectivity_context(state))


@get("/connectivity/stream")
async def connectivity_stream(state: State, request: Request[Any, Any, Any]) -> Stream:
    """``connectivity``: the page's body again after a transition or report."""
    bus = bus_of(state)
    (body_t,) = _templates(request, "_connectivity_body.html")
    wake = asyncio.Event()
    subs = await _subscribe(bus, c.CONNECTIVITY_FILTERS, lambda _s, _d: wake.set())

    async def flush(_: bool) -> list[ServerSentEventMessage]:
        html = body_t.render(**await _connectivity_context(state))
        return [ServerSentEventMessage(event="connectivity", data=_one_line(html))]

    return event_stream(_coalesced_until_closed(wake, flush, subs))


# --- transfers ----------------------------------------------------------------------------------


STATE_AFTER = {"accepted": "queued", "started": "running", "done": "succeeded",
               "failed": "failed", "cancelled": "cancelled"}  # fmt: skip
"""A job's state after each kind of its events."""


class Transfer(msgspec.Struct, kw_only=True):
    """One download / push / pull as the page shows it."""

    id: str
    action: str
    host: str
    state: str
    created_at: float
    what: str = ""
    progress: dict[str, Any] = msgspec.field(default_factory=dict)
    message: str | None = None
    error: str | None = None

    @property
    def pct(self) -> float | None:
        total, done = self.progress.get("total"), self.progress.get("bytes")
        if isinstance(total, int | float) and isinstance(done, int | float) and total > 0:
            return min(100.0, 100.0 * done / total)
        return 100.0 if self.state == "succeeded" else None

    def take(self, event: c.Event) -> None:
        """Fold one of the job's events in."""
        self.state = STATE_AFTER.get(event.kind, self.state)
        if event.kind == "progress":
            if isinstance(event.data, dict) and "bytes" in event.data:
                self.progress = dict(event.data)
            self.message = event.message
        if event.kind in ("failed", "cancelled"):
            self.error = event.message or event.code


def _what(job: c.JobRecord) -> str:
    a = job.args
    if job.action == "download":
        return str(a.get("repo", "")) + (f"@{a['revision']}" if a.get("revision") else "")
    if job.action == "push":
        return f"{a.get('path', '')} → {a.get('rel_path', '')}"
    return f"{a.get('rel_path', '')} → {a.get('dest', a.get('path', ''))}"


def _transfer_of(job: c.JobRecord) -> Transfer:
    state = "running" if job.state == "running" else job.state
    return Transfer(id=job.id, action=job.action, host=job.host, state=state,
                    created_at=job.created_at, what=_what(job), error=job.error)  # fmt: skip


async def _last_progress(bus: Bus, t: Transfer) -> None:
    with contextlib.suppress(nats.js.errors.Error, nats.errors.Error, msgspec.DecodeError):
        msg = await bus.js.get_last_msg(c.EVT_STREAM, c.evt_job(t.id, "progress"))
        ev = c.decode_event(msg.data or b"")
        if isinstance(ev.data, dict) and "bytes" in ev.data:
            t.progress, t.message = dict(ev.data), ev.message


async def _transfers(bus: Bus) -> list[Transfer]:
    found = [_transfer_of(j) for j in await bus.list_jobs() if j.action in TRANSFER_ACTIONS]
    shown = found[:TRANSFERS_SHOWN]
    await asyncio.gather(*(_last_progress(bus, t) for t in shown))
    return shown


@get("/transfers")
async def transfers_page(state: State) -> Template:
    """Downloads, pushes and pulls with progress, rate and ETA; a download form."""
    aliases = settings_of(state).aliases
    context = {"transfers": await _transfers(bus_of(state)), "hosts": aliases,
               "host_views": [SimpleNamespace(alias=a) for a in aliases]}  # fmt: skip
    return Template("transfers.html", context=context)


@get("/transfers/stream")
async def transfers_stream(state: State, request: Request[Any, Any, Any]) -> Stream:
    """``transfers``: the list again when a transfer job has an event."""
    bus = bus_of(state)
    (list_t,) = _templates(request, "_transfer_list.html")
    wake = asyncio.Event()
    shown: dict[str, Transfer] = {t.id: t for t in await _transfers(bus)}
    pending: list[c.Event] = []

    def mark(_: str, data: bytes) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            event = c.decode_event(data)
            if event.action in TRANSFER_ACTIONS and event.job_id:
                pending.append(event)
                wake.set()

    subs = await _subscribe(bus, (f"{c.ROOT}.evt.job.>",), mark)

    async def flush(_: bool) -> list[ServerSentEventMessage]:
        events, pending[:] = list(pending), []
        for event in events:
            assert event.job_id is not None
            t = shown.get(event.job_id)
            if t is None:
                got = await bus.get_job(event.job_id)
                if got is None:
                    continue
                t = shown[event.job_id] = _transfer_of(got[0])
            t.take(event)
        items = sorted(shown.values(), key=lambda t: t.created_at, reverse=True)
        html = list_t.render(transfers=items[:TRANSFERS_SHOWN])
        return [ServerSentEventMessage(event="transfers", data=_one_line(html))]

    return event_stream(_coalesced_until_closed(wake, flush, subs))


@get("/transfers/{job_id:str}/stream")
async def transfer_stream(
    state: State, request: Request[Any, Any, Any], job_id: FromPath[str]
) -> Stream:
    """One transfer's progress row after each of its events, then ``end``."""
    bus = bus_of(state)
    sub = await open_job(bus, job_id, 0)
    job = await jobs.get(bus, job_id)
    (row_t,) = _templates(request, "_transfer.html")
    t = _transfer_of(job)

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        async for seq, event in bus.job_events(job_id, 0, sub=sub):
            t.take(event)
            yield ServerSentEventMessage(event="progress", data=_one_line(row_t.render(t=t)),
                                         id=seq)  # fmt: skip
            if event.kind in c.FINAL_KINDS:
                yield ServerSentEventMessage(event="end", data="", id=seq)

    return event_stream(stream())


@post("/transfers/download", status_code=200, request_max_body_size=FORM_LIMIT)
async def transfer_download(state: State, request: Request[Any, Any, Any]) -> Template:
    """Form ``host``, ``repo``, ``revision``: a ``download`` job, its progress in place."""
    form = await request.form()
    fields = {k: v.strip() for k, v in form.items() if isinstance(v, str)}
    repo = shellsafe.check_repo(fields.get("repo", ""))
    args: dict[str, Any] = {"repo": repo}
    if fields.get("revision"):
        args["revision"] = fields["revision"]
    host = fields.get("host", "")
    jobs.check_target(settings_of(state), host, "download")
    job, _ = await jobs.submit(bus_of(state), settings_of(state), host, "download", args,
                               requested_by="page")  # fmt: skip
    return Template("_transfer_panel.html", context={"t": _transfer_of(job)})


# --- settings -----------------------------------------------------------------------------------


def _setting_rows(state: State, stored: dict[str, runtime_settings.Stored]) -> list[Any]:
    follower: runtime_settings.Follower = state.runtime
    settings = settings_of(state)
    return [
        SimpleNamespace(spec=s, base=follower.base[n], stored=stored.get(n),
                        applied=getattr(settings, n))
        for n, s in runtime_settings.SPECS.items()
    ]  # fmt: skip


@get("/settings")
async def settings_page(state: State) -> Template:
    """The runtime settings: file/environment value, the bucket's, and what this replica uses."""
    stored = await runtime_settings.read_all(bus_of(state))
    return Template("settings.html", context={"rows": _setting_rows(state, stored)})


@get("/settings/stream")
async def settings_stream(state: State, request: Request[Any, Any, Any]) -> Stream:
    """``setting-<name>``: a setting's state again when its key in the bucket changes (a Save
    on another page or replica)."""
    bus = bus_of(state)
    (state_t,) = _templates(request, "_setting_state.html")
    dirty: set[str] = set()
    wake = asyncio.Event()
    prefix = f"{c.RUNTIME_KEY_PREFIX}."
    watcher = await bus.kv[c.SETTINGS_BUCKET].watch(f"{prefix}>")

    async def on_change() -> None:
        async for entry in watcher:
            if entry is not None and entry.key.removeprefix(prefix) in runtime_settings.SPECS:
                dirty.add(entry.key.removeprefix(prefix))
                wake.set()

    async def flush(everything: bool) -> list[ServerSentEventMessage]:
        names = set(runtime_settings.SPECS) if everything else set(dirty)
        dirty.clear()
        stored = await runtime_settings.read_all(bus)
        rows = {r.spec.name: r for r in _setting_rows(state, stored)}
        return [ServerSentEventMessage(event=f"setting-{n}",
                                       data=_one_line(state_t.render(r=rows[n])))
                for n in sorted(names)]  # fmt: skip

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        task = asyncio.create_task(on_change())
        try:
            async for message in _coalesced(wake, flush):
                yield message
        finally:
            task.cancel()
            with contextlib.suppress(Exception):
                await watcher.stop()

    return event_stream(stream())


async def _applied(state: State, name: str, want: Any) -> None:
    """Wait (briefly) for this replica's watcher to apply the change, so the page shows it."""
    settings = settings_of(state)
    for _ in range(40):
        if getattr(settings, name) == want:
            return
        await asyncio.sleep(0.05)


async def _setting_result(state: State, name: str, note: str) -> Template:
    stored = await runtime_settings.read_all(bus_of(state))
    row = next(r for r in _setting_rows(state, stored) if r.spec.name == name)
    return Template("_setting_saved.html", context={"r": row, "note": note})


@post("/settings/{name:str}", status_code=200, request_max_body_size=FORM_LIMIT)
async def setting_save(state: State, request: Request[Any, Any, Any], name: FromPath[str]
                       ) -> Template:  # fmt: skip
    """Store one runtime setting (400 BAD_SETTING with the error fragment when invalid)."""
    form = await request.form()
    raw = form.get("value")
    if not isinstance(raw, str):
        raise BadRequest(f"{name[:64]}: value missing", code="BAD_SETTING")
    value = runtime_settings.parse(name, raw)
    await runtime_settings.store(bus_of(state), name, value, by="page")
    await _applied(state, name, value)
    return await _setting_result(state, name, "saved")


@post("/settings/{name:str}/reset", status_code=200)
async def setting_reset(state: State, name: FromPath[str]) -> Template:
    """Drop the stored value: every replica goes back to its file/environment value."""
    await runtime_settings.clear(bus_of(state), name)
    follower: runtime_settings.Follower = state.runtime
    await _applied(state, name, follower.base[name])
    return await _setting_result(state, name, "reset to the file/environment value")


ROUTES = [
    overview_page, overview_stream, overview_probe,
    connectivity_page, connectivity_stream,
    transfers_page, transfers_stream, transfer_stream, transfer_download,
    settings_page, settings_stream, setting_save, setting_reset,
]  # fmt: skip
