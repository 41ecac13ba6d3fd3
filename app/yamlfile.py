"""Reading the project's YAML files (catalog, services): one top-level section, errors that
name the file (and line), never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_section(
    path: Path, section: str, *, missing_ok: bool, error: type[Exception], what: str
) -> dict[str, Any]:
    """The ``section:`` mapping of ``path`` ({} for a missing file when ``missing_ok``);
    anything else raises ``error`` with a message naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        if missing_ok:
            return {}
        raise error(f"{path}: {what} file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what} file ({type(exc).__name__})") from exc
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path}: not valid YAML{where}") from exc
    if not isinstance(data, dict) or set(data) - {section}:
        raise error(f"{path}: expected only a `{section}:` mapping at the top level")
    found = data.get(section) or {}
    if not isinstance(found, dict):
        raise error(f"{path}: {section}: expected a mapping")
    return found
