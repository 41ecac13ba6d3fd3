"""Model catalog API: the bundled recipes merged with the overrides file; POST adds or overrides
an entry, validated like the files. Read from the files on every request (about 2 ms), so every
web replica sharing the files agrees without a cache to invalidate."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from litestar.response import Response

from app import catalog, jobs, ondisk
from app.errors import BadRequest, NotFound
from app.routes.deps import bus_of, settings_of

BODY_LIMIT = 64 * 1024


class UnknownModel(NotFound):
    code = "UNKNOWN_MODEL"


def _paths(state: State) -> tuple[Path, Path]:
    return catalog.catalog_paths(settings_of(state), os.environ)


@get("/api/models")
async def list_models(state: State) -> list[dict[str, Any]]:
    return (await asyncio.to_thread(catalog.current, *_paths(state))).entries()


@get("/api/models/ondisk")
async def ondisk_models(state: State) -> dict[str, Any]:
    """Models in the hosts' HF caches (their last ``scan``) matched to the catalog:
    ``{"hosts": [...], "models": [...]}`` (see app/ondisk.py); runs no job."""
    bus, settings = bus_of(state), settings_of(state)
    found = await asyncio.to_thread(catalog.current, *_paths(state))
    aliases = settings.aliases
    stored = await asyncio.gather(*(bus.get_disk_scan(alias) for alias in aliases))
    scans = dict(zip(aliases, stored, strict=True))
    return {"hosts": ondisk.hosts_view(aliases, scans), "models": ondisk.match(found, scans)}


@get("/api/models/{key:str}")
async def get_model(state: State, key: FromPath[str]) -> dict[str, Any]:
    found = await asyncio.to_thread(catalog.current, *_paths(state))
    if key not in found.models:
        raise UnknownModel("no such model in the catalog")
    return found.entry(key)


@post("/api/models", status_code=201, request_max_body_size=BODY_LIMIT)
async def add_model(state: State, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Body ``{"key": ..., "recipe": {...}}``; saved as that key's overrides entry."""
    try:
        body = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as exc:
        raise BadRequest("body: not valid JSON", code="BAD_JSON") from exc
    if not isinstance(body, dict) or set(body) != {"key", "recipe"}:
        raise catalog.CatalogError('request: body must be {"key": ..., "recipe": {...}}')
    key, raw = body["key"], body["recipe"]
    found = await asyncio.to_thread(catalog.add_entry, *_paths(state), key, raw)
    return Response(found.entry(key), status_code=201, headers={"location": f"/api/models/{key}"})


@post("/api/models/{key:str}/download", status_code=202, request_max_body_size=BODY_LIMIT)
async def download_model(
    state: State, key: FromPath[str], host: FromQuery[str | None] = None
) -> Any:
    """Download the model's weights to one host (``?host=``; default the first)."""
    settings = settings_of(state)
    recipe = await _recipe(state, key)
    if not recipe.repo:
        raise catalog.CatalogError(
            f"{key}: a local_path model is not downloaded", code="LOCAL_PATH_MODEL"
        )
    job, _ = await jobs.submit(
        bus_of(state), settings, host or settings.aliases[0], "download", {"repo": recipe.repo},
        timeout_s=86400, requested_by="http",
    )  # fmt: skip
    return {"job_id": job.id, "host": job.host, "events": f"/api/jobs/{job.id}/events"}


@delete("/api/models/{key:str}/weights", status_code=202)
async def delete_weights(state: State, key: FromPath[str]) -> Any:
    """Remove the model's weights from every host: one ``delete`` job per host.
    Refused for a ``local_path`` model (its files are the operator's, not a cache)."""
    settings = settings_of(state)
    recipe = await _recipe(state, key)
    if not recipe.repo:
        raise catalog.CatalogError(
            f"{key}: weights of a local_path model are never deleted", code="LOCAL_PATH_MODEL"
        )
    submitted = [
        (await jobs.submit(bus_of(state), settings, alias, "delete", {"repo": recipe.repo},
                           requested_by="http"))[0]
        for alias in settings.aliases
    ]  # fmt: skip
    return {"jobs": [{"job_id": j.id, "host": j.host, "events": f"/api/jobs/{j.id}/events"}
                     for j in submitted]}  # fmt: skip


async def _recipe(state: State, key: str) -> catalog.Recipe:
    found = await asyncio.to_thread(catalog.current, *_paths(state))
    if key not in found.models:
        raise UnknownModel("no such model in the catalog")
    return found.models[key]


ROUTES = [list_models, ondisk_models, get_model, add_model, download_model, delete_weights]
