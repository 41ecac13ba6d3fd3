"""The signer's settings: the issue's environment names, the token map, checks that name the
key (never a token), and secrets masked in repr."""

from __future__ import annotations

import pytest

from app.config import ConfigError, load_settings

ENV = {
    "SPARK_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
    "SPARK_S3_REGION": "eu-west-3",
    "SPARK_S3_BUCKET": "models",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "very-secret-key",
    "AWS_SESSION_TOKEN": "session-secret",
    "SPARK_SIGNER_TOKENS": "tokA-123=ns-a, tokB-456=ns-b",
    "SPARK_SIGNER_GET_ALLOW": "s3://shared-bkt/parents/, s3://models/public/",
}


def test_environment_names_of_the_issue() -> None:
    s = load_settings(env=ENV)
    assert (s.s3_endpoint_url, s.s3_region, s.s3_bucket) == (
        "http://127.0.0.1:8333",
        "eu-west-3",
        "models",
    )
    assert (s.s3_access_key_id, s.s3_secret_access_key) == ("AKIDEXAMPLE", "very-secret-key")
    assert s.signer_tokens == {"tokA-123": "ns-a", "tokB-456": "ns-b"}
    assert s.signer_get_allow == ["s3://shared-bkt/parents/", "s3://models/public/"]
    assert (s.signer_prefix, s.signer_ttl_s, s.s3_addressing_style) == (
        "projects/{namespace}/",
        604_800,
        "auto",
    )
    text = repr(s)
    for secret in ("very-secret-key", "session-secret", "tokA-123", "tokB-456"):
        assert secret not in text
    assert "AKIDEXAMPLE" in text  # the key id is not a secret


def test_defaults_without_the_store() -> None:
    s = load_settings(env={})
    assert s.s3_region == "us-east-1" and s.s3_bucket is None and s.signer_tokens == {}


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SPARK_SIGNER_TOKENS": "tokA-123"}, "SPARK_SIGNER_TOKENS: entry 1"),
        ({"SPARK_SIGNER_TOKENS": "a=ns-a,=x"}, "SPARK_SIGNER_TOKENS: entry 2"),
        ({"SPARK_SIGNER_TOKENS": "tokA-123=ns.a"}, "signer_tokens[1]"),
        ({"SPARK_SIGNER_TTL_S": "604801"}, "signer_ttl_s"),
        ({"SPARK_SIGNER_TTL_S": "0"}, "signer_ttl_s"),
        ({"SPARK_SIGNER_PREFIX": "projects/"}, "signer_prefix"),
        ({"SPARK_SIGNER_PREFIX": "p/{namespace}"}, "signer_prefix"),
        ({"SPARK_SIGNER_GET_ALLOW": "https://x/y"}, "signer_get_allow[0]"),
        ({"SPARK_S3_ENDPOINT_URL": "ftp://x"}, "s3_endpoint_url"),
        ({"SPARK_TRANSFER_NAMESPACE": "a/b"}, "transfer_namespace"),
    ],
)
def test_bad_values_name_the_key_not_the_token(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert names in str(info.value)
    assert "tokA-123" not in str(info.value)
