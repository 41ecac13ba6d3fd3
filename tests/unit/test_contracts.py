"""The subject builders refuse tokens that would change a subject's shape."""

from __future__ import annotations

import msgspec
import pytest

from app import contracts as c


def test_subjects_have_the_documented_shape() -> None:
    assert c.cmd_host("spark1", "probe") == "spark.cmd.host.spark1.probe"
    assert c.evt_job("abc_1", "log") == "spark.evt.job.abc_1.log"
    assert c.evt_host("spark2", "down") == "spark.evt.host.spark2.down"
    assert c.blob_sign("ns-a") == "spark.cmd.blob.sign.ns-a"
    assert c.parse_cmd_subject("spark.cmd.host.spark1.probe") == ("spark1", "probe")


@pytest.mark.parametrize("bad", ["a.b", "a b", "*", ">", "", "x" * 65, "é", "a\nb"])
def test_bad_tokens_refused(bad: str) -> None:
    with pytest.raises(c.BadToken):
        c.evt_job(bad, "log")
    with pytest.raises(c.BadToken):
        c.cmd_host(bad, "probe")


@pytest.mark.parametrize("bad", ["Spark1", "1spark", "spark_1.x", "spark-", "", "a" * 33])
def test_host_alias_rules(bad: str) -> None:
    if bad == "spark-":
        assert c.host_alias(bad) == bad  # a trailing dash is still one safe token
        return
    with pytest.raises(c.BadToken):
        c.host_alias(bad)


def test_command_decoding() -> None:
    assert c.decode_command(b"") == c.Command()
    assert c.decode_command(b'{"job_id":"j1","args":{"a":1}}').args == {"a": 1}
    with pytest.raises(msgspec.ValidationError):
        c.decode_command(b'{"unknown": 1}')
    with pytest.raises(msgspec.DecodeError):
        c.decode_command(b"{not json")
    with pytest.raises(msgspec.ValidationError):
        c.decode_command(b" " * (c.MAX_COMMAND_BYTES + 1))
