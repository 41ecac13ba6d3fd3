"""The restart policy, the connectivity history and the metrics writer, as pure functions."""

from __future__ import annotations

from app import contracts as c
from app.config import Settings
from app.health import history, restart_view
from app.metrics import Writer
from workers.health import restart_decision
from workers.healthcheck import silence_wav, wedged_text

POLICY = dict(health_restart_max=3, health_restart_window_s=1800.0, health_restart_gap_s=120.0,
              health_restart_grace_s=60.0)  # fmt: skip


def _ep(restarts: list[float], started_at: float | None = 0.0) -> c.EndpointHealth:
    return c.EndpointHealth(
        name="vllm-a", kind="llm", host="a", base_url=None, state="wedged",
        checked_at=0, since=0, restarts=restarts, started_at=started_at,
    )  # fmt: skip


def test_restart_policy() -> None:
    s = Settings(**POLICY)  # type: ignore[arg-type]
    t = 10_000.0
    assert restart_decision(s, _ep([]), t, 0.0, False) == (True, "wedged")
    go, why = restart_decision(s, _ep([], started_at=t - 30), t, 0.0, False)
    assert not go and "of its start" in why  # none in the first 60 s after a start
    go, why = restart_decision(s, _ep([]), t, t - 10, False)
    assert not go and "of its start" in why  # nor in the loop's first 60 s
    go, why = restart_decision(s, _ep([t - 100]), t, 0.0, False)
    assert not go and "gap 120" in why
    assert restart_decision(s, _ep([t - 121]), t, 0.0, False)[0]
    go, why = restart_decision(s, _ep([t - 1500, t - 1000, t - 500]), t, 0.0, False)
    assert not go and "limit 3" in why
    assert restart_decision(s, _ep([t - 1900, t - 1000, t - 500]), t, 0.0, False)[0]
    go, why = restart_decision(s, _ep([]), t, 0.0, True)
    assert not go and "swap lock" in why
    off = Settings(health_auto_restart=False)
    assert not restart_decision(off, _ep([]), t, 0.0, False)[0]
    view = restart_view(s, _ep([t - 1500, t - 1000, t - 500]), t)
    assert view["restarts_in_window"] == 3 and view["next_allowed_at"] == t - 1500 + 1800


def test_history_transitions_outages_and_days() -> None:
    day = 1_795_000_000.0 - 1_795_000_000.0 % 86400  # a UTC midnight

    def ev(kind: str, ts: float, **kw: object) -> c.Event:
        return c.Event(kind=kind, ts=ts, **kw)  # type: ignore[arg-type]

    events = [
        ("spark.evt.host.a.up", ev("up", day + 10)),
        ("spark.evt.host.a.down", ev("down", day + 100, message="lost")),
        ("spark.evt.host.a.down", ev("down", day + 101)),  # a second source: same outage
        ("spark.evt.host.a.up", ev("up", day + 130)),
        ("spark.evt.service.vllm-a.report", ev("report", day + 140, data={"ok": False})),
        ("spark.evt.service.vllm-a.down", ev("down", day + 86400 - 50)),  # across midnight
    ]
    h = history(events, day, day + 86400 + 50)
    a = h["subjects"]["host.a"]
    assert [t["to"] for t in a["transitions"]] == ["up", "down", "up"]
    assert a["transitions"][-1]["down_s"] == 30 and a["outages"][0]["duration_s"] == 30
    v = h["subjects"]["service.vllm-a"]
    assert v["reports"][0]["ok"] is False and v["outages"][0]["ongoing"] is True
    days = {(d["day"], d["subject"]): d for d in h["days"]}
    assert len([d for d in days if d[1] == "service.vllm-a"]) == 2  # split over both days
    first = next(d for (k, s), d in days.items() if s == "host.a")
    assert first["outages"] == 1 and first["down_s"] == 30


def test_writer_escapes_labels() -> None:
    w = Writer()
    w.family("x", "gauge", "help", [({"m": 'a"b\\c\nd'}, 1.5), ({}, 2.0)])
    assert w.text() == '# HELP x help\n# TYPE x gauge\nx{m="a\\"b\\\\c\\nd"} 1.5\nx 2\n'


def test_probe_helpers() -> None:
    wav = silence_wav()
    assert wav[:4] == b"RIFF" and len(wav) == 44 + 32000
    assert wedged_text("RuntimeError: CUBLAS_STATUS_EXECUTION_FAILED") and not wedged_text("ok")
