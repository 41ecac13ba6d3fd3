"""The event-stream response writes exactly what Litestar's ServerSentEvent would."""

from __future__ import annotations

import pytest
from litestar.response import ServerSentEventMessage as M

from app.sse import encode_message

MESSAGES = [
    M(data="plain"),
    M(data='{"kind": "done"}', event="done", id=42),
    M(data="two\nlines\r\nand\rthree", event="event", id="7"),
    M(data=b"bytes \xc3\xa9", event="x"),
    M(data="", event="end", id=3),
    M(data=None, comment="keepalive"),
    M(comment="a\nb", data="d", retry=1500),
    M(data=12, event="ev\nil", id="1\r2"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=range(len(MESSAGES)))
def test_same_bytes_as_litestar(msg: M) -> None:
    assert encode_message(msg) == msg.encode()


def test_a_message_ends_with_a_blank_line() -> None:
    assert encode_message(M(data="x", event="e", id=1)) == b"id: 1\r\nevent: e\r\ndata: x\r\n\r\n"
