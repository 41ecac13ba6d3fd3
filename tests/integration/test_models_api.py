"""GET/POST /api/models through the real web front (uvicorn + real NATS): the bundled catalog,
entries added to the overrides file, and refusals that write nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import catalog
from app.config import HostConfig, Settings
from tests import stack

MARK = "PWNED"


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, unique: str) -> Settings:
    host = HostConfig(alias=f"gpu-{unique}", address="localhost", transport="local")
    return stack.make_settings(tmp_path / "data", nats_server.url, [host])


@pytest.fixture
def overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "ov" / "models.overrides.yaml"
    monkeypatch.setenv("MODELS_OVERRIDES", str(path))
    return path


def saved(path: Path) -> dict[str, Any] | None:
    """The overrides file's models (None when the file was never written)."""
    if not path.exists():
        return None
    models: dict[str, Any] = yaml.safe_load(path.read_text())["models"]
    return models


async def test_get_lists_the_bundled_catalog(settings: Settings, overrides: Path) -> None:
    bundled = catalog.load_catalog(catalog.bundled_path())
    async with stack.web(settings) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.get("/api/models")
        assert r.status_code == 200, r.text
        listed = r.json()
        assert [e["key"] for e in listed] == sorted(bundled.models)
        assert {e["source"] for e in listed} == {"bundled"}
        first = listed[0]
        assert set(first) == {"key", "source", *catalog.FIELDS}
        one = (await client.get(f"/api/models/{first['key']}")).json()
        assert one == first

        r = await client.get("/api/models/no-such-model")
        assert r.status_code == 404
        assert r.json() == {"error": "no such model in the catalog", "code": "UNKNOWN_MODEL"}
    assert saved(overrides) is None


async def test_post_adds_an_entry_every_replica_sees_and_persists_it(
    settings: Settings, overrides: Path
) -> None:
    recipe = {
        "name": "gpt-oss 20B, small context",
        "repo": "openai/gpt-oss-20b",
        "port": 8001,
        "max_model_len": 16384,
        "gpu_memory_utilization": 0.4,
        "extra_args": {"--enforce-eager": True},
        "aliases": ["small-oss"],
    }
    async with stack.web(settings) as one, stack.web(settings) as two:
        async with httpx.AsyncClient(base_url=one) as a, httpx.AsyncClient(base_url=two) as b:
            r = await a.post("/api/models", json={"key": "oss-small", "recipe": recipe})
            assert r.status_code == 201, r.text
            assert r.headers["location"] == "/api/models/oss-small"
            entry = r.json()
            assert entry["key"] == "oss-small" and entry["source"] == "overrides"
            assert entry["port"] == 8001 and entry["served_name"] == "oss-small"
            assert entry["extra_args"] == {"enforce-eager": True}

            listed = {e["key"]: e for e in (await b.get("/api/models")).json()}
            assert listed["oss-small"] == entry  # another replica reads the same file
            assert listed["gpt-oss-20b"]["source"] == "bundled"

            # a partial entry for a bundled key is merged over it, field by field
            r = await b.post(
                "/api/models", json={"key": "gpt-oss-20b", "recipe": {"max_model_len": 32768}}
            )
            assert r.status_code == 201, r.text
            merged = (await a.get("/api/models/gpt-oss-20b")).json()
            assert merged["source"] == "overrides" and merged["max_model_len"] == 32768
            assert merged["repo"] == "openai/gpt-oss-20b"

    models = saved(overrides)
    assert models is not None and set(models) == {"oss-small", "gpt-oss-20b"}
    assert models["oss-small"]["repo"] == "openai/gpt-oss-20b"
    assert models["oss-small"]["extra_args"] == {"enforce-eager": True}
    assert models["gpt-oss-20b"] == {"max_model_len": 32768}


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        (
            {"key": "big", "recipe": {"repo": "a/b", "gpu_memory_utilization": 0.9}},
            400, "BAD_RECIPE", "request: models.big.gpu_memory_utilization: must be 0.1..0.85",
        ),
        (
            {"key": "big", "recipe": {"repo": "a/b", "max_model_len": "long"}},
            400, "BAD_RECIPE", "request: models.big.max_model_len: expected int, got str",
        ),
        (
            {"key": "big", "recipe": {"max_model_len": 8192}},
            400, "BAD_RECIPE", "request: models.big: exactly one of repo",
        ),
        (
            {"key": "big", "recipe": {"repo": f"a/{MARK};reboot"}},
            400, "UNSAFE_VALUE", "request: models.big.repo: must look like owner/name",
        ),
        (
            {"key": "big", "recipe": {"repo": "a/b", "extra_args": {f"$({MARK})": True}}},
            400, "UNSAFE_VALUE", "request: models.big.extra_args: must be a long option",
        ),
        (
            {"key": f"{MARK} x", "recipe": {"repo": "a/b"}},
            400, "UNSAFE_VALUE", "request: models (a key): must be a model key",
        ),
        (
            {"key": "big", "recipe": {"repo": "a/b", "aliases": ["qwen3"]}},
            400, "BAD_RECIPE", "request: models.big.aliases[0]: already names models.qwen3",
        ),
        ({"recipe": {"repo": "a/b"}}, 400, "BAD_RECIPE", 'request: body must be {"key"'),
        (b"{not json", 400, "BAD_JSON", "body: not valid JSON"),
        ({"key": "big", "recipe": {"repo": "a/b", "notes": "x" * 70_000}}, 413, "", ""),
    ],
)  # fmt: skip
async def test_post_refuses_bad_input_and_writes_nothing(
    settings: Settings, overrides: Path, body: Any, status: int, code: str, needle: str
) -> None:
    async with stack.web(settings) as base, httpx.AsyncClient(base_url=base) as client:
        if isinstance(body, bytes):
            r = await client.post("/api/models", content=body)
        else:
            r = await client.post("/api/models", json=body)
        assert r.status_code == status, r.text
        err = r.json()
        assert set(err) == {"error", "code"}
        if code:
            assert err["code"] == code and err["error"].startswith(needle), err
        assert MARK not in err["error"]
    assert saved(overrides) is None


@pytest.fixture
def broken(overrides: Path) -> Path:
    overrides.parent.mkdir(parents=True)
    overrides.write_text("models:\n  qwen3-30b-a3b:\n    max_model_len: lots\n")
    return overrides


async def test_a_broken_overrides_file_is_a_server_error_naming_it(
    settings: Settings, broken: Path
) -> None:
    async with stack.web(settings) as base, httpx.AsyncClient(base_url=base) as client:
        for r in (
            await client.get("/api/models"),
            await client.post("/api/models", json={"key": "x", "recipe": {"repo": "a/b"}}),
        ):
            assert r.status_code == 500
            assert r.json() == {
                "error": f"{broken}: models.qwen3-30b-a3b.max_model_len: expected int, got str",
                "code": "BAD_CATALOG",
            }
    assert saved(broken) == {"qwen3-30b-a3b": {"max_model_len": "lots"}}
