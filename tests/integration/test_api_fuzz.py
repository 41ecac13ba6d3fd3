"""schemathesis against the web front's own OpenAPI document: generated requests for every
operation (streams aside) get no 5xx, only documented status codes and content types, and
bodies that match the documented schemas (the JSON error body included).

The front runs as a process on a real NATS with no executor, so commands are queued and never
run: this is about the HTTP layer. Request bodies are documented loosely (handlers read and
validate them with the app's own decoders, whose rules are richer than a schema says and are
tested on their own), so schemathesis's "schema-valid request accepted" check is left out."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as sc

from app.config import HostConfig
from tests import stack
from tests.servers import NatsServer, free_port

EXAMPLES = 8
SKIP = re.compile(r"(/stream|/events)$")  # server-sent events do not end


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    nats = NatsServer(root / "nats").start()
    port = free_port()
    host = HostConfig(alias="local", address="localhost", transport="local")
    config = stack.write_config(
        stack.make_settings(root / "data", nats.url, [host], bind_port=port, log_level="error"),
        root / "settings.yaml",
    )
    proc: subprocess.Popen[bytes] = stack.part_process(config, "web")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/status", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "web front did not start"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        nats.stop()


def test_every_operation_answers_as_documented(front: str) -> None:
    schema = schemathesis.openapi.from_url(f"{front}/schema/openapi.json")
    failures: dict[str, str] = {}
    tried = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if SKIP.search(op.path):
            continue
        tried += 1

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=op.as_strategy())
        def check(case: Any) -> None:
            case.call_and_validate(timeout=20, excluded_checks=[sc.positive_data_acceptance])

        try:
            check()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            lines = [s for s in str(exc).splitlines() if s.strip()][:8]
            failures[f"{op.method.upper()} {op.path}"] = " / ".join(lines)[:500]
    assert tried > 40  # the whole API was covered
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
