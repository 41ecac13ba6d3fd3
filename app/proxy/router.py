"""Where a request goes: a name (``model`` of the request) → an upstream base URL.

Three sources, kept in memory so a lookup is a dict read:

- live placement: ``model.<host>`` in the ``spark_state`` bucket (what the lifecycle put where),
  watched, so a swap anywhere re-routes at once; a recipe's key, served name and aliases all
  route to it (the upstream is sent the served name);
- external upstreams (``SPARK_UPSTREAMS``): each one's ``/v1/models``, polled;
- auxiliary services (``services.yaml``): speech to text, text to speech and embeddings,
  for the routes that name a kind rather than a model.

The catalog is read for aliases and ``on_demand`` when the tables change and at most once a
second on a miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import msgspec
import nats.errors
import nats.js.errors

from app import catalog, services
from app import contracts as c
from app.bus import Bus
from app.config import Settings
from app.errors import SparkError

log = logging.getLogger(__name__)

Source = Literal["state", "upstream", "service"]
CATALOG_MISS_REFRESH_S = 1.0


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """One upstream for one name. ``served`` is the name the upstream knows; ``key`` is the
    catalog key when the lifecycle placed it (on-demand bookkeeping is by key and host)."""

    base_url: str
    served: str
    source: Source
    host: str | None = None
    key: str | None = None
    kind: str = "llm"


def host_base(settings: Settings, host: str, port: int) -> str | None:
    """``http://<address>:<port>`` of a configured host (a local host is 127.0.0.1)."""
    cfg = settings.host(host)
    if cfg is None:
        return None
    address = "127.0.0.1" if cfg.transport == "local" else cfg.address
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"http://{address}:{port}"


def recipe_names(key: str, recipe: dict[str, Any]) -> tuple[str, list[str]]:
    """(served name, every name a client may use) of a recipe as stored in ``ModelState``."""
    served = str(recipe.get("served_name") or key)
    names = [key, served, *(str(a) for a in recipe.get("aliases") or [])]
    return served, list(dict.fromkeys(names))


