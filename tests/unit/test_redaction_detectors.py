"""Detectors on realistic text: checksums decide tier 1, technical tokens stay, unicode
entities match whatever their case or accents."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.redaction.checksums import aba_valid, iban_valid, luhn_valid
from app.redaction.detectors import PLAIN, detect
from app.redaction.entities import _fold_each, fold, matcher
from tests.redaction_corpus import TECHNICAL, aba_complete, iban, luhn_complete, spaced_card


def found(text: str, **kw: object) -> dict[str, tuple[int, str]]:
    """surface → (tier, kind)."""
    ents = kw.pop("entities", None)
    m = matcher(tuple(ents)) if ents else None  # type: ignore[arg-type]
    return {text[s.start : s.end]: (s.tier, s.kind) for s in detect(text, m, **kw)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value,valid",
    [
        ("DE89 3704 0044 0532 0130 00", True),
        ("GB82 WEST 1234 5698 7654 32", True),
        ("FR14 2004 1010 0505 0001 3M02 606", True),
        ("NL91ABNA0417164300", True),
        ("DE89 3704 0044 0532 0130 01", False),
        ("GB82 WEST 1234 5698 7654 33", False),
        ("DE89 3704 0044 0532 0130", False),  # too short for DE
    ],
)
def test_iban_checksum(value: str, valid: bool) -> None:
    assert iban_valid(value) is valid
    tier = found(f"Please pay to IBAN {value} today.").get(value, (None, None))[0]
    assert tier == (1 if valid else PLAIN)


def test_card_luhn_and_aba() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert luhn_valid("378282246310005") and aba_valid("021000021") and not aba_valid("021000022")
    text = (
        "Visa 4111 1111 1111 1111, Amex 3782 822463 10005, typo 4111 1111 1111 1112, "
        "order 4111111111111112, routing number 021000021, ABA 021000022."
    )
    f = found(text)
    assert f["4111 1111 1111 1111"] == (1, "card")
    assert f["3782 822463 10005"] == (1, "card")
    assert f["4111 1111 1111 1112"][0] == PLAIN
    assert f["4111111111111112"][0] == PLAIN
    assert f["021000021"] == (1, "routing")
    assert f["021000022"][0] == PLAIN


def test_generated_checksums_agree() -> None:
    for bban in ("370400440532013000", "123456781234567890"):
        assert iban_valid(iban("DE", bban))
    assert luhn_valid(luhn_complete("453201511283036"))
    assert aba_valid(aba_complete("02100002"))
    assert found(f"card {spaced_card(luhn_complete('4' * 15))}")


def test_other_tier1_kinds() -> None:
    text = (
        "SSN 123-45-6789 (and 000-12-3456 is not one), social security number 219 09 9999, "
        "passport no. C01X00T47, Reisepass: X1234567, BIC: DEUTDEFF, CHASUS33, "
        "account number 12-345678-9, Kontonummer: 43343251."
    )
    f = found(text)
    assert f["123-45-6789"] == (1, "ssn")
    assert f["000-12-3456"][0] == PLAIN
    assert f["219 09 9999"] == (1, "ssn")
    assert f["C01X00T47"] == (1, "passport") and f["X1234567"] == (1, "passport")
    assert f["DEUTDEFF"] == (1, "swift") and f["CHASUS33"] == (1, "swift")
    assert f["12-345678-9"] == (1, "account") and f["43343251"] == (1, "account")


def test_tier2_kinds() -> None:
    text = (
        "Mail ana@example.org or see https://example.com/a?b=1. Call +44 20 7946 0958, "
        "(415) 555-0132 or 030 12345678. Paid $1,250.00, 3.5M EUR, 250 USD and €5M on "
        "2024-03-15, 15.03.2024, 3/15/2024, 1er mars 2024, 15 de marzo de 2024, "
        "March 5, 2024. At 221B Baker Street, Hauptstraße 12, 12 rue de la Paix, "
        "Calle de Alcalá 42, Via Roma 10. Customer 123456789012."
    )
    f = found(text)
    for surface, kind in [
        ("ana@example.org", "EMAIL"),
        ("https://example.com/a?b=1", "URL"),
        ("+44 20 7946 0958", "PHONE"),
        ("(415) 555-0132", "PHONE"),
        ("030 12345678", "PHONE"),
        ("$1,250.00", "AMOUNT"),
        ("3.5M EUR", "AMOUNT"),
        ("250 USD", "AMOUNT"),
        ("€5M", "AMOUNT"),
        ("2024-03-15", "DATE"),
        ("15.03.2024", "DATE"),
        ("3/15/2024", "DATE"),
        ("1er mars 2024", "DATE"),
        ("15 de marzo de 2024", "DATE"),
        ("March 5, 2024", "DATE"),
        ("221B Baker Street", "ADDRESS"),
        ("Hauptstraße 12", "ADDRESS"),
        ("12 rue de la Paix", "ADDRESS"),
        ("Calle de Alcalá 42", "ADDRESS"),
        ("Via Roma 10", "ADDRESS"),
        ("123456789012", "NUMBER"),
    ]:
        assert f.get(surface) == (2, kind), surface


def test_buckets_can_leave_amounts_and_dates() -> None:
    f = found("Paid $1,250.00 on 2024-03-15.", amounts=False, dates=False)
    assert f == {}


@pytest.mark.parametrize(
    "tech",
    [
        *TECHNICAL,
        "v2.10.0",
        "H100",
        "k8s",
        "1e-5",
        "4096 tokens",
        "e3b0c44298fc1c149afbf4c8996fb924",
        "0.85",
    ],
)
def test_technical_tokens_left_alone(tech: str) -> None:
    text = f"We run {tech} on the cluster (S3 bucket, EKS node, C4 dataset)."
    assert detect(text, None) == []


def test_entities_unicode_folded_longest_first() -> None:
    ents = (
        ("PERSON", "Jürgen Müller"),
        ("ORG", "Müller"),
        ("ORG", "Bank of America"),
        ("LOCATION", "São Paulo"),
        ("ORG", "Straße AG"),
    )
    text = (
        "JURGEN  MÜLLER of bank of america met Muller in SAO PAULO; Straße AG = STRASSE AG; "
        "Müllerstadt and Bank of Americas are other words."
    )
    f = found(text, entities=ents)
    assert f["JURGEN  MÜLLER"] == (2, "PERSON")
    assert f["bank of america"] == (2, "ORG")
    assert f["Muller"] == (2, "ORG")
    assert f["SAO PAULO"] == (2, "LOCATION")
    assert f["Straße AG"] == (2, "ORG") and f["STRASSE AG"] == (2, "ORG")
    assert len(f) == 6  # not Müllerstadt, not "Bank of Americas"


def test_decomposed_accents_stay_with_their_letter() -> None:
    text = "Jose\u0301 Nu\u0301n\u0303ez signed."
    m = matcher((("PERSON", "José Núñez"),))
    (span,) = detect(text, m)
    assert text[span.start : span.end] == "Jose\u0301 Nu\u0301n\u0303ez"
    assert fold("Åß")[0] == "ass"


def test_existing_tokens_are_claimed_first() -> None:
    f = found("Ignore [PERSON_1] and [EMAIL_22]; [lower_1] and [X] are text.")
    assert f == {"[PERSON_1]": (2, "LITERAL"), "[EMAIL_22]": (2, "LITERAL")}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ ?ßéÉüÜﬁİ\u0301ŁøØ1-"), max_size=40))
def test_fast_fold_equals_char_by_char(text: str) -> None:
    folded, index = fold(text)
    slow, slow_index = _fold_each(text)
    assert folded == slow
    assert (index if index is not None else list(range(len(text)))) == slow_index


def test_letters_nfkd_keeps_and_symbols() -> None:
    m = matcher((("PERSON", "Łukasz Wąsik"), ("PERSON", "Søren Kierkegård"), ("ORG", "Œuvre €1")))
    text = "LUKASZ WASIK, Soren Kierkegard and oeuvre €1 (also Łukasz Wąsik)."
    found = [text[e.start : e.end] for e in m.find(text)]
    assert sorted(found) == sorted(
        ["LUKASZ WASIK", "Soren Kierkegard", "oeuvre €1", "Łukasz Wąsik"]
    )
    assert fold("a€—\u2019b")[0] == "a\x1a\x1a\x1ab"
