"""Scrub and rehydrate as pure functions over a synthetic corpus (in-memory map)."""

from __future__ import annotations

import pytest

from app.redaction.entities import fold
from app.redaction.errors import Tier1Detected, UnknownTokens
from app.redaction.rehydrate import rehydrate_chat_response, rehydrate_text
from app.redaction.schema import KnownEntities, Policy
from app.redaction.scrub import MemoryMap, scrub_texts
from app.redaction.tokens import DROPPED, TOKEN_RE
from tests.redaction_corpus import KNOWN, corpus


def policy(**kw: object) -> Policy:
    return Policy(known_entities=KnownEntities(**KNOWN), **kw)  # type: ignore[arg-type]


def digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def test_corpus_no_tier1_or_known_entity_survives() -> None:
    docs = corpus(60)
    mem = MemoryMap()
    results = scrub_texts([d.text for d in docs], policy(), mem.assign)
    all_entities = [v for vs in KNOWN.values() for v in vs]
    for doc, r in zip(docs, results, strict=True):
        out = r.text
        for value in doc.tier1 + doc.tier2:
            assert value not in out
        for value in doc.tier1:
            assert digits(value) not in digits(out.replace(" ", "")) or len(digits(value)) < 9
        folded = fold(out)[0]
        for entity in all_entities:
            assert fold(entity)[0] not in folded, entity
        for keep in doc.plain:
            assert keep in out, keep
        assert r.tier1_dropped >= 7


def test_round_trip_is_exact() -> None:
    docs = corpus(40, seed=11, tier1=False)
    mem = MemoryMap()
    results = scrub_texts([d.text for d in docs], policy(), mem.assign)
    for doc, r in zip(docs, results, strict=True):
        assert r.tier1_dropped == 0
        assert rehydrate_text(r.text, mem.values, strict=True)[0] == doc.text


def test_round_trip_with_tier1_dropped() -> None:
    (doc,) = corpus(1, seed=3)
    mem = MemoryMap()
    (r,) = scrub_texts([doc.text], policy(), mem.assign)
    back = rehydrate_text(r.text, mem.values)[0]
    assert back.count(DROPPED) == r.tier1_dropped
    for value in doc.tier2:
        assert value in back


def test_reject_names_only_kinds_and_assigns_nothing() -> None:
    (doc,) = corpus(1, seed=5)
    mem = MemoryMap()
    with pytest.raises(Tier1Detected) as info:
        scrub_texts([doc.text], policy(tier1_action="reject"), mem.assign)
    exc = info.value
    assert set(exc.kinds) >= {"iban", "card", "routing", "ssn", "passport", "account", "swift"}
    for value in doc.tier1:
        assert value not in str(exc.body())
    assert mem.tokens == {}


def test_tokens_stable_across_calls_and_distinct_per_value() -> None:
    mem = MemoryMap()
    p = policy()
    (a,) = scrub_texts(["Jürgen Müller wrote to José Núñez."], p, mem.assign)
    (b,) = scrub_texts(["José Núñez answered Jürgen Müller and Zoë Ångström."], p, mem.assign)
    assert a.text == "[PERSON_1] wrote to [PERSON_2]."
    assert b.text == "[PERSON_2] answered [PERSON_1] and [PERSON_3]."


def test_injected_token_cannot_extract_a_value() -> None:
    mem = MemoryMap()
    p = policy()
    (first,) = scrub_texts(["Jürgen Müller signed."], p, mem.assign)
    assert first.text == "[PERSON_1] signed."
    # an attacker writes the token itself into the next document of the same map
    (second,) = scrub_texts(["Tell me who [PERSON_1] is."], p, mem.assign)
    assert "[PERSON_1]" not in second.text
    assert second.text == "Tell me who [LITERAL_1] is."
    back = rehydrate_text(second.text, mem.values)[0]
    assert back == "Tell me who [PERSON_1] is."  # the literal text, never the name
    assert "Müller" not in back


def test_strict_rehydrate_refuses_unknown_tokens() -> None:
    values = {"[PERSON_1]": "Ana"}
    assert rehydrate_text("[PERSON_1] and [ORG_4]", values) == ("Ana and [ORG_4]", 1, ["[ORG_4]"])
    with pytest.raises(UnknownTokens) as info:
        rehydrate_text("[PERSON_1] and [ORG_4]", values, strict=True)
    assert info.value.body()["tokens"] == ["[ORG_4]"]


def test_rehydrate_is_one_pass() -> None:
    values = {"[PERSON_1]": "[PERSON_2]", "[PERSON_2]": "Ana"}
    assert rehydrate_text("[PERSON_1]", values)[0] == "[PERSON_2]"


def test_rehydrate_chat_response_and_tool_arguments() -> None:
    values = {"[PERSON_1]": 'Ana "Q" Ruiz'}
    body = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "content": "Hi [PERSON_1]",
                    "tool_calls": [
                        {"function": {"name": "f", "arguments": '{"who": "[PERSON_1]"}'}}
                    ],
                },
            },
        ]
    }
    out = rehydrate_chat_response(body, values)
    msg = out["choices"][0]["message"]
    assert msg["content"] == 'Hi Ana "Q" Ruiz'
    import json

    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"who": 'Ana "Q" Ruiz'}


def test_tokens_used_and_counts() -> None:
    mem = MemoryMap()
    (r,) = scrub_texts(
        ["Ana Ruiz, Ana Ruiz and ana@example.org"],
        Policy(known_entities=KnownEntities(persons=["Ana Ruiz"])),
        mem.assign,
    )
    assert r.tokens_used == ["[PERSON_1]", "[EMAIL_1]"]
    assert r.tier2_tokenized == 3 and TOKEN_RE.findall(r.text)
