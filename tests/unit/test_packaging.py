"""The installed package carries its templates, static files and model catalog."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_templates_static_and_workers(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("spark_control-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {p.name for p in (REPO / "templates").glob("*.html")}
    assert templates and {f"app/templates/{t}" for t in templates} <= names
    for static in ("htmx.min.js", "htmx-ext-sse.js", "app.css", "favicon.svg"):
        assert f"app/static/{static}" in names
    assert {"workers/executor.py", "app/contracts.py", "app/cli.py", "app/models.yaml"} <= names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "spark-control = app.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
