"""The state mirror (app/statemirror.py) follows the spark_state bucket on real NATS: the current
values first (then it is ready), then every put and delete."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from app import contracts as c
from app import statemirror
from app.bus import connect
from app.config import HostConfig
from tests import stack


async def test_mirror_follows_puts_and_deletes(tmp_path: Path, nats_server: Any) -> None:
    host = HostConfig(alias="h1", address="localhost", transport="local")
    settings = stack.make_settings(tmp_path / "data", nats_server.url, [host])
    bus = await connect(settings, name="mirror-test")
    await bus.put_model_state(c.ModelState(host="h1", model="before", since=1.0))
    mirror = statemirror.StateMirror()
    app_state = SimpleNamespace(mirror=mirror)
    assert statemirror.of(app_state) is None  # not ready: callers read the bucket
    task = asyncio.create_task(mirror.follow(bus))
    try:
        await asyncio.wait_for(mirror.ready.wait(), 10)
        assert statemirror.of(app_state) is mirror
        got = mirror.model("h1")
        assert got is not None and got.model == "before"
        assert mirror.host("h1") is None

        await bus.put_host_state(c.HostState(host="h1", up=True, checked_at=2.0))
        await bus.put_model_state(c.ModelState(host="h1", model="after", since=3.0))
        await stack.wait_for(lambda: (m := mirror.model("h1")) and m.model == "after", 5)
        state = mirror.host("h1")
        assert state is not None and state.up is True

        await bus.state.delete(c.model_state_key("h1"))
        await stack.wait_for(lambda: mirror.model("h1") is None, 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()
