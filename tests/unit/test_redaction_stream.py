"""Streaming rehydration: split anywhere (text and SSE bytes), the result equals the
non-streamed one, and only a possible partial token is ever held back."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from app.redaction.rehydrate import rehydrate_text
from app.redaction.stream import SseRehydrator, TextRehydrator
from app.redaction.tokens import MAX_TOKEN_LEN

VALUES = {
    "[PERSON_1]": "Jürgen Müller",
    "[EMAIL_12]": "jm@example.de",
    "[ORG_3]": "Crédit [ORG_4] Épargne",
    "[LITERAL_1]": "[PERSON_1]",
}
TEXT = (
    "Dear [PERSON_1], [[PERSON_1]] wrote to [EMAIL_12] about [ORG_3] and [ORG_4]; "
    "[LITERAL_1] is text, [x] and [PERSON_ and [PERSON_1 stay, 😀 ok [EMAIL_1"
)


def expected(text: str) -> str:
    return rehydrate_text(text, VALUES)[0]


def test_every_two_way_split() -> None:
    want = expected(TEXT)
    for i in range(len(TEXT) + 1):
        rh = TextRehydrator(VALUES)
        assert rh.feed(TEXT[:i]) + rh.feed(TEXT[i:]) + rh.flush() == want, i


def test_holds_back_only_a_possible_token() -> None:
    rh = TextRehydrator(VALUES)
    assert rh.feed("Hello [PER") == "Hello "
    assert rh.pending == "[PER"
    assert rh.feed("SON_1] and [x") == "Jürgen Müller and [x"  # "[x" cannot become a token
    assert rh.feed("[ORG_3") == "" and rh.feed("]!") == "Crédit [ORG_4] Épargne!"
    long_tail = "[" + "A" * 40
    assert rh.feed(long_tail) == long_tail  # longer than any token: released
    assert len(rh.pending) < MAX_TOKEN_LEN


pieces = st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(cuts=pieces, text=st.sampled_from([TEXT, TEXT[5:], "[PERSON_1]" * 5, "no tokens at all"]))
def test_text_any_chunking(cuts: list[int], text: str) -> None:
    rh, out, pos = TextRehydrator(VALUES), [], 0
    for n in cuts:
        out.append(rh.feed(text[pos : pos + n]))
        pos += n
    out.append(rh.feed(text[pos:]))
    out.append(rh.flush())
    assert "".join(out) == expected(text)


def sse(deltas: list[str], finish: bool = True, crlf: bool = False) -> bytes:
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = [
        b"data: "
        + json.dumps(
            {
                **head,
                "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
            }
        ).encode()
    ]
    for d in deltas:
        choice = {"index": 0, "delta": {"content": d}, "finish_reason": None}
        out.append(b"data: " + json.dumps({**head, "choices": [choice]}).encode())
    if finish:
        choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
        out.append(b"data: " + json.dumps({**head, "choices": [choice]}).encode())
    out.append(b": keep-alive comment")
    out.append(b"data: [DONE]")
    return sep.join(out) + sep


def content_of(stream: bytes) -> str:
    text = []
    for event in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


@settings(max_examples=300, deadline=None)
@given(
    text_cuts=pieces,
    byte_cuts=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=80),
    finish=st.booleans(),
    crlf=st.booleans(),
)
def test_sse_any_chunking_equals_non_streamed(
    text_cuts: list[int], byte_cuts: list[int], finish: bool, crlf: bool
) -> None:
    deltas, pos = [], 0
    for n in text_cuts:
        deltas.append(TEXT[pos : pos + n])
        pos += n
    deltas.append(TEXT[pos:])
    raw = sse(deltas, finish, crlf)
    rh, out, pos = SseRehydrator(VALUES), [], 0
    for n in byte_cuts:
        out.append(rh.feed(raw[pos : pos + n]))
        pos += n
    out.append(rh.feed(raw[pos:]))
    out.append(rh.close())
    stream = b"".join(out)
    assert content_of(stream) == expected(TEXT)
    assert stream.rstrip().endswith(b"data: [DONE]")
    assert b"keep-alive" in stream


def test_every_byte_boundary_of_one_split_token() -> None:
    raw = sse(["Hi [PERS", "ON_1], bye"])
    for i in range(len(raw) + 1):
        rh = SseRehydrator(VALUES)
        assert (
            content_of(rh.feed(raw[:i]) + rh.feed(raw[i:]) + rh.close()) == "Hi Jürgen Müller, bye"
        )


def test_events_forwarded_as_soon_as_complete() -> None:
    rh = SseRehydrator(VALUES)
    raw = sse(["Hello ", "[PERSON", "_1] there"], finish=True)
    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
    outs = [rh.feed(e) for e in events]
    assert all(outs), "every complete event produces output at once"
    assert content_of(outs[1]) == "Hello "
    assert content_of(outs[2]) == ""  # the partial token is the only thing held
    assert content_of(outs[3]) == "Jürgen Müller there"


def test_untouched_events_pass_through_byte_for_byte() -> None:
    rh = SseRehydrator(VALUES)
    event = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"plain"}}]}\n\n'
    assert rh.feed(event) == event


def test_held_text_released_in_finish_chunk_and_at_done() -> None:
    rh = SseRehydrator(VALUES)
    out = rh.feed(sse(["end [PERSON_1"], finish=True))
    assert content_of(out) == "end [PERSON_1"
    rh = SseRehydrator(VALUES)
    out = rh.feed(sse(["end [PERSON_1"], finish=False))
    assert content_of(out) == "end [PERSON_1" and out.rstrip().endswith(b"[DONE]")
    rh = SseRehydrator(VALUES)
    out = (
        rh.feed(b'data: {"choices":[{"index":0,"delta":{"content":"x [ORG_3"}}]}\n\n') + rh.close()
    )
    assert content_of(out) == "x [ORG_3"


def test_tool_call_arguments_and_completions_text() -> None:
    rh = SseRehydrator({"[PERSON_1]": 'Ana "Q"'})
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": '{"who": "[PERS'}}]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ON_1]"}'}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "text": "[PERSON_1]!", "finish_reason": "stop"}]},
    ]
    out = b"".join(rh.feed(b"data: " + json.dumps(c).encode() + b"\n\n") for c in chunks)
    args, text = "", ""
    for event in out.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                for call in (choice.get("delta") or {}).get("tool_calls") or []:
                    args += call["function"]["arguments"]
                text += choice.get("text") or ""
    assert json.loads(args) == {"who": 'Ana "Q"'} and text == 'Ana "Q"!'


def test_other_fields_of_a_rewritten_event_are_kept() -> None:
    rh = SseRehydrator(VALUES)
    data = b'{"choices":[{"index":0,"delta":{"content":"[ORG_3]"}}]}'
    out = rh.feed(b"id: 7\nevent: chunk\ndata: " + data + b"\n\n")
    head, _, rest = out.partition(b"data: ")
    assert head == b"id: 7\nevent: chunk\n"
    assert content_of(b"data: " + rest) == VALUES["[ORG_3]"]
