"""The ``rel_path`` rule: normalise, refuse anything that could escape, then the prefix check.

A rel_path is an object key relative to the signer's bucket. It is refused (400 ``BAD_PATH``)
when absolute, with a ``.``/``..``/empty segment, a backslash, a control character, a
percent-encoded separator or dot segment, or over 1,024 bytes of UTF-8; then it must start with
the caller's prefix (``projects/{namespace}/``), else 403 ``OUTSIDE_NAMESPACE``.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

from app.errors import BadRequest, Forbidden

MAX_KEY_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _bad(reason: str) -> BadRequest:
    return BadRequest(f"rel_path: {reason}", code="BAD_PATH")


def _check_segments(path: str, what: str) -> None:
    if "\\" in path:
        raise _bad(f"{what}must not contain a backslash")
    if _CONTROL.search(path):
        raise _bad(f"{what}must not contain control characters")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise _bad(f"{what}must not have empty, '.' or '..' segments")


def normalise(rel_path: object) -> str:
    """The canonical form of a rel_path (Unicode NFC), or BadRequest naming the rule broken."""
    if not isinstance(rel_path, str) or not rel_path:
        raise _bad("must be a non-empty string")
    path = unicodedata.normalize("NFC", rel_path)
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise _bad("must be valid UTF-8 text") from exc
    if size > MAX_KEY_BYTES:
        raise _bad(f"must be at most {MAX_KEY_BYTES} bytes")
    if path.startswith("/"):
        raise _bad("must be relative (no leading '/')")
    _check_segments(path, "")
    # What a server or client might decode: refuse a path whose decoded form (once, twice, …)
    # adds separators or dot segments the raw form does not show.
    decoded = path
    while "%" in decoded:
        once = unquote(decoded, errors="replace")
        if once == decoded:
            break
        decoded = once
        if decoded.count("/") != path.count("/"):
            raise _bad("must not contain a percent-encoded '/'")
        _check_segments(decoded, "once percent-decoded, it ")
    return path


def prefix_for(template: str, namespace: str) -> str:
    """The caller's prefix from the template (``projects/{namespace}/``)."""
    return template.format(namespace=namespace)


def check_rel_path(rel_path: object, prefix: str) -> str:
    """The normalised rel_path if it lies under ``prefix``; BadRequest / Forbidden otherwise."""
    path = normalise(rel_path)
    if not path.startswith(prefix) or len(path) == len(prefix):
        raise Forbidden("rel_path: outside the caller's namespace prefix", code="OUTSIDE_NAMESPACE")
    return path
