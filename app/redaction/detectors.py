"""Rule-based detectors: which spans of a text are tier 1 (dropped or refused) and which are
tier 2 (tokenised), resolved by priority so no two spans overlap.

Checksummed tier-1 shapes (IBAN, card, routing) that fail their checksum are ordinary numbers:
they are claimed as *plain* so no weaker detector redacts them either. Technical tokens
(``S3``, ``EKS``, ``C4``, versions, hashes) match none of the patterns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from app.redaction.checksums import IBAN_LENGTHS, aba_valid, iban_valid, luhn_valid, ssn_valid
from app.redaction.entities import EntityMatcher
from app.redaction.tokens import LITERAL, TOKEN_RE

PLAIN = 0
"""Tier of a span kept as it is (a checksum-invalid number)."""


class Span(NamedTuple):
    start: int
    end: int
    tier: int  # 1: drop/refuse, 2: tokenise, 0: plain
    kind: str  # tier 1: iban, card, …; tier 2: the token type (PERSON, EMAIL, …)


# --- tier 1 ------------------------------------------------------------------------------

_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{2,4}){3,8}(?![a-z0-9])")
_CARD = re.compile(
    r"(?<![\w.,+-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5}|\d{13,19})"
    r"(?![\w-]|[.,]\d)"
)
_SSN_DASHED = re.compile(r"(?<![\w-])(\d{3})-(\d{2})-(\d{4})(?![\w-])")
_CUE_TAIL = r"(?:\s*(?:number|no\.?|nr\.?|num\.?|n°|#|numéro|número|numero|nummer))?\s*[:#]?\s*"
_SSN_CUED = re.compile(
    r"(?i:\b(?:ssn|social security(?: number)?|soc\.? sec\.?)" + _CUE_TAIL + r")"
    r"(\d{3})[ -]?(\d{2})[ -]?(\d{4})(?![\w-])"
)
_ROUTING = re.compile(
    r"(?i:\b(?:routing|aba|rtn|transit)(?:\s+(?:transit|number|no\.?|#))*\s*[:#]?\s*)"
    r"(\d{9})(?![\w-])"
)
_ACCOUNT = re.compile(
    r"(?i:\b(?:account|acct\.?|a/c|konto(?:nummer)?|kontonr\.?|compte|cuenta|conto|rekening)"
    + _CUE_TAIL
    + r")(\d[\d -]{4,22}\d)(?![\w-])"
)
_PASSPORT = re.compile(
    r"(?i:\b(?:passport|reisepass|passnummer|passeport|pasaporte|passaporto|paszport)"
    + _CUE_TAIL
    + r")([A-Z0-9]{6,9})(?![\w-])"
)
_COUNTRIES = frozenset(
    set(IBAN_LENGTHS)
    | set(
        [
            "US",
            "CA",
            "MX",
            "AR",
            "CL",
            "CO",
            "PE",
            "VE",
            "AU",
            "NZ",
            "JP",
            "CN",
            "HK",
            "TW",
            "KR",
            "SG",
            "MY",
            "TH",
            "VN",
            "ID",
            "PH",
            "IN",
            "LK",
            "BD",
            "NP",
            "ZA",
            "NG",
            "KE",
            "GH",
            "MA",
            "DZ",
            "EG",
            "ET",
            "TZ",
            "UG",
            "RU",
            "UZ",
            "KG",
            "TJ",
            "AM",
            "IR",
            "AF",
            "OM",
            "YE",
        ]
    )
)
_SWIFT = re.compile(r"(?<![\w-])([A-Z]{4})([A-Z]{2})([A-Z0-9]{2})([A-Z0-9]{3})?(?![\w-])")
_SWIFT_CUE = re.compile(r"(?i:\b(?:swift|bic)\b)")


def _iban(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        want = IBAN_LENGTHS.get(m.group()[:2])
        compact = m.group().replace(" ", "")
        if want is None or len(compact) < want:
            if len(compact) >= 15 and sum(c.isdigit() for c in compact) >= 8:
                yield Span(m.start(), m.end(), PLAIN, "iban")
            continue
        # an IBAN has a fixed length per country: stop there, not at the next capital word
        end, seen = m.start(), 0
        while seen < want:
            if text[end] != " ":
                seen += 1
            end += 1
        tier = 1 if iban_valid(text[m.start() : end]) else PLAIN
        yield Span(m.start(), end, tier, "iban")


def _cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        yield Span(m.start(), m.end(), 1 if luhn_valid(digits) else PLAIN, "card")


def _ssn(text: str) -> Iterator[Span]:
    for m in _SSN_DASHED.finditer(text):
        yield Span(m.start(), m.end(), 1 if ssn_valid(*m.groups()) else PLAIN, "ssn")
    for m in _SSN_CUED.finditer(text):
        yield Span(m.start(1), m.end(3), 1 if ssn_valid(*m.groups()) else PLAIN, "ssn")


def _routing(text: str) -> Iterator[Span]:
    for m in _ROUTING.finditer(text):
        yield Span(m.start(1), m.end(1), 1 if aba_valid(m.group(1)) else PLAIN, "routing")


def _account(text: str) -> Iterator[Span]:
    for m in _ACCOUNT.finditer(text):
        if sum(c.isdigit() for c in m.group(1)) >= 6:
            yield Span(m.start(1), m.end(1), 1, "account")


def _passport(text: str) -> Iterator[Span]:
    for m in _PASSPORT.finditer(text):
        if any(c.isdigit() for c in m.group(1)):
            yield Span(m.start(1), m.end(1), 1, "passport")


def _swift(text: str) -> Iterator[Span]:
    for m in _SWIFT.finditer(text):
        if m.group(2) not in _COUNTRIES:
            continue
        cued = _SWIFT_CUE.search(text, max(0, m.start() - 40), m.start()) is not None
        if cued or any(c.isdigit() for c in m.group(3)):
            yield Span(m.start(), m.end(), 1, "swift")


TIER1 = (_iban, _cards, _ssn, _routing, _account, _passport, _swift)

# --- tier 2 ------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])")
_URL = re.compile(r"(?i:\b(?:https?://|www\.))[^\s<>\"'`]+")
_URL_TRAIL = ".,;:!?)]}'\""
_PHONES = (
    re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\w])"),
    re.compile(r"(?<![\w])\(\d{3}\) ?\d{3}[ .-]\d{4}(?![\w])"),
    re.compile(r"(?<![\w.-])\d{3}([.-])\d{3}\1\d{4}(?![\w]|[.-]\d)"),
    re.compile(r"(?<![\w.-])0\d{1,4}(?:[ /-]\d{2,8}){1,4}(?![\w]|[.-]\d)"),
)
_CURRENCY = r"(?:[$€£¥₹₣]|US\$|\b(?:USD|EUR|GBP|CHF|JPY|CAD|AUD|SEK|NOK|DKK|INR|CNY|PLN|CZK)\b)"
_NUM = r"\d{1,3}(?:[,.' ]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_SCALE = r"(?:\s?(?:k|K|m|M|bn|mn|million|billion|thousand|Mio\.?|Mrd\.?|millions?|milliards?)\b)?"
_AMOUNT = re.compile(
    rf"{_CURRENCY}\s?(?:{_NUM}){_SCALE}"
    rf"|(?<![\w.,])(?:{_NUM}){_SCALE}\s?(?:[$€£¥₹]|\b(?:USD|EUR|GBP|CHF|JPY|CAD|AUD|SEK|NOK|DKK"
    r"|INR|CNY|PLN|CZK|[Ee]uros?|EUROS?|[Dd]ollars?|[Pp]ounds?|[Ff]rancs?)\b)"
)
_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december|"
    "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|"
    "januar|februar|märz|maerz|mai|juni|juli|oktober|dezember|"
    "janvier|février|fevrier|mars|avril|juin|juillet|août|aout|septembre|octobre|novembre|"
    "décembre|decembre|"
    "enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre|"
    "gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre"
)
_DATES = (
    re.compile(r"(?<![\w.-])(\d{4})-(\d{2})-(\d{2})(?:[T ]\d{2}:\d{2}(?::\d{2})?)?(?![\w-])"),
    re.compile(r"(?<![\w./-])(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})(?![\w/]|\.\d)"),
    re.compile(r"(?<![\w./-])(\d{1,2})([.-])(\d{1,2})\2(\d{4})(?![\w]|[.-]\d)"),
    re.compile(
        rf"(?i:(?<!\w)\d{{1,2}}(?:st|nd|rd|th|er|º|\.)?\s+(?:de\s+)?(?:{_MONTHS})\.?,?\s+"
        rf"(?:de\s+)?\d{{4}}(?!\w))"
    ),
    re.compile(rf"(?i:(?<!\w)(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}(?!\w))"),
    re.compile(rf"(?i:(?<!\w)(?:{_MONTHS})\s+\d{{4}}(?!\w))"),
)
_UP = r"[A-ZÄÖÜÁÉÍÓÚÀÈÂÊÎÔÛÇÑ]"
_ADDRESSES = (
    re.compile(
        rf"(?<![\w.-])\d{{1,5}}[A-Za-z]?\s+(?:{_UP}[\w'.-]*\s+){{1,4}}"
        r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Way|Court|Ct|Place|Pl"
        r"|Terrace|Parkway|Pkwy|Square|Sq|Highway|Hwy|Close|Crescent)\b"
        r"(?:,?\s+(?:Suite|Ste\.?|Apt\.?|Unit|Floor|#)\s*\w+)?"
    ),
    re.compile(
        rf"(?<!\w)(?:{_UP}[\wäöüß-]*\s+)?{_UP}?[\wäöüß-]*(?i:straße|strasse|str\.|weg|gasse|platz"
        r"|allee|damm|ufer)\s+\d{1,4}\s?[a-z]?(?![\w])"
    ),
    re.compile(
        r"(?<![\w.-])\d{1,4}(?:\s?(?:bis|ter))?,?\s+(?i:rue|avenue|av\.|boulevard|bd|place|chemin"
        r"|quai|allée|impasse|route)\s+(?:(?:de la|de l'|du|des|de|d')\s*)?"
        rf"{_UP}[\w'-]*(?:\s+{_UP}[\w'-]*){{0,3}}"
    ),
    re.compile(
        r"(?<!\w)(?:Calle|Avenida|Avda\.|Plaza|Paseo|Via|Viale|Piazza|Corso|Largo)\s+"
        rf"(?:(?:de la|del|de|della|dei|delle|di)\s+)?{_UP}[\w'-]*(?:\s+{_UP}[\w'-]*){{0,3}},?"
        r"\s+\d{1,4}(?!\w)"
    ),
)
_LONG_DIGITS = re.compile(r"(?<![\w.,+-])\d{8,}(?![\w-]|[.,]\d)")


def _matches(pattern: re.Pattern[str], text: str, kind: str) -> Iterator[Span]:
    for m in pattern.finditer(text):
        yield Span(m.start(), m.end(), 2, kind)


def _urls(text: str) -> Iterator[Span]:
    for m in _URL.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in _URL_TRAIL:
            end -= 1
        yield Span(m.start(), end, 2, "URL")


def _phones(text: str) -> Iterator[Span]:
    for pattern in _PHONES:
        for m in pattern.finditer(text):
            if 8 <= sum(c.isdigit() for c in m.group()) <= 15:
                yield Span(m.start(), m.end(), 2, "PHONE")


def _valid_date(m: re.Match[str]) -> bool:
    g = m.groups()
    if len(g) == 3 and len(g[0]) == 4:  # ISO
        return 1 <= int(g[1]) <= 12 and 1 <= int(g[2]) <= 31
    if len(g) == 3:  # a/b/y: either order
        a, b = int(g[0]), int(g[1])
        return 1 <= a <= 31 and 1 <= b <= 31 and min(a, b) <= 12
    if len(g) == 4:
        return 1 <= int(g[0]) <= 31 and 1 <= int(g[2]) <= 12
    return True


def _dates(text: str) -> Iterator[Span]:
    for pattern in _DATES:
        for m in pattern.finditer(text):
            if _valid_date(m):
                yield Span(m.start(), m.end(), 2, "DATE")


def _addresses(text: str) -> Iterator[Span]:
    for pattern in _ADDRESSES:
        yield from _matches(pattern, text, "ADDRESS")


# --- resolution --------------------------------------------------------------------------


def _claim(found: Iterable[Span], mask: bytearray, out: list[Span]) -> None:
    """Accept spans that touch nothing claimed yet (leftmost, then longest, first)."""
    for span in sorted(found, key=lambda s: (s.start, s.start - s.end)):
        if span.end > span.start and mask.find(1, span.start, span.end) == -1:
            mask[span.start : span.end] = b"\x01" * (span.end - span.start)
            out.append(span)


def detect(
    text: str,
    entities: EntityMatcher | None = None,
    *,
    amounts: bool = True,
    dates: bool = True,
) -> list[Span]:
    """Every span to replace or keep, sorted, non-overlapping. Priority: token-shaped text
    already present, tier 1 (and checksum-invalid look-alikes), known entities, then
    emails, URLs, addresses, dates, amounts, phones, long digit runs."""
    mask = bytearray(len(text))
    out: list[Span] = []
    _claim((Span(m.start(), m.end(), 2, LITERAL) for m in TOKEN_RE.finditer(text)), mask, out)
    for detector in TIER1:
        _claim(detector(text), mask, out)
    if entities is not None:
        _claim((Span(e.start, e.end, 2, e.kind) for e in entities.find(text)), mask, out)
    _claim(_matches(_EMAIL, text, "EMAIL"), mask, out)
    _claim(_urls(text), mask, out)
    _claim(_addresses(text), mask, out)
    if dates:
        _claim(_dates(text), mask, out)
    if amounts:
        _claim(_matches(_AMOUNT, text, "AMOUNT"), mask, out)
    _claim(_phones(text), mask, out)
    _claim(_matches(_LONG_DIGITS, text, "NUMBER"), mask, out)
    out.sort()
    return out
