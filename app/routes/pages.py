"""Server-rendered pages and the HTMX fragments they swap in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template

from app import contracts as c
from app import jobs
from app.bus import Bus
from app.config import HostConfig
from app.routes.deps import bus_of, settings_of
from app.sse import last_event_id


@get("/")
async def index() -> Redirect:
    return Redirect("/hosts")


@get("/hosts")
async def hosts_page(state: State) -> Template:
    bus, settings = bus_of(state), settings_of(state)
    hosts = [await _host_view(bus, h) for h in settings.hosts]
    workers = await jobs.discover_workers(bus, settings.discovery_window_s)
    status = {"bus_connected": bus.nc.is_connected, "workers": workers}
    return Template("hosts.html", context={"hosts": hosts, "status": status})


@post("/hosts/{host:str}/{action:str}", status_code=200)
async def host_action_fragment(
    state: State, host: FromPath[str], action: FromPath[str]
) -> Template:
    job, _ = await jobs.submit(bus_of(state), settings_of(state), host, action, requested_by="page")
    return Template("_job_panel.html", context={"job": job})


@get("/jobs")
async def jobs_page(state: State) -> Template:
    return Template("jobs.html", context={"jobs": await bus_of(state).list_jobs()})


@get("/jobs/{job_id:str}")
async def job_page(state: State, job_id: FromPath[str]) -> Template:
    return Template("job.html", context={"job": await jobs.get(bus_of(state), job_id)})


@get("/jobs/{job_id:str}/stream")
async def job_fragments(
    state: State,
    request: Request[Any, Any, Any],
    job_id: FromPath[str],
    oob: FromQuery[bool] = False,
) -> ServerSentEvent:
    """The job's events as ``_event.html`` fragments, then an ``end`` event. With ``oob`` (the
    hosts page) the final one also re-renders the job's header and its host's tile in place."""
    bus, settings = bus_of(state), settings_of(state)
    await jobs.get(bus, job_id)
    engine = request.app.template_engine
    assert engine is not None
    event_t, tile_t, head_t = (
        engine.get_template(n) for n in ("_event.html", "_host_tile.html", "_job_head.html")
    )
    after = last_event_id(request.headers.get("last-event-id"))

    async def fragments() -> AsyncIterator[ServerSentEventMessage]:
        async for seq, event in bus.job_events(job_id, after):
            html = event_t.render(ev=event, seq=seq)
            if oob and event.kind in c.FINAL_KINDS:  # the hosts page: refresh head and tile
                job = await jobs.get(bus, job_id)
                html += head_t.render(job=job, oob=True)
                host = settings.host(job.host)
                if host is not None:
                    h = await _host_view(bus, host)
                    html += tile_t.render(h=h, oob=True)
            yield ServerSentEventMessage(data=html.replace("\n", " "), event="event", id=seq)
            if event.kind in c.FINAL_KINDS:
                yield ServerSentEventMessage(data="", event="end", id=seq)

    return ServerSentEvent(fragments())


async def _host_view(bus: Bus, host: HostConfig) -> SimpleNamespace:
    state = await bus.get_host_state(host.alias)
    return SimpleNamespace(
        alias=host.alias, address=host.address, transport=host.transport, state=state
    )


ROUTES = [index, hosts_page, host_action_fragment, jobs_page, job_page, job_fragments]
