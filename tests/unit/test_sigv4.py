"""The direct SigV4 presigner is byte-identical to botocore's generate_presigned_url."""

from __future__ import annotations

import calendar
import datetime
from typing import Any
from unittest import mock

import botocore.session
import pytest
from botocore.config import Config

from app.signer.sigv4 import Credentials, Presigner

FROZEN = datetime.datetime(2026, 3, 4, 5, 6, 7)
NOW = float(calendar.timegm(FROZEN.timetuple()))
KEYS = [
    "plain/key.bin",
    "with space/and more spaces.txt",
    "unicode/ünïcødé/模型.safetensors",
    "plus+equals=tilde~percent%25/x",
    "odd/!$&'()*,;:@[]^`{}|\"<>#?",
]
ENDPOINTS = [
    ("http://127.0.0.1:8333", "path"),
    ("https://s3.example.com", "path"),
    ("https://s3.example.com:8443", "virtual"),
    ("http://minio.lan", "virtual"),
    (None, "path"),
    (None, "virtual"),
]


def botocore_client(endpoint: str | None, style: str, region: str, token: str | None) -> Any:
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalr/XUtnFEMI+K7MDENG=bPxRfiCY",
        aws_session_token=token,
        config=Config(signature_version="s3v4", s3={"addressing_style": style}),
    )


def ours(endpoint: str | None, style: Any, region: str, token: str | None) -> Presigner:
    creds = Credentials("AKIDEXAMPLE", "wJalr/XUtnFEMI+K7MDENG=bPxRfiCY", token)
    return Presigner(creds, region=region, endpoint_url=endpoint, addressing=style)


@pytest.mark.parametrize(("endpoint", "style"), ENDPOINTS)
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(("region", "token"), [("us-east-1", None), ("eu-west-3", "tok/+=en")])
def test_matches_botocore(
    endpoint: str | None, style: str, key: str, region: str, token: str | None
) -> None:
    client = botocore_client(endpoint, style, region, token)
    mine = ours(endpoint, style, region, token)
    bucket, upload = "models-bkt", "2~Up/lo+ad=ID"
    expires = 604_800

    def ref(op: str, **params: Any) -> str:
        with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
            url: str = client.generate_presigned_url(
                op, Params={"Bucket": bucket, "Key": key, **params}, ExpiresIn=expires
            )
            return url

    assert mine.get_url(bucket, key, expires, NOW) == ref("get_object")
    assert mine.put_url(bucket, key, expires, NOW) == ref("put_object")
    parts = mine.part_urls(bucket, key, upload, 3, expires, NOW)
    for n, url in enumerate(parts, start=1):
        assert url == ref("upload_part", UploadId=upload, PartNumber=n)
    assert mine.complete_url(bucket, key, upload, expires, NOW) == ref(
        "complete_multipart_upload", UploadId=upload
    )
    assert mine.abort_url(bucket, key, upload, expires, NOW) == ref(
        "abort_multipart_upload", UploadId=upload
    )
    assert mine.list_parts_url(bucket, key, upload, expires, NOW) == ref(
        "list_parts", UploadId=upload
    )


@pytest.mark.parametrize(("endpoint", "style"), ENDPOINTS)
@pytest.mark.parametrize(
    "bucket", ["bk", "my.dotted.bucket", "a--b", "bkt-", "Upper-Bkt", "192.168.1.10", "x" * 63]
)
def test_bucket_names_pick_the_style_botocore_picks(
    endpoint: str | None, style: str, bucket: str
) -> None:
    client = botocore_client(endpoint, style, "us-west-2", None)
    mine = ours(endpoint, style, "us-west-2", None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        ref = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "k/x"}, ExpiresIn=900
        )
    assert mine.get_url(bucket, "k/x", 900, NOW) == ref


def test_part_fast_path_equals_generic() -> None:
    p = ours("http://127.0.0.1:9000", "path", "us-east-1", None)
    fast = p.part_urls("b-1", "k", "u", 25, 60, NOW)
    generic = p.presign_many(
        "PUT",
        "b-1",
        "k",
        [[("uploadId", "u"), ("partNumber", str(n))] for n in range(1, 26)],
        60,
        NOW,
    )
    assert fast == generic


def test_expiry_bounds_and_repr_hide_secret() -> None:
    p = ours(None, "path", "us-east-1", "session-secret")
    with pytest.raises(ValueError):
        p.get_url("b", "k", 604_801, NOW)
    with pytest.raises(ValueError):
        p.get_url("b", "k", 0, NOW)
    assert "wJalr" not in repr(p) and "session-secret" not in repr(p)
    assert "wJalr" not in repr(p._creds) and "session-secret" not in repr(p._creds)


def test_signing_key_cached_per_day() -> None:
    p = ours(None, "path", "us-east-1", None)
    first = p.signing_key("20260304")
    assert p.signing_key("20260304") is first
    assert p.signing_key("20260305") != first
