"""The dashboard's pure parts: the SVG sparkline and outage bar, the overview's host history
ring, and the runtime settings' validation and live application (no server)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app import filters
from app import overview_history as history
from app import runtime_settings as rs
from app.config import Settings
from app.errors import BadRequest
from app.routes.dashboard import Transfer
from app.sparkline import bucketed, outage_bar, segments, sparkline


def _points(svg: str) -> list[list[tuple[float, float]]]:
    return [
        [tuple(map(float, p.split(","))) for p in m.split()]  # type: ignore[misc]
        for m in re.findall(r'<polyline points="([^"]*)"', svg)
    ]


def test_sparkline_scales_time_and_value_into_the_box() -> None:
    svg = str(sparkline([(0, 0.0), (50, 50.0), (100, 100.0)], 0, 100, gap_s=60))
    assert svg.startswith('<svg class="spark"') and 'viewBox="0 0 120 28"' in svg
    [line] = _points(svg)
    assert [x for x, _ in line] == [0, 60, 120]
    ys = [y for _, y in line]
    assert ys[0] == pytest.approx(26.5) and ys[2] == pytest.approx(1.5) and ys[0] > ys[1] > ys[2]


def test_sparkline_clamps_values_and_drops_samples_outside_the_window() -> None:
    svg = str(sparkline([(-10, 50.0), (10, -20.0), (20, 500.0), (200, 1.0)], 0, 100))
    [line] = _points(svg)
    assert len(line) == 2  # -10 and 200 are outside
    assert line[0][1] == pytest.approx(26.5) and line[1][1] == pytest.approx(1.5)


def test_sparkline_breaks_at_gaps_and_missing_values_single_samples_are_dots() -> None:
    samples = [(0, 10.0), (10, 20.0), (500, 30.0), (510, None), (520, 40.0), (530, 50.0)]
    assert [len(r) for r in segments(samples, gap_s=60)] == [2, 1, 2]
    svg = str(sparkline(samples, 0, 600, gap_s=60))
    assert len(_points(svg)) == 2 and svg.count("<circle") == 1


def test_sparkline_draws_at_most_one_point_per_column_averaging_each() -> None:
    samples = [(float(t), float(t % 2) * 100) for t in range(3600)]  # a 1 s poll, 0/100/0/…
    assert bucketed(samples, 0, 3600, 60)[0] == (29.5, 50.0)
    svg = str(sparkline(samples, 0, 3600))
    [line] = _points(svg)
    assert len(line) == 60 and {y for _, y in line} == {14.0}  # every slot averages 50 %
    assert bucketed([(1.0, None), (2.0, None)], 0, 60, 6) == [(1.5, None)]


def test_sparkline_empty_and_label_escaped() -> None:
    svg = str(sparkline([], 0, 3600, label='<b>"x"</b>'))
    assert "spark-empty" in svg and "<polyline" not in svg and "<circle" not in svg
    assert "<b>" not in svg and "&lt;b&gt;" in svg


def test_outage_bar_draws_short_and_ongoing_outages() -> None:
    svg = str(outage_bar([(100.0, 100.5), (900.0, None), (-50.0, -10.0)], 0, 1000, width=1000))
    rects = re.findall(r'<rect class="down" x="([\d.]+)" y="0" width="([\d.]+)"', svg)
    assert len(rects) == 2  # the one before the window is left out
    assert float(rects[0][1]) == 2.0  # half a second is still 2 units wide
    assert float(rects[1][0]) == 900 and float(rects[1][1]) == 100  # ongoing: to the end


def test_history_ring_is_bounded_by_time_and_count_and_ignores_unknown_hosts() -> None:
    h = history.History(["a"], window_s=100)
    probe = {"mem_total_bytes": 200, "mem_available_bytes": 50,
             "gpus": [{"utilization_pct": 10}, {"utilization_pct": 30}, {"name": "x"}]}  # fmt: skip
    s = history.sample_of(probe, 1.0)
    assert s is not None and s.mem_pct == 75.0 and s.gpu_pct == 20.0
    assert history.sample_of("nope", 1.0) is None
    assert history.sample_of({"gpus": []}, 1.0) == history.Sample(
        ts=1.0, mem_pct=None, gpu_pct=None
    )
    assert not h.add("b", s)
    for t in range(0, 300, 10):
        h.add("a", history.Sample(ts=float(t), mem_pct=1.0, gpu_pct=None))
    assert not h.add("a", history.Sample(ts=5.0, mem_pct=1.0, gpu_pct=None))  # out of order
    assert [t for t, _ in h.series("a", "mem_pct", 0)] == [float(t) for t in range(190, 300, 10)]
    big = history.History(["a"], window_s=1e9)
    for t in range(history.MAX_SAMPLES + 50):
        big.add("a", history.Sample(ts=float(t), mem_pct=1.0, gpu_pct=2.0))
    assert len(big.rings["a"]) == history.MAX_SAMPLES


@pytest.mark.parametrize(
    ("name", "raw", "want"),
    [
        ("health_poll_s", "7", 7.0),
        ("health_poll_s", " 2.5 ", 2.5),
        ("health_restart_max", "3", 3),
        ("health_restart_max", "3.0", 3),
        ("health_auto_restart", "false", False),
        ("health_auto_restart", "On", True),
        ("proxy_queue_limit", "0", 0),
    ],
)
def test_settings_parse_accepts(name: str, raw: str, want: object) -> None:
    got = rs.parse(name, raw)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("health_poll_s", "0.5", "health_poll_s: must be 1..3600 s"),
        ("health_poll_s", "abc", "health_poll_s: expected a number"),
        ("health_poll_s", "inf", "health_poll_s: expected a number"),
        ("health_poll_s", "", "health_poll_s: expected a number"),
        ("health_restart_max", "1.5", "health_restart_max: expected a whole number"),
        ("health_restart_max", "-1", "health_restart_max: must be 0..100"),
        ("health_auto_restart", "maybe", "health_auto_restart: expected true or false"),
        ("proxy_queue_limit", True, "proxy_queue_limit: expected a number"),
        ("bind_port", "80", "'bind_port' is not a runtime setting"),
        ("x" * 500, "1", "is not a runtime setting"),
    ],
)
def test_settings_parse_refuses_with_a_message_naming_the_setting(
    name: str, raw: object, message: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        rs.parse(name, raw)
    assert message in caught.value.message and caught.value.status == 400
    assert len(caught.value.message) < 120


def test_settings_specs_are_real_settings_with_sane_defaults() -> None:
    defaults = Settings()
    for name, spec in rs.SPECS.items():
        value = getattr(defaults, name)
        assert rs.parse(name, value) == value, name  # the default passes its own check
        assert spec.doc and spec.reader


def test_follower_applies_and_reverts_and_tells_listeners() -> None:
    settings = Settings(health_poll_s=15.0, proxy_queue_limit=64)
    seen: list[tuple[str, object]] = []
    f = rs.Follower(settings, [lambda n, v: seen.append((n, v))])
    f.apply("health_poll_s", rs.Stored(value=5.0))
    f.apply("proxy_queue_limit", rs.Stored(value=3))
    assert settings.health_poll_s == 5.0 and settings.proxy_queue_limit == 3
    f.apply("health_poll_s", None)  # deleted from the bucket: the file/env value again
    assert settings.health_poll_s == 15.0 and "health_poll_s" not in f.applied
    assert seen == [("health_poll_s", 5.0), ("proxy_queue_limit", 3), ("health_poll_s", 15.0)]
    assert rs._decode("health_poll_s", b'{"value": 0}') is None  # out of range: ignored
    assert rs._decode("health_poll_s", b"junk") is None
    stored = rs._decode("health_restart_max", b'{"value": 4.0, "by": "page"}')
    assert stored is not None and stored.value == 4 and isinstance(stored.value, int)


# --- the templates, under StrictUndefined with the app's filters ----------------------------


@pytest.fixture(scope="module")
def env() -> Environment:
    root = Path(__file__).resolve().parents[2] / "templates"
    env = Environment(loader=FileSystemLoader(str(root)), autoescape=True,
                      undefined=StrictUndefined)  # fmt: skip
    filters.register(SimpleNamespace(engine=env))
    return env


def test_transfers_page_renders_progress_and_the_copy_form(env: Environment) -> None:
    t = Transfer(id="j1", action="download", host="spark1", state="running", created_at=1.0,
                 what="org/m", progress={"bytes": 2_000_000, "total": 8_000_000,
                                         "rate_bps": 1_000_000, "eta_s": 6.0,
                                         "files_done": 1, "files_total": 4})  # fmt: skip
    fresh = Transfer(id="j2", action="pull", host="spark2", state="queued", created_at=2.0,
                     message="queued")  # fmt: skip
    html = env.get_template("transfers.html").render(
        transfers=[fresh, t],
        hosts=["spark1", "spark2"],
        host_views=[SimpleNamespace(alias=a) for a in ("spark1", "spark2")],
    )
    assert 'value="25.0"' in html and "2.0 MB of 8.0 MB" in html
    assert '<span class="rate">1.0 MB/s</span>' in html and "ETA 6 s" in html
    assert 'name="panel" value="plain"' in html and 'hx-confirm="Download this repo' in html
    assert 'sse-swap="transfers"' in html and 'id="transfer-j2"' in html


def test_transfer_shown_done_and_failed(env: Environment) -> None:
    done = Transfer(id="j", action="push", host="h", state="succeeded", created_at=1.0)
    assert done.pct == 100.0
    html = env.get_template("_transfer.html").render(t=done)
    assert 'data-state="succeeded"' in html and "100 %" in html and "rate" not in html
    failed = Transfer(id="k", action="pull", host="h", state="failed", created_at=1.0,
                      error="<boom>")  # fmt: skip
    html = env.get_template("_transfer.html").render(t=failed, id_prefix="started")
    assert 'id="started-k"' in html and "&lt;boom&gt;" in html and failed.pct is None