class Router:
    """The routing table, refreshed from the bus and by polling; reads never wait."""

    def __init__(self, settings: Settings, bus: Bus | None, client: aiohttp.ClientSession):
        self.settings = settings
        self.bus = bus
        self.client = client
        self.live: dict[str, c.ModelState] = {}
        self.external: dict[str, list[str]] = {url: [] for url in settings.upstreams}
        self.catalog = catalog.Catalog()
        self.services = services.Services()
        self.names: dict[str, Target] = {}
        self.kinds: dict[str, Target] = {}
        self.listeners: list[Callable[[], None]] = []
        self._catalog_read_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()

    # --- lookups ------------------------------------------------------------------------

    def resolve(self, name: str) -> Target | None:
        return self.names.get(name)

    def service(self, kind: str) -> Target | None:
        """The first enabled service of ``kind`` (stt, tts, embeddings) on a configured host."""
        return self.kinds.get(kind)

    def recipe(self, name: str) -> tuple[str, catalog.Recipe] | None:
        """(key, recipe) of a catalog key or alias."""
        found = self.catalog.models.get(name)
        if found is not None:
            return name, found
        for key, recipe in self.catalog.models.items():
            if name in recipe.aliases or name == recipe.served_name:
                return key, recipe
        return None

    def current(self, host: str) -> tuple[str | None, float]:
        """(catalog key, since) of what runs on ``host`` now."""
        state = self.live.get(host)
        return (state.model, state.since) if state else (None, 0.0)

    def placed(self, key: str) -> Target | None:
        """The live target of catalog key ``key``, if it runs somewhere."""
        for state in self.live.values():
            if state.model == key:
                return self._state_target(state)
        return None

    def available(self) -> list[str]:
        """Names a client may use now or have loaded on demand, sorted."""
        names = set(self.names)
        names.update(k for k, r in self.catalog.models.items() if r.on_demand)
        return sorted(names)

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models`` entries: every routable name plus the catalog, with state."""
        out: dict[str, dict[str, Any]] = {}
        for name, t in self.names.items():
            out[name] = {
                "id": name, "object": "model", "owned_by": "spark-control", "state": "loaded",
                "host": t.host, "source": t.source, "served_name": t.served,
                "catalog_key": t.key,
            }  # fmt: skip
        for key, recipe in self.catalog.models.items():
            if key in out:
                continue
            out[key] = {
                "id": key, "object": "model", "owned_by": "spark-control",
                "state": "loadable" if recipe.on_demand else "stopped", "host": None,
                "source": "catalog", "served_name": recipe.served_name or key,
                "catalog_key": key, "aliases": list(recipe.aliases),
            }  # fmt: skip
        for kind, t in self.kinds.items():
            out.setdefault(
                t.served,
                {"id": t.served, "object": "model", "owned_by": "spark-control",
                 "state": "service", "host": t.host, "source": "service", "kind": kind},
            )  # fmt: skip
        return [out[k] for k in sorted(out)]

    # --- building the tables ------------------------------------------------------------

    def _state_target(self, state: c.ModelState) -> Target | None:
        if not state.model or not state.port:
            return None
        base = host_base(self.settings, state.host, state.port)
        if base is None:
            return None
        served, _ = recipe_names(state.model, state.recipe)
        return Target(base_url=base, served=served, source="state", host=state.host,
                      key=state.model)  # fmt: skip

    def rebuild(self) -> None:
        """Recompute the name tables from the sources (external first, live placement wins)."""
        names: dict[str, Target] = {}
        for url, served in self.external.items():
            for name in served:
                names.setdefault(name, Target(base_url=url.rstrip("/"), served=name,
                                              source="upstream"))  # fmt: skip
        for state in sorted(self.live.values(), key=lambda s: s.host):
            target = self._state_target(state)
            if target is None or state.model is None:
                continue
            recipe = state.recipe
            known = self.catalog.models.get(state.model)
            if known is not None:  # aliases as the catalog says now
                recipe = {**recipe, "aliases": list(known.aliases)}
            for name in recipe_names(state.model, recipe)[1]:
                names[name] = target
        kinds: dict[str, Target] = {}
        for name, svc in sorted(self.services.services.items()):
            if svc.kind not in ("stt", "tts", "embeddings") or self.services.disabled(name):
                continue
            base = host_base(self.settings, svc.host, svc.port)
            if base is not None and svc.kind not in kinds:
                kinds[svc.kind] = Target(base_url=base, served=name, source="service",
                                         host=svc.host, kind=svc.kind)  # fmt: skip
        self.names, self.kinds = names, kinds
        for listener in self.listeners:
            listener()

    async def read_files(self) -> None:
        """Reload the catalog and the services; a broken file keeps the previous tables."""
        self._catalog_read_at = time.monotonic()
        try:
            paths = catalog.catalog_paths(self.settings, os.environ)
            self.catalog = await asyncio.to_thread(catalog.current, *paths)
        except SparkError as exc:
            log.warning("proxy: catalog not reloaded: %s", exc.message)
        try:
            self.services = await asyncio.to_thread(services.current, self.settings, os.environ)
        except SparkError as exc:
            log.warning("proxy: services not reloaded: %s", exc.message)

    async def refresh_on_miss(self) -> None:
        """A name was not found: reread the files, at most once a second."""
        if time.monotonic() - self._catalog_read_at >= CATALOG_MISS_REFRESH_S:
            await self.read_files()
            self.rebuild()

    def set_state(self, state: c.ModelState) -> None:
        self.live[state.host] = state
        self.rebuild()

    # --- background ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.read_files()
        if self.bus is not None:
            for host in self.settings.aliases:
                with contextlib.suppress(SparkError, nats.errors.Error):
                    state = await self.bus.get_model_state(host)
                    if state is not None:
                        self.live[host] = state
            self._tasks.append(asyncio.create_task(self._watch()))
        self.rebuild()
        if self.settings.upstreams:
            await self.poll_upstreams()
            self._tasks.append(asyncio.create_task(self._poll_loop()))
        self.ready.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _watch(self) -> None:
        """Follow ``model.*`` in the state bucket; a lost watch is re-opened."""
        assert self.bus is not None
        while True:
            try:
                watcher = await self.bus.state.watch("model.*", include_history=False)
                try:
                    async for entry in watcher:
                        if entry is None or not entry.value:
                            continue
                        try:
                            state = msgspec.json.decode(entry.value, type=c.ModelState)
                        except msgspec.MsgspecError:
                            continue
                        if self.settings.host(state.host) is not None:
                            if state.model and state.model not in self.catalog.models:
                                await self.read_files()
                            self.set_state(state)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus went away: try again shortly
                log.info("proxy: state watch interrupted (%s)", type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.upstream_poll_s)
            await self.read_files()
            await self.poll_upstreams()

    async def poll_upstreams(self) -> None:
        """Ask each external upstream its ``/v1/models``; one that does not answer keeps its
        last list (a restart should not 404 every client)."""

        async def one(url: str) -> None:
            try:
                async with self.client.get(
                    f"{url.rstrip('/')}/v1/models", timeout=aiohttp.ClientTimeout(total=5.0)
                ) as r:
                    r.raise_for_status()
                    data = (await r.json(content_type=None)).get("data") or []
                self.external[url] = [str(m["id"]) for m in data if isinstance(m, dict)]
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, AttributeError) as exc:
                log.info("proxy: upstream %s: /v1/models failed (%s)", url, type(exc).__name__)

        await asyncio.gather(*(one(u) for u in self.settings.upstreams))
        self.rebuild()
