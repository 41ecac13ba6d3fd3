"""services.yaml and its overrides: loading, field-by-field merge, disabling, clashes, refusals
that name the file and key without repeating the value; the docker argv and the NIM script."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import services, shellsafe
from app.config import load_settings
from workers.services import nim_script

PAYLOAD = "$(touch /tmp/pwned)"


def write(path: Path, entries: Any) -> Path:
    path.write_text(yaml.safe_dump({"services": entries}))
    return path


@pytest.fixture
def bundled(tmp_path: Path) -> Path:
    return write(tmp_path / "services.yaml", {
        "stt": {"kind": "stt", "image": "example.org/stt:1", "port": 8000, "gpus": True,
                "env": {"A": "1", "B": "2"}, "command": ["serve", "--port", "8000"]},
        "vec": {"kind": "vectordb", "image": "qdrant/qdrant:v1", "port": 6333,
                "health": "/healthz"},
    })  # fmt: skip


def test_bundled_file_loads_with_the_reference_ports() -> None:
    found = services.load_services(services.bundled_path())
    ports = {n: (s.kind, s.host, s.port) for n, s in found.services.items()}
    assert ports == {
        "parakeet": ("stt", "spark2", 8000), "kokoro": ("tts", "spark2", 8880),
        "bge-m3": ("embeddings", "spark2", 8088), "qdrant": ("vectordb", "spark2", 6333),
    }  # fmt: skip
    assert set(found.sources.values()) == {"bundled"}
    for name, svc in found.services.items():
        argv = services.docker_run_argv(name, svc)
        assert shlex.split(shellsafe.quote_argv(argv)) == argv
        assert svc.image in argv and svc.container == name


def test_bundled_header_documents_every_field() -> None:
    header = services.bundled_path().read_text().split("\nservices:")[0]
    for field in services.FIELDS:
        assert re.search(rf"^#\s+{field}\s", header, re.M), field
    assert "SERVICES_OVERRIDES" in header and "DISABLED_SERVICES" in header


def test_defaults_and_normalisation(bundled: Path) -> None:
    svc = services.load_services(bundled).services["vec"]
    assert (svc.container, svc.container_port, svc.host, svc.restart) == (
        "vec", 6333, services.DEFAULT_HOST, "unless-stopped")  # fmt: skip
    assert services.validate_service("x", {"image": "a", "port": 1, "health": None}).health == (
        "/health"
    )


def test_overrides_merge_field_by_field(tmp_path: Path, bundled: Path) -> None:
    overrides = write(tmp_path / "ov.yaml", {
        "stt": {"port": 9000, "env": {"C": "3"}, "gpus": None, "host": "gpu1"},
        "vec": None,
        "extra": {"image": "example.org/other:2", "port": 7000, "volumes": ["data:/data:ro"]},
    })  # fmt: skip
    found = services.load_services(bundled, overrides)
    stt = found.services["stt"]
    assert (stt.image, stt.port, stt.container_port, stt.host) == (
        "example.org/stt:1", 9000, 9000, "gpu1")  # fmt: skip
    assert stt.env == {"C": "3"}  # replaced as a whole, not merged key by key
    assert stt.gpus is False  # null → the default
    assert stt.command == ["serve", "--port", "8000"]  # kept from the bundled entry
    assert "vec" not in found.services  # `name: null` hides it
    assert found.sources == {"stt": "overrides", "extra": "overrides"}
    assert found.services["extra"].volumes == ["data:/data:ro"]


def test_disabled_by_environment_or_file(tmp_path: Path, bundled: Path) -> None:
    env = {"DISABLED_SERVICES": " vec , ,nope"}
    assert services.disabled_names(env) == {"vec", "nope"}
    assert services.disabled_names({"SPARK_CONTROL_DISABLED_SERVICES": "a", **env}) == {"a"}
    found = services.load_services(bundled, None, services.disabled_names(env))
    assert found.disabled("vec") and not found.disabled("stt")
    overrides = write(tmp_path / "ov.yaml", {"stt": {"disabled": True}})
    assert services.load_services(bundled, overrides).disabled("stt")


def test_clashes_between_enabled_services_only(tmp_path: Path, bundled: Path) -> None:
    overrides = write(tmp_path / "ov.yaml", {"new": {"image": "a/b", "port": 8000}})
    with pytest.raises(services.ServiceError) as err:
        services.load_services(bundled, overrides)
    assert err.value.message == (
        f"{overrides}: services.new.port: also used by services.stt on spark2 "
        "(disable one: DISABLED_SERVICES)"
    )
    assert services.load_services(bundled, overrides, frozenset({"stt"})).services["new"]
    other_host = write(tmp_path / "ov2.yaml", {"new": {"image": "a/b", "port": 8000, "host": "x"}})
    assert services.load_services(bundled, other_host).services["new"].host == "x"


@pytest.mark.parametrize(
    ("entry", "where", "problem"),
    [
        ({"image": f"a/b;{PAYLOAD}"}, "image", "must be an image reference"),
        ({"container": PAYLOAD}, "container", "must be a container name"),
        ({"port": "80"}, "port", "expected int, got str"),
        ({"port": 70000}, "port", "must be an integer in 1..65535"),
        ({"container_port": 0}, "container_port", "must be an integer in 1..65535"),
        ({"env": {"A": f"x\n{PAYLOAD}"}}, "env.A", "must not contain NUL, newline"),
        ({"env": {"a;b": "1"}}, "env", "must be an env var name"),
        ({"env": {"HF_TOKEN": "hf_x"}}, "env.HF_TOKEN", "secrets do not belong"),
        ({"volumes": [f"/data/../etc:/x{PAYLOAD}"]}, "volumes[0] (source)", "must not contain"),
        ({"volumes": ["data:relative"]}, "volumes[0] (target)", "must be an absolute path"),
        ({"volumes": ["data:/d:rx"]}, "volumes[0]", "the mode must be ro or rw"),
        ({"volumes": [f"{PAYLOAD}:/d"]}, "volumes[0] (source, a named volume)", "must be a"),
        ({"command": [f"ok\n{PAYLOAD}"]}, "command[0]", "must not contain NUL, newline"),
        ({"health": f"/h {PAYLOAD}"}, "health", "must be a URL path"),
        ({"host": "Spark;2"}, "host", "must be a host alias"),
        ({"kind": "tv"}, "kind", "expected one of stt, tts, embeddings, vectordb, other"),
        ({"imgae": "x"}, "imgae", "unknown field"),
        ({"start_timeout_s": -1}, "start_timeout_s", "must be 0..86400"),
    ],
)
def test_bad_values_name_the_file_and_key_without_echo(
    tmp_path: Path, bundled: Path, entry: dict[str, Any], where: str, problem: str
) -> None:
    overrides = write(tmp_path / "ov.yaml", {"stt": entry})
    with pytest.raises(services.ServiceError) as err:
        services.load_services(bundled, overrides)
    message = err.value.message
    assert message.startswith(f"{overrides}: services.stt.{where}: {problem}"), message
    assert PAYLOAD not in message and "hf_x" not in message and "a;b" not in message


def test_unsafe_values_are_unsafe_value_errors(tmp_path: Path, bundled: Path) -> None:
    overrides = write(tmp_path / "ov.yaml", {"stt": {"image": PAYLOAD}})
    with pytest.raises(shellsafe.UnsafeValue) as err:
        services.load_services(bundled, overrides)
    assert (err.value.code, err.value.status) == ("UNSAFE_VALUE", 400)


@pytest.mark.parametrize("name", ["Bad", "a.b", "-x", PAYLOAD, 37, "x" * 65])
def test_bad_names_are_refused_without_echo(tmp_path: Path, name: Any) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"services": {name: {"image": "a", "port": 1}}}))
    with pytest.raises(services.ServiceError) as err:
        services.load_services(path)
    assert err.value.message.startswith(f"{path}: services (a name): must match")
    assert str(name) not in err.value.message.removeprefix(str(path))


def test_file_level_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(services.ServiceError, match="services file not found"):
        services.load_services(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [\n")
    with pytest.raises(services.ServiceError, match=r"bad.yaml: not valid YAML at line"):
        services.load_services(bad)
    bad.write_text("models: {}\n")
    with pytest.raises(services.ServiceError, match="only a `services:` mapping"):
        services.load_services(bad)
    ok = write(tmp_path / "ok.yaml", {"a": {"image": "x", "port": 1}})
    assert services.load_services(ok, tmp_path / "absent.yaml").services  # overrides optional


def test_paths_follow_the_environment(tmp_path: Path) -> None:
    class S:
        data_dir = str(tmp_path)

    assert services.service_paths(S(), {}) == (
        services.bundled_path(), tmp_path / services.OVERRIDES_FILE)  # fmt: skip
    env = {"SERVICES_OVERRIDES": str(tmp_path / "o.yaml"), "SPARK_CONTROL_SERVICES_YAML": " "}
    assert services.service_paths(S(), env) == (services.bundled_path(), tmp_path / "o.yaml")


def test_current_turns_a_broken_file_into_a_server_error(tmp_path: Path) -> None:
    class S:
        data_dir = str(tmp_path)

    write(tmp_path / services.OVERRIDES_FILE, {"parakeet": {"image": PAYLOAD}})
    with pytest.raises(services.BrokenServices) as err:
        services.current(S(), {})
    assert err.value.status == 500 and PAYLOAD not in err.value.message
    assert "services.parakeet.image" in err.value.message


def test_docker_argv_round_trips_hostile_values() -> None:
    svc = services.validate_service("svc", {
        "image": "example.org/a:1", "port": 8123, "container_port": 80, "gpus": True,
        "env": {"X": f"'; {PAYLOAD} \"$HOME\""}, "volumes": ["/srv/data:/data:ro"],
        "command": ["--flag", f"`{PAYLOAD}`"],
    })  # fmt: skip
    argv = services.docker_run_argv("svc", svc)
    assert argv[:5] == ["docker", "run", "-d", "--name", "svc"]
    assert argv[argv.index("-p") : argv.index("-p") + 2] == ["-p", "8123:80"]
    assert argv[-3:] == ["example.org/a:1", "--flag", f"`{PAYLOAD}`"]
    assert shlex.split(shellsafe.quote_argv(argv)) == argv


def test_nim_values() -> None:
    nim = services.validate_nim({"image": "nvcr.io/nim/x:1", "container": "nim", "port": 8100,
                                 "volume": "nim-cache"})  # fmt: skip
    assert nim.volume == f"nim-cache:{services.NIM_CACHE}" and nim.login is True
    argv = services.nim_run_argv(nim)
    assert argv[argv.index("-e") + 1] == services.NIM_KEY_ENV  # no value: copied from env
    assert argv[argv.index("-p") : argv.index("-p") + 2] == ["-p", "8100:8000"]
    for raw, problem in [
        ({"image": "docker.io/x"}, "image: a NIM image lives on nvcr.io/"),
        ({"image": f"nvcr.io/{PAYLOAD}"}, "image: must be an image reference"),
        ({"port": True}, "port: expected int, got bool"),
        ({"env": {"NGC_API_KEY": "nvapi-x"}}, "nim.env.NGC_API_KEY: secrets do not belong"),
        ({"volume": "/a/../b"}, "volume (source): must not contain"),
        ({"ngc_key": "nvapi-x"}, "ngc_key: unknown field"),
    ]:
        body = {"image": "nvcr.io/nim/x:1", "container": "nim", "port": 8100, **raw}
        with pytest.raises(services.ServiceError) as err:
            services.validate_nim(body)
        assert err.value.message.startswith(f"request: {problem}"), err.value.message
        assert "nvapi-x" not in err.value.message and PAYLOAD not in err.value.message


def test_nim_script_reads_the_key_from_stdin_only() -> None:
    nim = services.validate_nim({"image": "nvcr.io/nim/x:1", "container": "nim", "port": 8100})
    script = nim_script(nim, "n0nce")
    assert "IFS= read -r __k" in script.splitlines()[0]
    login = next(line for line in script.splitlines() if "docker login" in line)
    assert login.startswith("printf '%s\\n' \"$__k\" | docker login nvcr.io")  # a builtin
    assert "--password-stdin" in login and "'$oauthtoken'" in login
    run = next(line for line in script.splitlines() if "docker run" in line)
    assert run.startswith('NGC_API_KEY="$__k" docker run')
    assert " -e NGC_API_KEY " in run and "NGC_API_KEY=" not in run.split(" ", 1)[1]
    body = {"image": nim.image, "container": "nim", "port": 8100, "login": False}
    no_login = nim_script(services.validate_nim(body), "n")
    assert "docker login" not in no_login


def test_ngc_key_setting_reads_NGC_API_KEY() -> None:
    settings = load_settings(env={"NGC_API_KEY": "nvapi-abc"})
    assert settings.ngc_key == "nvapi-abc"
    assert load_settings(env={}).ngc_key is None
