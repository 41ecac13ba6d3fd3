"""Access rules without a server: the cross-site guard, token parsing and hashing, the scope of
each request, the start-up exposure check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.access import guard
from app.access.policy import Access, check_exposure, is_loopback, required_scope
from app.access.tokens import ApiToken, TokenTable, normalise, parse_env
from app.config import ConfigError, Settings, load_settings

TOKEN = "s3cr3t-token-value-0123456789"
OTHER = "another-token-value-abcdefghij"


# --- the cross-site guard -----------------------------------------------------------------


def refuses(method: str, path: str, **headers: str) -> bool:
    return guard.refuses(method, path, {"host": "dash.lan:9999", **headers})


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "post"])
def test_foreign_origin_is_refused_on_state_changing_methods(method: str) -> None:
    assert refuses(method, "/api/hosts/a/probe", origin="http://evil.example")
    assert refuses(method, "/api/hosts/a/probe", origin="http://dash.lan:8080")  # other port
    assert refuses(method, "/api/hosts/a/probe", origin="http://dash.lan")  # port 80


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_reads_are_never_refused(method: str) -> None:
    assert not refuses(method, "/api/hosts", origin="http://evil.example")


def test_same_origin_passes() -> None:
    assert not refuses("POST", "/api/swap", origin="http://dash.lan:9999")
    assert not refuses("POST", "/api/swap", origin="http://DASH.lan:9999")  # hosts ignore case


def test_referer_counts_only_without_origin() -> None:
    assert refuses("POST", "/api/swap", referer="http://evil.example/page")
    assert not refuses("POST", "/api/swap", referer="http://dash.lan:9999/models?x=1")
    assert not refuses(
        "POST", "/api/swap", origin="http://dash.lan:9999", referer="http://evil.example/"
    )
    assert refuses(
        "POST", "/api/swap", origin="http://evil.example", referer="http://dash.lan:9999/"
    )


def test_neither_header_passes() -> None:
    assert not refuses("POST", "/api/swap")
    assert not refuses("POST", "/api/swap", origin="", referer="")


@pytest.mark.parametrize("source", ["null", "file:///tmp/x.html", "garbage", "http://:9999",
                                    "http://dash.lan:notaport", "http://[::1"])  # fmt: skip
def test_opaque_or_malformed_sources_are_foreign(source: str) -> None:
    assert refuses("POST", "/api/swap", origin=source)


def test_default_ports_follow_the_source_scheme() -> None:
    tls = {"host": "dash.example.org"}  # a TLS-terminating proxy passing Host through
    assert not guard.refuses("POST", "/api/swap", {**tls, "origin": "https://dash.example.org"})
    assert not guard.refuses(
        "POST", "/api/swap", {"host": "dash.example.org:443", "origin": "https://dash.example.org"}
    )
    assert guard.refuses("POST", "/api/swap", {**tls, "origin": "https://dash.example.org:8443"})
    assert not guard.refuses("POST", "/x", {"host": "[::1]:9999", "origin": "http://[::1]:9999"})


def test_a_missing_host_header_with_an_origin_is_refused() -> None:
    assert guard.refuses("POST", "/api/swap", {"origin": "http://dash.lan:9999"})


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/v1/audio/transcriptions", "/scrub", "/rehydrate",
     "/api/audio/transcribe-with-speakers", "/api/health-event", "/api/v1/blob/sign"],
)  # fmt: skip
def test_machine_endpoints_are_exempt(path: str) -> None:
    assert guard.is_exempt(path)
    assert not refuses("POST", path, origin="http://evil.example")


@pytest.mark.parametrize(
    "path", ["/scrubber", "/rehydrated", "/v1x", "/api/health-events", "/api/audiox", "/api/v1/x"]
)
def test_exemptions_are_exact(path: str) -> None:
    assert not guard.is_exempt(path)
    assert refuses("POST", path, origin="http://evil.example")


# --- tokens ---------------------------------------------------------------------------------


def test_parse_env() -> None:
    raw = parse_env(f"ops:control+read:{TOKEN}, app:inference:{OTHER} ,")
    assert raw == [
        {"name": "ops", "scopes": ["control", "read"], "token": TOKEN},
        {"name": "app", "scopes": ["inference"], "token": OTHER},
    ]
    assert parse_env(f"x:read:{TOKEN}:with:colons")[0]["token"] == f"{TOKEN}:with:colons"


@pytest.mark.parametrize("value", ["ops", f"ops:{TOKEN}", f":read:{TOKEN}", "ops:read:", "ops::x"])
def test_parse_env_errors_name_the_position_not_the_value(value: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_env(f"good:read:{OTHER},{value}")
    assert "entry 2" in str(err.value)
    assert TOKEN not in str(err.value) and OTHER not in str(err.value)


def test_normalise_keeps_only_digests() -> None:
    given = [ApiToken(name="ops", scopes=["read", "control", "read"], token=TOKEN)]
    (out,) = normalise(given)
    assert out.token is None
    assert out.sha256 == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert out.scopes == ["control", "read"]
    digest = "AB" * 32
    (kept,) = normalise([ApiToken(name="x", scopes=["read"], sha256=digest)])
    assert kept.sha256 == digest.lower()
    assert TOKEN not in repr(given[0]) and out.sha256 not in repr(out)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (ApiToken(name="bad name", scopes=["read"], token=TOKEN), "api_tokens[0].name"),
        (ApiToken(name="x", scopes=[], token=TOKEN), "api_tokens.x.scopes: at least one"),
        (ApiToken(name="x", scopes=["admin"], token=TOKEN), "unknown scope"),
        (ApiToken(name="x", scopes=["sign"], token=TOKEN), "signer_tokens"),
        (ApiToken(name="x", scopes=["read"]), "exactly one of sha256 or token"),
        (ApiToken(name="x", scopes=["read"], token=TOKEN, sha256="a" * 64), "exactly one"),
        (ApiToken(name="x", scopes=["read"], token="short"), "at least 16 characters"),
        (ApiToken(name="x", scopes=["read"], token=TOKEN + " x"), "no spaces"),
        (ApiToken(name="x", scopes=["read"], sha256="xyz"), "64 hex digits"),
    ],
)
def test_normalise_refuses(token: ApiToken, message: str) -> None:
    with pytest.raises(ValueError) as err:
        normalise([token])
    assert message in str(err.value) and TOKEN not in str(err.value)


def test_duplicate_names_are_refused() -> None:
    twice = [ApiToken(name="x", scopes=["read"], token=t) for t in (TOKEN, OTHER)]
    with pytest.raises(ValueError, match=r"api_tokens\.x: defined twice"):
        normalise(twice)


def test_table_lookup() -> None:
    table = TokenTable(
        [
            ApiToken(name="ops", scopes=["control"], token=TOKEN),
            ApiToken(
                name="app", scopes=["inference"], sha256=hashlib.sha256(OTHER.encode()).hexdigest()
            ),
        ],
        {"signer-token-value-xyz": "ns-a"},
    )
    assert table.required
    ops = table.lookup(TOKEN)
    assert ops is not None and ops.name == "ops"
    assert ops.allows("control") and ops.allows("read") and not ops.allows("inference")
    app = table.lookup(OTHER)
    assert app is not None and app.scopes == {"inference"}
    signer = table.lookup("signer-token-value-xyz")
    assert signer is not None and signer.scopes == {"sign"} and signer.name == "signer:ns-a"
    assert table.lookup("nope") is None and table.lookup("") is None


def test_signer_tokens_alone_do_not_require_tokens() -> None:
    assert not TokenTable([], {"signer-token-value-xyz": "ns-a"}).required


# --- which scope a request needs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/static/app.css", None),
        ("GET", "/healthz", None),
        ("GET", "/login", None),
        ("POST", "/login", None),
        ("POST", "/logout", None),
        ("GET", "/api/status", "read"),
        ("GET", "/hosts", "read"),
        ("GET", "/metrics", "read"),
        ("HEAD", "/api/hosts", "read"),
        ("POST", "/api/hosts/a/probe", "control"),
        ("POST", "/hosts/a/probe", "control"),
        ("POST", "/api/swap", "control"),
        ("DELETE", "/api/swap/lock", "control"),
        ("POST", "/api/models", "control"),
        ("POST", "/api/nim/install", "control"),
        ("POST", "/api/schedule", "control"),
        ("POST", "/api/services/tts/restart", "control"),
        ("POST", "/scrub", "inference"),
        ("POST", "/rehydrate", "inference"),
        ("GET", "/v1/models", "inference"),
        ("POST", "/v1/chat/completions", "inference"),
        ("POST", "/api/audio/transcribe-with-speakers", "inference"),
        ("POST", "/api/health-event", "inference"),
        ("POST", "/api/v1/blob/sign", "sign"),
        ("GET", "/loginx", "read"),
    ],
)
def test_required_scope(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
     ("10.0.0.5", False), ("", False), ("dash.lan", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure() -> None:
    check_exposure(Settings())  # loopback by default
    with pytest.raises(ConfigError) as err:
        check_exposure(Settings(bind_host="0.0.0.0"))
    assert "0.0.0.0 is beyond loopback" in str(err.value) and "\n" not in str(err.value)
    check_exposure(Settings(bind_host="0.0.0.0", allow_open_lan=True))
    check_exposure(Settings(bind_host="0.0.0.0", api_tokens=normalise(
        [ApiToken(name="x", scopes=["read"], token=TOKEN)])))  # fmt: skip
    # published elsewhere by a container runtime: that address decides
    check_exposure(Settings(bind_host="0.0.0.0", published_host="127.0.0.1"))
    with pytest.raises(ConfigError):
        check_exposure(Settings(bind_host="127.0.0.1", published_host="0.0.0.0"))


def test_open_lan_banner_only_when_it_is_open() -> None:
    assert Access.from_settings(Settings(bind_host="0.0.0.0", allow_open_lan=True)).open_lan
    assert not Access.from_settings(Settings(allow_open_lan=True)).open_lan  # loopback
    with_tokens = Settings(
        bind_host="0.0.0.0",
        allow_open_lan=True,
        api_tokens=[ApiToken(name="x", scopes=["read"], token=TOKEN)],
    )
    assert not Access.from_settings(with_tokens).open_lan


# --- settings --------------------------------------------------------------------------------


def test_settings_from_the_environment_are_hashed_and_masked(tmp_path: Path) -> None:
    env = {
        "SPARK_DATA_DIR": str(tmp_path),
        "SPARK_API_TOKENS": f"ops:control:{TOKEN},app:inference+read:{OTHER}",
        "SPARK_ALLOW_OPEN_LAN": "1",
        "SPARK_PUBLISH_HOST": "0.0.0.0",
    }
    s = load_settings(env=env)
    assert [(t.name, t.scopes, t.token) for t in s.api_tokens] == [
        ("ops", ["control"], None),
        ("app", ["inference", "read"], None),
    ]
    assert s.api_tokens[0].sha256 == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert s.allow_open_lan is True and s.published_host == "0.0.0.0"
    shown = repr(s)
    assert TOKEN not in shown and s.api_tokens[0].sha256 not in shown  # type: ignore[operator]


def test_settings_file_entries(tmp_path: Path) -> None:
    digest = hashlib.sha256(OTHER.encode()).hexdigest()
    path = tmp_path / "s.yaml"
    path.write_text(
        f"api_tokens:\n  - {{name: ops, scopes: [control], token: {TOKEN}}}\n"
        f"  - {{name: ro, scopes: [read], sha256: {digest}}}\n"
    )
    s = load_settings(str(path), env={"SPARK_DATA_DIR": str(tmp_path)})
    assert [t.sha256 for t in s.api_tokens] == [hashlib.sha256(TOKEN.encode()).hexdigest(), digest]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"ops:{TOKEN}", "SPARK_API_TOKENS: entry 1: expected name:scope1+scope2:token"),
        (f"ops:admin:{TOKEN}", "environment: api_tokens.ops.scopes: unknown scope"),
        ("ops:read:short", "environment: api_tokens.ops.token: at least 16 characters"),
    ],
)
def test_bad_tokens_are_config_errors_without_the_value(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"SPARK_API_TOKENS": value})
    assert message in str(err.value)
    assert TOKEN not in str(err.value) and "short" not in str(err.value)


def test_compose_publish_host_decides_the_exposure_check() -> None:
    """compose binds 0.0.0.0 in the container; the address it publishes on is what counts."""
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "compose.yaml").read_text())
    web = compose["services"]["web"]
    published = web["ports"][0].rsplit(":", 2)[0]
    assert web["environment"]["SPARK_PUBLISH_HOST"] == published
    assert published == "${SPARK_PUBLISH_HOST:-127.0.0.1}"
    assert web["environment"]["SPARK_API_TOKENS"] == "${SPARK_API_TOKENS:-}"
