"""Settings: file + environment layering, the earlier dashboard's variables, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config import ConfigError, ensure_data_dir, load_settings


def test_no_hosts_means_this_machine_as_local(tmp_path: Path) -> None:
    s = load_settings(env={"SPARK_DATA_DIR": str(tmp_path)})
    assert [(h.alias, h.transport) for h in s.hosts] == [("local", "local")]
    assert s.bind_port == 9999 and s.data_dir == str(tmp_path)


def test_legacy_spark_variables_make_hosts() -> None:
    env = {
        "SPARK1_HOST": "10.0.0.5",
        "SPARK1_USER": "ops",
        "SPARK2_HOST": "10.0.0.6",
        "SPARK2_USER": "ops",
        "SPARK2_PORT": "2222",
        "SSH_KEY_PATH": "/keys/id",
        "SSH_KNOWN_HOSTS": "/keys/known",
        "BIND_PORT": "8080",
    }
    s = load_settings(env=env)
    assert [(h.alias, h.address, h.user, h.port) for h in s.hosts] == [
        ("spark1", "10.0.0.5", "ops", 22),
        ("spark2", "10.0.0.6", "ops", 2222),
    ]
    assert (s.ssh_key_path, s.ssh_known_hosts, s.bind_port) == ("/keys/id", "/keys/known", 8080)


def test_file_then_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("bind_port: 7000\nhosts:\n  gpu-a: {address: 10.1.1.1, user: me, port: 23}\n")
    s = load_settings(env={"SPARK_CONTROL_CONFIG": str(cfg), "SPARK_CONTROL_ACK_WAIT_S": "5"})
    assert s.bind_port == 7000 and s.ack_wait_s == 5.0
    assert [(h.alias, h.port) for h in s.hosts] == [("gpu-a", 23)]
    s = load_settings(str(cfg), env={"BIND_PORT": "7001", "SPARK1_HOST": "h", "SPARK1_USER": "u"})
    assert s.bind_port == 7001 and s.aliases == ["gpu-a", "spark1"]


def test_blank_values_count_as_unset() -> None:
    s = load_settings(env={"BIND_PORT": "  ", "SPARK1_HOST": "", "NATS_URL": ""})
    assert s.bind_port == 9999 and s.nats_url is None and s.aliases == ["local"]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BIND_PORT": "nine"}, "bind_port"),
        ({"BIND_PORT": "70000"}, "bind_port"),
        ({"SPARK1_HOST": "h"}, "hosts.spark1.user"),
        ({"SPARK1_HOST": "h", "SPARK1_USER": "u", "SPARK1_PORT": "x"}, "hosts[0].port"),
        ({"SPARK_CONTROL_ACK_WAIT_S": "0"}, "ack_wait_s"),
    ],
)
def test_errors_name_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert needle in str(err.value)


def test_bad_file_errors_name_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("hosts:\n  Bad.Alias: {address: x, user: y}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: hosts\[0\]\.alias"):
        load_settings(str(cfg), env={})
    cfg.write_text("bind_port: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(str(cfg), env={})
    cfg.write_text("surprise: 1\n")
    with pytest.raises(ConfigError, match="surprise"):
        load_settings(str(cfg), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(str(tmp_path / "missing.yaml"), env={})


def test_data_dir_created_or_clear_error(tmp_path: Path) -> None:
    s = load_settings(env={"SPARK_DATA_DIR": str(tmp_path / "a" / "b")})
    assert ensure_data_dir(s).is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    s = load_settings(env={"SPARK_DATA_DIR": str(blocker / "sub")})
    with pytest.raises(ConfigError, match=r"data_dir: .* not a writable folder"):
        ensure_data_dir(s)
    if os.geteuid() != 0:  # root writes anywhere; the permission case needs a normal user
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not a writable folder"):
            ensure_data_dir(load_settings(env={"SPARK_DATA_DIR": str(ro)}))


def test_cluster_script_is_a_checked_path() -> None:
    assert load_settings(env={}).cluster_script == "$HOME/spark-vllm-docker/launch-cluster.sh"
    ok = load_settings(env={"SPARK_CONTROL_CLUSTER_SCRIPT": "/opt/spark/launch-cluster.sh"})
    assert ok.cluster_script == "/opt/spark/launch-cluster.sh"
    with pytest.raises(ConfigError, match="cluster_script") as err:
        load_settings(env={"SPARK_CONTROL_CLUSTER_SCRIPT": "/opt/x;reboot"})
    assert "reboot" not in str(err.value)


def test_secrets_are_masked_in_repr() -> None:
    s = load_settings(env={"HF_TOKEN": "hf_abcSECRET", "NGC_API_KEY": "nvapi-SECRET",
                           "SPARK_CONTROL_WEBHOOK_SECRET": "whSECRET"})  # fmt: skip
    assert s.hf_token == "hf_abcSECRET" and s.ngc_key == "nvapi-SECRET"
    assert "SECRET" not in repr(s) and "SECRET" not in str(s) and "***" in repr(s)
