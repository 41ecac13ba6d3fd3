"""Server-rendered pages and the HTMX fragments they swap in."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import Redirect, ServerSentEvent, Template

from app import contracts as c
from app import jobs
from app.routes.deps import bus_of, settings_of
from app.sse import job_stream, last_event_id


@get("/")
async def index() -> Redirect:
    return Redirect("/hosts")


@get("/hosts")
async def hosts_page(state: State) -> Template:
    bus, settings = bus_of(state), settings_of(state)
    hosts = [
        SimpleNamespace(
            alias=h.alias,
            address=h.address,
            transport=h.transport,
            state=await bus.get_host_state(h.alias),
        )
        for h in settings.hosts
    ]
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
    state: State, request: Request[Any, Any, Any], job_id: FromPath[str]
) -> ServerSentEvent:
    """The job's events rendered as ``_event.html`` fragments, then an ``end`` event."""
    bus = bus_of(state)
    await jobs.get(bus, job_id)
    template = request.app.template_engine.get_template("_event.html")  # type: ignore[union-attr]

    def render(seq: int, event: c.Event) -> tuple[str, str]:
        return "event", template.render(ev=event, seq=seq).replace("\n", " ")

    after = last_event_id(request.headers.get("last-event-id"))
    return ServerSentEvent(job_stream(bus, job_id, after, render, end_event="end"))


ROUTES = [index, hosts_page, host_action_fragment, jobs_page, job_page, job_fragments]
