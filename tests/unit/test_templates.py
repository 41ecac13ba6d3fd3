"""Render every page and fragment with plain Jinja2 and sample data built from the real Structs.

The app registers the real filters (gib, ago, duration, ts); stand-ins with the same names are
enough here. StrictUndefined makes a misspelt field or a missing context variable fail loudly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app.contracts import (
    Container,
    DiskUsage,
    Event,
    Gpu,
    HostState,
    JobRecord,
    ProbeResult,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "app" / "static"

GIB = 1024**3
T0 = 1_700_000_000.0


@dataclass
class HostView:
    """What the hosts route passes per host."""

    alias: str
    address: str
    transport: str
    state: HostState | None


@pytest.fixture(scope="module")
def env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined
    )
    env.filters["gib"] = lambda n: f"{n / GIB:.1f} GiB"
    env.filters["ago"] = lambda t: f"{T0 + 5 - t:.0f} s ago"
    env.filters["duration"] = lambda s: f"{s:.1f} s"
    env.filters["ts"] = lambda t: f"TS{t:.0f}"
    return env


def probe(**over: Any) -> ProbeResult:
    values: dict[str, Any] = {
        "host": "spark1",
        "uptime_s": 3 * 86400 + 4 * 3600,
        "load": (0.5, 1.25, 2.0),
        "mem_total_bytes": 128 * GIB,
        "mem_available_bytes": 100 * GIB,
        "swap_total_bytes": 0,
        "swap_free_bytes": 0,
        "disks": [
            DiskUsage(path="/", total_bytes=1000 * GIB, used_bytes=400 * GIB, free_bytes=600 * GIB)
        ],
        "docker": True,
        "containers": [
            Container(
                id="abc123",
                name="vllm-qwen",
                image="nvcr.io/nvidia/vllm:25.09-py3",
                status="Up 2 hours",
                ports="0.0.0.0:8000->8000/tcp",
            )
        ],
        "gpus": [Gpu(name="NVIDIA GB10", utilization_pct=37.0, temperature_c=51.0)],
        "probed_at": T0,
        "duration_ms": 412.0,
    }
    values.update(over)
    return ProbeResult(**values)


def job(**over: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": "job-7f3a",
        "host": "spark1",
        "action": "probe",
        "state": "queued",
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(over)
    return JobRecord(**values)


STATUS = {
    "bus_connected": True,
    "workers": [
        {"name": "spark-ssh-executor", "id": "w-ssh-1", "version": "0.1.0"},
        {"name": "spark-blob-signer", "id": "w-sign-1", "version": "0.1.0"},
    ],
}


def hosts_sample() -> list[HostView]:
    return [
        HostView(
            alias="spark1",
            address="10.0.0.11",
            transport="ssh",
            state=HostState(host="spark1", up=True, checked_at=T0, probe=probe()),
        ),
        HostView(
            alias="spark2",
            address="10.0.0.12",
            transport="ssh",
            state=HostState(
                host="spark2",
                up=False,
                checked_at=T0 - 60,
                error="connect failed: <script>alert(1)</script>",
            ),
        ),
        HostView(alias="local", address="localhost", transport="local", state=None),
    ]


# --- pages --------------------------------------------------------------------------------


def test_base_loads_vendored_assets_and_nav(env: Environment) -> None:
    html = env.get_template("error.html").render(status=404, error="no such job", code="NOT_FOUND")
    for asset in ("/static/app.css", "/static/htmx.min.js", "/static/htmx-ext-sse.js"):
        assert f'"{asset}"' in html
    assert 'name="viewport"' in html
    assert "spark-control" in html
    assert 'href="/"' in html and 'href="/jobs"' in html
    assert 'hx-headers=\'{"Accept": "text/html"}\'' in html
    assert "//cdn" not in html and "unpkg" not in html


def test_hosts_tiles(env: Environment) -> None:
    html = env.get_template("hosts.html").render(hosts=hosts_sample(), status=STATUS)

    for alias in ("spark1", "spark2", "local"):
        assert f'hx-post="/hosts/{alias}/probe"' in html
        assert f'hx-target="#panel-{alias}"' in html
        assert f'<div id="panel-{alias}"' in html
    assert html.count('hx-swap="innerHTML"') == 3

    # badges: up, down, unknown
    assert '<span class="badge up">up</span>' in html
    assert '<span class="badge down">down</span>' in html
    assert '<span class="badge unknown">unknown</span>' in html

    # the probed host's facts, through the filters
    assert "28.0 GiB / 128.0 GiB" in html
    assert "<meter" in html
    assert "0.50 1.25 2.00" in html
    assert f"{3 * 86400 + 4 * 3600:.1f} s" in html  # uptime via |duration
    assert "vllm-qwen" in html and "nvcr.io/nvidia/vllm:25.09-py3" in html
    assert "0.0.0.0:8000-&gt;8000/tcp" in html
    assert "NVIDIA GB10" in html and "37 %" in html and "n/a" in html  # memory None → n/a
    assert "400.0 GiB" in html and "600.0 GiB" in html
    assert "5 s ago" in html and "TS1700000000" in html
    assert "412 ms" in html
    assert "not probed yet" in html

    # the host error is shown, escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html

    # workers seen, in the footer line
    assert "spark-ssh-executor" in html and "spark-blob-signer" in html
    assert "connected" in html


def test_hosts_without_workers_or_docker(env: Environment) -> None:
    state = HostState(
        host="local",
        up=True,
        checked_at=T0,
        probe=probe(host="local", docker=False, containers=[], gpus=[], disks=[]),
    )
    html = env.get_template("hosts.html").render(
        hosts=[HostView(alias="local", address="localhost", transport="local", state=state)],
        status={"bus_connected": False, "workers": []},
    )
    assert "docker not available" in html
    assert "no GPU reported" in html
    assert "none seen" in html
    assert "disconnected" in html


def test_hosts_empty(env: Environment) -> None:
    html = env.get_template("hosts.html").render(hosts=[], status=STATUS)
    assert "No hosts configured" in html


def test_hosts_nav_marks_current_page(env: Environment) -> None:
    html = env.get_template("hosts.html").render(hosts=[], status=STATUS)
    assert '<a href="/hosts" aria-current="page">Hosts</a>' in html
    assert '<a href="/">Overview</a>' in html  # "/" is the overview now
    html = env.get_template("jobs.html").render(jobs=[])
    assert '<a href="/jobs" aria-current="page">Jobs</a>' in html


def test_job_panel_streams_over_sse(env: Environment) -> None:
    html = env.get_template("_job_panel.html").render(job=job())
    assert 'hx-ext="sse"' in html
    # on the hosts page the stream also refreshes the job header and host tile (oob)
    assert 'sse-connect="/jobs/job-7f3a/stream?oob=1"' in html
    assert 'sse-close="end"' in html
    assert 'sse-swap="event"' in html and 'hx-swap="beforeend"' in html
    assert 'href="/jobs/job-7f3a"' in html
    assert "probe on spark1" in html
    assert "queued" in html
    assert "<html" not in html  # a fragment, not a page


def test_jobs_table(env: Environment) -> None:
    jobs = [
        job(
            id="j2",
            state="succeeded",
            started_at=T0 + 1,
            finished_at=T0 + 3.5,
        ),
        job(id="j1", host="spark2", state="failed", error="boom"),
        job(id="j0", state="running", started_at=T0),
    ]
    html = env.get_template("jobs.html").render(jobs=jobs)
    assert html.index('href="/jobs/j2"') < html.index('href="/jobs/j1"')  # order kept
    assert "state-succeeded" in html and "state-failed" in html
    assert "2.5 s" in html  # finished - started via |duration
    assert "running" in html
    assert "5 s ago" in html
    assert "spark2" in html


def test_jobs_empty(env: Environment) -> None:
    assert "No jobs yet" in env.get_template("jobs.html").render(jobs=[])


def test_job_page(env: Environment) -> None:
    result = msgspec.to_builtins(probe())
    record = job(
        state="failed",
        started_at=T0 + 1,
        finished_at=T0 + 2,
        worker="w-ssh-1",
        error="host said <b>no</b>",
        code="HOST_UNREACHABLE",
        result=result,
        args={"verbose": True},
    )
    html = env.get_template("job.html").render(job=record)
    assert "<title>Job job-7f3a · spark-control</title>" in html
    assert 'sse-connect="/jobs/job-7f3a/stream"' in html
    assert "host said &lt;b&gt;no&lt;/b&gt;" in html
    assert "HOST_UNREACHABLE" in html
    assert "probe ok: mem 28.0/128.0 GiB, 1 container" in html
    assert "vllm-qwen" in html  # the result, as JSON
    assert "verbose=True" in html
    assert "w-ssh-1" in html
    assert html.count("probe on spark1") == 1  # the panel's own header is not repeated


def test_error_page(env: Environment) -> None:
    html = env.get_template("error.html").render(
        status=404, error="unknown host <x>", code="UNKNOWN_HOST"
    )
    assert "404" in html
    assert "unknown host &lt;x&gt;" in html
    assert "UNKNOWN_HOST" in html


# --- event fragment -----------------------------------------------------------------------


def render_event(env: Environment, ev: Event, seq: int = 3) -> str:
    return env.get_template("_event.html").render(ev=ev, seq=seq).strip()


def test_event_is_one_root_element(env: Environment) -> None:
    ev = Event(kind="log", ts=T0, line="hello", stream="stdout", job_id="j1")
    html = render_event(env, ev, seq=42)
    assert html.startswith('<div id="ev-j1-42"')  # unique across several panels on a page
    assert html.endswith("</div>")
    assert html.count("<div") == 1
    assert "\n" not in html  # one line: one SSE data line
    assert "hello" in html and "TS1700000000" in html and ">log<" in html


def test_event_log_line_is_escaped(env: Environment) -> None:
    html = render_event(env, Event(kind="log", ts=T0, line="<script>x()</script>", stream="stderr"))
    assert "&lt;script&gt;x()&lt;/script&gt;" in html
    assert "<script>" not in html
    assert "ev-stderr" in html


def test_event_failed_is_an_error(env: Environment) -> None:
    html = render_event(
        env, Event(kind="failed", ts=T0, message="ssh: connection refused", code="HOST_UNREACHABLE")
    )
    assert "ev-error" in html
    assert "ssh: connection refused" in html and "HOST_UNREACHABLE" in html
    html = render_event(env, Event(kind="cancelled", ts=T0, message="by operator"))
    assert "ev-error" in html
    assert "ev-error" not in render_event(env, Event(kind="started", ts=T0))


def test_event_done_summarises_a_probe(env: Environment) -> None:
    data = msgspec.to_builtins(probe())
    html = render_event(env, Event(kind="done", ts=T0, data=data))
    assert "probe ok: mem 28.0/128.0 GiB, 1 container" in html
    # the same through a JSON round trip, as the SSE route gets it from the bus
    ev = msgspec.json.decode(msgspec.json.encode(Event(kind="done", ts=T0, data=data)), type=Event)
    assert "probe ok:" in render_event(env, ev)


@pytest.mark.parametrize("data", [None, {"other": 1}, [1, 2], "text", {"mem_total_bytes": 1}])
def test_event_done_without_probe_data(env: Environment, data: Any) -> None:
    html = render_event(env, Event(kind="done", ts=T0, data=data))
    assert "probe ok" not in html
    assert ">done<" in html


# --- vendored assets ----------------------------------------------------------------------


def vendored_versions() -> dict[str, str]:
    """Package → version, read from the table in app/static/VENDORED.md."""
    text = (STATIC / "VENDORED.md").read_text()
    return dict(re.findall(r"`(htmx\.org|htmx-ext-sse)@(\d+\.\d+\.\d+)`", text))


def test_vendored_htmx_and_sse_extension() -> None:
    versions = vendored_versions()
    assert versions.keys() == {"htmx.org", "htmx-ext-sse"}
    assert versions["htmx.org"].startswith("2.")
    assert versions["htmx-ext-sse"].startswith("2.")

    htmx = (STATIC / "htmx.min.js").read_text()
    assert htmx.startswith(f"/*! htmx {versions['htmx.org']} ")  # the header line
    assert f'version:"{versions["htmx.org"]}"' in htmx  # htmx.version in the upstream build
    assert "0BSD" in htmx.splitlines()[0]

    sse = (STATIC / "htmx-ext-sse.js").read_text()
    assert sse.startswith(f"/*! htmx-ext-sse {versions['htmx-ext-sse']} ")
    assert "htmx.defineExtension('sse'" in sse
    assert "0BSD" in sse.splitlines()[0]


def test_stylesheet_is_plain_css() -> None:
    css = (STATIC / "app.css").read_text()
    assert "--bg" in css and "prefers-color-scheme: dark" in css
    assert "overflow-x: auto" in css  # tables scroll on a phone
    assert "@import" not in css  # no external fonts or frameworks


def test_templates_never_mark_data_safe() -> None:
    for path in TEMPLATES.glob("*.html"):
        assert "|safe" not in path.read_text().replace(" ", ""), path.name
