"""Server-rendered pages and the HTMX fragments they swap in."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import jinja2
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEventMessage, Stream, Template

from app import catalog, jobs, services, swaplock
from app import contracts as c
from app.bus import Bus
from app.config import HostConfig
from app.errors import BadRequest
from app.routes import services as services_api
from app.routes import swap
from app.routes.deps import bus_of, settings_of
from app.sse import event_stream, last_event_id, open_job

FORM_LIMIT = 16 * 1024
MODEL_ACTIONS = frozenset({"swap", "stop"})
"""Jobs that change what a host serves: their final event refreshes its current-model line."""


@get("/hosts")
async def hosts_page(state: State) -> Template:
    bus, settings = bus_of(state), settings_of(state)
    hosts = [await _host_view(bus, h) for h in settings.hosts]
    workers = await jobs.discover_workers(bus, settings.discovery_window_s)
    status = {"bus_connected": bus.nc.is_connected, "workers": workers}
    return Template("hosts.html", context={"hosts": hosts, "status": status})


PAGE_ACTIONS = frozenset({"probe", "disk", "scan"})


@post("/hosts/{host:str}/{action:str}", status_code=200)
async def host_action_fragment(
    state: State, host: FromPath[str], action: FromPath[str]
) -> Template:
    """The hosts page's buttons: actions that only read the host (swaps go through /models,
    where the lock token is asked for)."""
    if action not in PAGE_ACTIONS:
        raise BadRequest(f"{action!r} is not run from this page", code="NOT_A_PAGE_ACTION")
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
) -> Stream:
    """The job's events as ``_event.html`` fragments, then an ``end`` event. With ``oob`` the
    final one also re-renders the job's header in place, and what the page that started the
    job shows of its host: the tile (hosts page: probes) or, for a swap or stop (models page),
    the host's current-model line. Only elements that page has, so htmx finds every target."""
    bus, settings = bus_of(state), settings_of(state)
    after = last_event_id(request.headers.get("last-event-id"))
    sub = await open_job(bus, job_id, after)
    engine = request.app.template_engine
    assert engine is not None
    event_t, tile_t, head_t = (
        engine.get_template(n) for n in ("_event.html", "_host_tile.html", "_job_head.html")
    )
    models_t = engine.get_template("models.html")
    services_t = engine.get_template("services.html")

    async def fragments() -> AsyncIterator[ServerSentEventMessage]:
        async for seq, event in bus.job_events(job_id, after, sub=sub):
            html = event_t.render(ev=event, seq=seq)
            if oob and event.kind in c.FINAL_KINDS:  # refresh the head, then tile or model line
                job = await jobs.get(bus, job_id)
                html += head_t.render(job=job, oob=True)
                host = settings.host(job.host)
                if host is not None and job.action in MODEL_ACTIONS:
                    line = await _model_view(bus, host)
                    html += _render_block(models_t, "model_line", h=line, oob=True)
                elif host is not None and job.action == "service":  # services page: its cell
                    name = str(job.args.get("name", ""))
                    st = await services_api.last_status(state, host.alias, name)
                    view = SimpleNamespace(name=name, status=st)
                    html += _render_block(services_t, "status_cell", s=view, oob=True)
                elif host is not None:
                    h = await _host_view(bus, host)
                    html += tile_t.render(h=h, oob=True)
            yield ServerSentEventMessage(data=html.replace("\n", " "), event="event", id=seq)
            if event.kind in c.FINAL_KINDS:
                yield ServerSentEventMessage(data="", event="end", id=seq)

    return event_stream(fragments())


async def _host_view(bus: Bus, host: HostConfig) -> SimpleNamespace:
    state = await bus.get_host_state(host.alias)
    return SimpleNamespace(
        alias=host.alias, address=host.address, transport=host.transport, state=state
    )


# --- models page -------------------------------------------------------------------------------


