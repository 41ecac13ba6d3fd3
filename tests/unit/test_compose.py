"""compose.yaml describes the same stack as `make run`: checked as data, no Docker needed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"

APP_SERVICES = ("web", "worker-ssh", "worker-signer")
SECRET_NAME = re.compile(r"SECRET|KEY|TOKEN|PASSWORD", re.IGNORECASE)
SUBSTITUTION = re.compile(r"^\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # resolves the x-* anchors and `<<` merges
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value.split() if isinstance(value, str) else [str(v) for v in value]


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def test_services_exist(services: dict[str, Any]) -> None:
    assert {"nats", "web", "worker-ssh", "worker-signer", "s3"} <= services.keys()


def test_nats_runs_jetstream_with_storage(services: dict[str, Any]) -> None:
    """nats-server reads the shipped deploy/nats.conf: JetStream on, its store on a volume."""
    nats = services["nats"]
    assert nats["image"].startswith("nats:2.10")
    cmd = argv(nats["command"])
    conf_path = cmd[cmd.index("-c") + 1]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in nats["volumes"]}
    assert mounts[conf_path] == "./deploy/nats.conf"
    conf = (ROOT / "deploy" / "nats.conf").read_text()
    store = re.search(r"jetstream\s*\{\s*store_dir:\s*(\S+)", conf)
    assert store is not None and store.group(1) in mounts
    assert "healthcheck" in nats


@pytest.mark.parametrize(
    ("name", "user"), [("web", "web"), ("worker-ssh", "executor"), ("worker-signer", "signer")]
)
def test_each_part_has_its_nats_user(services: dict[str, Any], name: str, user: str) -> None:
    """Each part connects as its own user of deploy/nats.conf, with that user's password
    variable, which the nats service is given too; no password is written in the files."""
    conf = (ROOT / "deploy" / "nats.conf").read_text()
    var = f"NATS_{user.upper()}_PASSWORD"
    assert f"user: {user}, password: ${var}," in conf
    part, nats = env(services[name]), env(services["nats"])
    assert part["NATS_USER"] == user
    assert part["NATS_PASSWORD"].startswith(f"${{{var}:?") and nats[var] == part["NATS_PASSWORD"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_reach_nats_service(services: dict[str, Any], name: str) -> None:
    svc = services[name]
    url = env(svc)["NATS_URL"]
    assert re.fullmatch(r"nats://nats:4222", url), url
    assert "nats" in svc["depends_on"]
    assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
    assert svc["restart"] == "unless-stopped"


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("web", ["spark-control", "web"]),
        ("worker-ssh", ["spark-control", "worker", "ssh"]),
        ("worker-signer", ["spark-control", "worker", "signer"]),
    ],
)
def test_commands(services: dict[str, Any], name: str, command: list[str]) -> None:
    assert argv(services[name]["command"]) == command


def test_web_publishes_9999_on_all_container_interfaces(services: dict[str, Any]) -> None:
    web = services["web"]
    ports = [str(p) for p in web["ports"]]
    assert any(p.endswith(":9999") or p == "9999" for p in ports), ports
    e = env(web)
    assert e["BIND_HOST"] == "0.0.0.0"
    assert e["SPARK_DATA_DIR"] == "/data"
    assert any(str(v).endswith(":/data") for v in web["volumes"])


def test_worker_ssh_gets_keys_read_only_and_host_placeholders(services: dict[str, Any]) -> None:
    svc = services["worker-ssh"]
    e = env(svc)
    mounts = [str(v) for v in svc["volumes"]]
    ssh_mount = next(m for m in mounts if ".ssh" in m)
    _source, target, mode = ssh_mount.rsplit(":", 2)  # the source may hold ${VAR:-default}
    assert mode == "ro"
    assert e["SSH_KEY_PATH"].startswith(target + "/")
    assert e["SSH_KNOWN_HOSTS"].startswith(target + "/")
    for name in ("SPARK1_HOST", "SPARK1_USER"):
        m = SUBSTITUTION.match(e[name])
        assert m and m["var"] == name and m["arg"] == "", e[name]


def test_hosts_reach_the_web_too(services: dict[str, Any]) -> None:
    """The dashboard lists the configured hosts, so it needs the same host variables."""
    assert env(services["web"])["SPARK1_HOST"] == env(services["worker-ssh"])["SPARK1_HOST"]


def test_signer_and_s3(services: dict[str, Any]) -> None:
    s3 = services["s3"]
    assert "seaweedfs" in s3["image"]
    assert ":" in s3["image"] and not s3["image"].endswith(":latest")  # pinned
    assert argv(s3["command"])[0] in ("mini", "server")
    assert "healthcheck" in s3
    signer = services["worker-signer"]
    assert signer["depends_on"]["s3"]["condition"] == "service_healthy"
    assert env(signer)["S3_ENDPOINT_URL"].endswith("http://s3:8333}")
    # signer and store share one credential pair, from the same variables
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env(signer)[name] == env(s3)[name]


def test_build_context_has_a_dockerfile(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        build = services[name]["build"]
        context, dockerfile = (
            (build, "Dockerfile")
            if isinstance(build, str)
            else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        )
        path = (ROOT / context / dockerfile).resolve()
        assert path.is_file(), path
        text = path.read_text()
        assert re.search(r"^FROM python:3\.12-slim", text, re.M)
        assert re.search(r"^USER (?!root)\S+", text, re.M)  # not root
        assert "pip install ." in text


def test_every_service_restarts(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        assert svc.get("restart") == "unless-stopped", name


def secret_env() -> list[tuple[str, str, str]]:
    data = yaml.safe_load(COMPOSE.read_text())
    return [
        (svc_name, key, value)
        for svc_name, svc in data["services"].items()
        for key, value in env(svc).items()
        if SECRET_NAME.search(key) and not key.endswith(("_PATH", "_FILE", "_NAME"))
    ]


def test_some_secrets_are_checked() -> None:
    assert {key for _, key, _ in secret_env()} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.parametrize(("service", "key", "value"), secret_env())
def test_no_secret_is_hard_coded(service: str, key: str, value: str) -> None:
    """Secret-looking variables are a bare ${VAR}, ${VAR:?message} or ${VAR:-} (no default)."""
    m = SUBSTITUTION.match(value)
    assert m, f"{service}.{key} must come from the environment, got {value!r}"
    if m["op"] in (":-", "-", ":+", "+"):
        assert m["arg"] == "", f"{service}.{key} has a default value in compose.yaml"


def test_no_literal_credentials_anywhere() -> None:
    text = COMPOSE.read_text()
    for pattern in (
        r"AKIA[0-9A-Z]{16}",
        r"(?i)(secret|password|token)\s*[:=]\s*[\"']?[A-Za-z0-9/+]{8,}",
    ):
        assert not re.search(pattern, text), pattern
