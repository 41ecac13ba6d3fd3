"""The rel_path rule: property-based (hypothesis) and the listed refusals, each with its code."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import BadRequest, Forbidden, SparkError
from app.signer.paths import MAX_KEY_BYTES, check_rel_path, normalise, prefix_for

PREFIX = prefix_for("projects/{namespace}/", "ns-a")
SAFE_SEGMENT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\%\x7f"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and all(not 0x80 <= ord(c) <= 0x9F for c in s))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_refused_cleanly_or_safe(text: str) -> None:
    """Whatever comes in: a BAD_PATH / OUTSIDE_NAMESPACE refusal, or a key with no way out."""
    candidate = PREFIX + text
    try:
        key = check_rel_path(candidate, PREFIX)
    except SparkError as exc:
        assert (exc.status, exc.code) in {(400, "BAD_PATH"), (403, "OUTSIDE_NAMESPACE")}
        return
    assert key.startswith(PREFIX)
    assert len(key.encode()) <= MAX_KEY_BYTES
    assert "\\" not in key
    for form in (key, unquote(key), unquote(unquote(key))):
        assert posixpath.normpath(form) == form  # nothing for a resolver to collapse
        assert all(seg not in ("", ".", "..") for seg in form.split("/"))
        assert posixpath.normpath(form).startswith(PREFIX)


@settings(max_examples=200, deadline=None)
@given(st.lists(SAFE_SEGMENT, min_size=1, max_size=6))
def test_safe_paths_under_the_prefix_are_kept(segments: list[str]) -> None:
    path = PREFIX + "/".join(segments)
    if len(path.encode()) > MAX_KEY_BYTES:
        return
    assert check_rel_path(path, PREFIX) == normalise(path)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(SAFE_SEGMENT, min_size=1, max_size=4),
    st.sampled_from(
        ["..", ".", "", "%2e%2e", "%2E%2e", "%252e%252e", "%2e", "a%2fb", "a%5cb", "%255c"]
    ),
    st.integers(min_value=0, max_value=4),
)
def test_injected_traversal_is_refused(segments: list[str], bad: str, at: int) -> None:
    segments.insert(min(at, len(segments)), bad)
    with pytest.raises(BadRequest) as info:
        check_rel_path(PREFIX + "/".join(segments), PREFIX)
    assert info.value.code == "BAD_PATH" and info.value.status == 400


@settings(max_examples=200, deadline=None)
@given(st.lists(SAFE_SEGMENT, min_size=1, max_size=4))
def test_other_namespaces_are_refused(segments: list[str]) -> None:
    for other in ("projects/ns-b/", "projects/ns-a-x/", "projects/", "ns-a/", ""):
        path = other + "/".join(segments)
        if path.startswith(PREFIX):
            continue
        with pytest.raises((Forbidden, BadRequest)) as info:
            check_rel_path(path, PREFIX)
        if isinstance(info.value, Forbidden):
            assert info.value.code == "OUTSIDE_NAMESPACE"


@pytest.mark.parametrize(
    "path",
    [
        "/projects/ns-a/x",
        "projects/ns-a/../ns-b/x",
        "projects/ns-a/./x",
        "projects/ns-a//x",
        "projects/ns-a/x/",
        "projects\\ns-a\\x",
        "projects/ns-a/x\x00y",
        "projects/ns-a/x\ny",
        "projects/ns-a/%2e%2e/ns-b/x",
        "projects/ns-a/..%2fns-b/x",
        "projects/ns-a/%252e%252e/x",
        "projects/ns-a/" + "a" * MAX_KEY_BYTES,
        "projects/ns-a/\ud800",
        "",
    ],
)
def test_listed_refusals(path: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_rel_path(path, PREFIX)
    assert info.value.code == "BAD_PATH"


def test_outside_prefix_is_403() -> None:
    for path in ("projects/ns-b/x", "projects/ns-ab/x", "elsewhere/x", "projects/ns-a"):
        with pytest.raises(Forbidden) as info:
            check_rel_path(path, PREFIX)
        assert (info.value.status, info.value.code) == (403, "OUTSIDE_NAMESPACE")


def test_accepted_and_normalised() -> None:
    assert check_rel_path("projects/ns-a/m/model.safetensors", PREFIX) == (
        "projects/ns-a/m/model.safetensors"
    )
    decomposed = "projects/ns-a/cafe\u0301.bin"
    assert check_rel_path(decomposed, PREFIX) == "projects/ns-a/caf\u00e9.bin"
    assert check_rel_path("projects/ns-a/100%25 sure+=~.txt", PREFIX).endswith("sure+=~.txt")
    assert len(("projects/ns-a/" + "é" * 505).encode()) == 1024
    assert check_rel_path("projects/ns-a/" + "é" * 505, PREFIX)
