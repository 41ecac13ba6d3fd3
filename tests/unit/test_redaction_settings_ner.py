"""Redaction settings (names, secrets, validation) and the NER client's parsing and filters."""

from __future__ import annotations

import pytest

from app.config import ConfigError, load_settings
from app.redaction.ner import _keep, _parse, technical
from app.redaction.service import map_path, ner_url, policy_from_headers


def test_settings_names_defaults_and_secret(tmp_path: object) -> None:
    s = load_settings(env={"REDACTION_MAP_DB": "/srv/maps.db", "REDACTION_KEY": "k-123-secret"})
    assert s.redaction_map_db == "/srv/maps.db" and s.redaction_key == "k-123-secret"
    assert "k-123-secret" not in repr(s)
    d = load_settings(env={"SPARK_DATA_DIR": "/data/x", "REDACTION_MAP_DB": "  "})
    assert str(map_path(d)) == "/data/x/redaction_maps.db"  # blank falls back to the default
    assert ner_url(d) == "http://127.0.0.1:9999/v1"
    t = load_settings(env={"SPARK_CONTROL_REDACTION_NER_URL": "http://ner:8000/v1"})
    assert ner_url(t) == "http://ner:8000/v1"


@pytest.mark.parametrize(
    "env",
    [
        {"SPARK_CONTROL_REDACTION_TTL_S": "0"},
        {"SPARK_CONTROL_REDACTION_NER_URL": "ner:8000"},
        {"SPARK_CONTROL_REDACTION_NER_TIMEOUT_S": "-1"},
    ],
)
def test_bad_settings_name_the_key(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert "redaction_" in str(info.value)


def test_policy_from_headers() -> None:
    assert policy_from_headers({}) is None
    assert policy_from_headers({"x-spark-redaction": "off"}) is None
    on = policy_from_headers({"x-spark-redaction": "on", "x-spark-redaction-map": "rm_abc"})
    assert on is not None and on.map_handle == "rm_abc" and on.tier1_action == "drop"
    custom = policy_from_headers(
        {"x-spark-redaction": '{"tier1_action": "reject", "known_entities": {"persons": ["A B"]}}'}
    )
    assert custom is not None and custom.tier1_action == "reject"
    assert custom.known_entities.persons == ["A B"]


def test_ner_answer_parsing_and_filters() -> None:
    text = "Xavier Quill of Globex met [PERSON] on S3 and EKS with a C4 model v2.1"
    found = _parse(
        'Sure: {"persons": ["Xavier Quill", "[PERSON]", "Nobody Here"], '
        '"orgs": ["Globex", "S3", "EKS", "C4"]}'
    )
    kept = [(k, n) for k, n in found if _keep(n, text)]
    assert kept == [("PERSON", "Xavier Quill"), ("ORG", "Globex")]
    for tech in ("S3", "EKS", "C4", "H100", "v2.1", "0.6.3", "9f86d081884c"):
        assert technical(tech)
    assert not technical("IBM") and not technical("Globex")
    for bad in ("no json here", '{"persons": "x"}', "[]"):
        with pytest.raises(ValueError):
            _parse(bad)


def test_labels_are_bounded_and_named_in_the_error() -> None:
    from app.redaction.errors import BadRedactionRequest
    from app.redaction.schema import decode_scrub

    ok = decode_scrub(b'{"task_id": 7, "actor": "bot", "items": [{"id": 1, "text": "x"}]}')
    assert ok.task_id == 7 and ok.items[0].id == 1
    with pytest.raises(BadRedactionRequest) as info:
        decode_scrub(b'{"actor": "' + b"a" * 300 + b'", "items": []}')
    assert "actor" in info.value.message and "aaaa" not in info.value.message
    with pytest.raises(BadRedactionRequest) as info:
        decode_scrub(b'{"items": [{"id": 1, "text": 5}]}')
    assert "text" in info.value.message


def test_client_policy_is_enforced() -> None:
    from app.redaction.service import policy_for

    s = load_settings(env={"SPARK_CONTROL_REDACTION_CLIENTS": "tok-a=on, tok-b=on"})
    assert "tok-a" not in repr(s)
    enforced = policy_for(s, {"authorization": "Bearer tok-a", "x-spark-redaction": "off"})
    assert enforced is not None and enforced.tier1_action == "drop"
    assert policy_for(s, {"authorization": "Bearer other"}) is None
    asked = policy_for(s, {"authorization": "Bearer other", "x-spark-redaction": "on"})
    assert asked is not None
    with_map = policy_for(s, {"authorization": "Bearer tok-b", "x-spark-redaction-map": "rm_x"})
    assert with_map is not None and with_map.map_handle == "rm_x"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"SPARK_CONTROL_REDACTION_CLIENTS": "tok-c=maybe"})
    assert "redaction_clients[1]" in str(info.value) and "tok-c" not in str(info.value)