@get("/models")
async def models_page(state: State) -> Template:
    """The catalog with Check (pre-flight) and Swap per model, and what each host runs now."""
    bus, settings = bus_of(state), settings_of(state)
    paths = catalog.catalog_paths(settings, os.environ)
    found = await asyncio.to_thread(catalog.current, *paths)
    lines = await asyncio.gather(*(_model_view(bus, h) for h in settings.hosts))
    context = {
        "models": [SimpleNamespace(key=k, source=found.sources[k], r=found.models[k])
                   for k in sorted(found.models)],
        "hosts": lines,
        "lock": await swaplock.status(bus),
        "paths": {"bundled": found.bundled_path, "overrides": found.overrides_path},
    }  # fmt: skip
    return Template("models.html", context=context)


@post("/models/{key:str}/validate", status_code=200, request_max_body_size=FORM_LIMIT)
async def model_validate_fragment(
    state: State, request: Request[Any, Any, Any], key: FromPath[str]
) -> Template:
    """The pre-flight of ``key`` on the form's ``host`` (default: the first), as a fragment."""
    form = await _form(request)
    result = await swap.preflight_for(state, key, form.get("host") or None)
    return Template("_preflight.html", context={"pf": result})


@post("/models/{key:str}/swap", status_code=200, request_max_body_size=FORM_LIMIT)
async def model_swap_fragment(
    state: State, request: Request[Any, Any, Any], key: FromPath[str]
) -> Template:
    """``POST /api/swap`` from a form (``host``, optional ``token``): the live job panel."""
    form = await _form(request)
    token = swaplock.check_token(form.get("token"))
    job = await swap.submit_swap(state, key, form.get("host"), token, requested_by="page")
    return Template("_job_panel.html", context={"job": job})


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The text fields of a urlencoded or multipart form, stripped; blank ones left out."""
    form = await request.form()
    fields = {k: v.strip() for k, v in form.items() if isinstance(v, str)}
    return {k: v for k, v in fields.items() if v}


async def _model_view(bus: Bus, host: HostConfig) -> SimpleNamespace:
    return SimpleNamespace(alias=host.alias, model=await bus.get_model_state(host.alias))


def _render_block(template: Any, block: str, **context: Any) -> str:
    """One block of a page on its own (autoescaped like the page), e.g. for an OOB swap."""
    assert isinstance(template, jinja2.Template)
    return "".join(template.blocks[block](template.new_context(context)))


# --- services page and the lock banner ---------------------------------------------------------


@get("/services")
async def services_page(state: State) -> Template:
    """The declared services with Start / Stop / Restart / Status, and the swap-lock banner."""
    bundled, overrides = services.service_paths(settings_of(state), os.environ)
    context = {
        "services": await services_api.service_views(state),
        "lock": await swaplock.status(bus_of(state)),
        "paths": {"bundled": str(bundled), "overrides": str(overrides)},
    }
    return Template("services.html", context=context)


@post("/services/{name:str}/{op:str}", status_code=200)
async def service_op_fragment(state: State, name: FromPath[str], op: FromPath[str]) -> Template:
    """``POST /api/services/{name}/{op}`` from the page: the live job panel (refusals come back
    as the error fragment, with the API's status and code)."""
    job, _ = await services_api.submit_service_op(state, name, op, key=None, requested_by="page")
    return Template("_job_panel.html", context={"job": job})


@post("/lock/release", status_code=200)
async def lock_force_release_fragment(state: State) -> Template:
    """The banner's Force release (the operator's ``DELETE /api/swap/lock?force=true``): the
    banner again, now free."""
    bus = bus_of(state)
    await swaplock.release(bus, None, force=True)
    return Template("_lock.html", context={"lock": await swaplock.status(bus)})


ROUTES = [
    hosts_page, host_action_fragment, jobs_page, job_page, job_fragments,
    models_page, model_validate_fragment, model_swap_fragment,
    services_page, service_op_fragment, lock_force_release_fragment,
]  # fmt: skip
