"""The optimised detectors find exactly what the first implementation found.

Below is that implementation, frozen as it was before the speed work (detect and the known
entity matcher of commit 84540fa; the checksums and the token grammar did not change), and
tests that compare the two on the synthetic corpus, on mutations of it and on text that
hypothesis assembles from the fragments every detector looks for (numbers of every shape,
cue words, month and street names, currency signs, capitals, non-ASCII letters, digits and
spaces, İ, combining accents). Every detector's spans, overlaps and priorities must agree:
the new gates, anchors and the match-at-anchor scans only skip work that finds nothing.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from app.redaction import detectors, entities
from app.redaction.checksums import IBAN_LENGTHS, aba_valid, iban_valid, luhn_valid, ssn_valid
from app.redaction.tokens import LITERAL, TOKEN_RE
from tests.redaction_corpus import KNOWN, corpus, prompt_4k

# --- the first implementation (reference) -------------------------------------------------


class EntityMatch(NamedTuple):
    start: int
    end: int
    kind: str


_LETTERS = {"ł": "l", "ø": "o", "đ": "d", "ħ": "h", "\u0131": "i", "ŧ": "t", "ŀ": "l", "æ": "ae",
            "œ": "oe", "þ": "th"}  # fmt: skip
"""Latin letters NFKD does not decompose, spelled as people type them without the accent."""
OTHER = "\x1a"
"""What a non-ASCII character that is neither letter nor digit (a currency sign, a dash, a
curly quote) folds to: the folded text then stays ASCII (fast to search), and it is no word
character, like the original."""


@lru_cache(maxsize=8192)
def fold_char(ch: str) -> str:
    decomposed = unicodedata.normalize("NFKD", ch)
    base = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    base = "".join(_LETTERS.get(c, c) for c in base)
    return "".join(c if c.isascii() or c.isalnum() else OTHER for c in base)


_ASCII_RUNS = re.compile(r"[\x00-\x7f]+")


def fold(text: str) -> tuple[str, list[int] | None]:
    """The folded text and, when folding changed its length, each folded char's source index
    (None: positions are the same in both)."""
    low = text.lower()
    if low.isascii():
        return low, None
    if len(low) != len(text):  # a lower-casing that changes length (İ): char by char
        return _fold_each(text)
    # each distinct non-ASCII character whose fold keeps the length (é → e) is replaced in
    # one pass over the text; the others (ß → ss, a lone combining mark) are spliced in
    folds = {ch: fold_char(ch) for ch in set(_ASCII_RUNS.sub("", low))}
    splice: list[int] = []
    for ch, f in folds.items():
        if len(f) == 1:
            low = low.replace(ch, f)
            continue
        pos = low.find(ch)
        while pos != -1:
            splice.append(pos)
            pos = low.find(ch, pos + 1)
    if not splice:
        return low, None
    splice.sort()
    parts: list[str] = []
    index: list[int] = []
    pos = 0
    for i in splice:
        f = folds[low[i]]
        parts += (low[pos:i], f)
        index.extend(range(pos, i))
        index.extend([i] * len(f))
        pos = i + 1
    parts.append(low[pos:])
    index.extend(range(pos, len(low)))
    return "".join(parts), index


def _fold_each(text: str) -> tuple[str, list[int]]:
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        f = ch.lower() if ch.isascii() else fold_char(ch)
        chars.append(f)
        index.extend([i] * len(f))
    return "".join(chars), index


def fold_key(value: str) -> str:
    return " ".join(fold(value)[0].split())


def _pattern(folded: str) -> str:
    body = r"\s+".join(re.escape(part) for part in folded.split())
    head = r"(?<!\w)" if folded[0].isalnum() or folded[0] == "_" else ""
    tail = r"(?!\w)" if folded[-1].isalnum() or folded[-1] == "_" else ""
    return head + body + tail


class EntityMatcher:
    """Known entities by the first word of their folded form: each is looked for with a plain
    substring search (fast), then confirmed by its own anchored pattern (whitespace runs,
    word boundaries). The longest candidate at a position wins."""

    def __init__(self, entities: tuple[tuple[str, str], ...]) -> None:
        by_key: dict[str, str] = {}
        for kind, value in entities:
            key = fold_key(value)
            if key:
                by_key.setdefault(key, kind)
        self.by_first: dict[str, list[tuple[re.Pattern[str], str]]] = {}
        for key in sorted(by_key, key=len, reverse=True):
            first = key.split(" ", 1)[0]
            self.by_first.setdefault(first, []).append((re.compile(_pattern(key)), by_key[key]))

    def find(self, text: str) -> list[EntityMatch]:
        if not self.by_first:
            return []
        folded, index = fold(text)
        out: list[EntityMatch] = []
        for first, candidates in self.by_first.items():
            pos = folded.find(first)
            while pos != -1:
                for pattern, kind in candidates:
                    m = pattern.match(folded, pos)
                    if m:
                        out.append(self._span(text, index, m.start(), m.end(), kind))
                        break
                pos = folded.find(first, pos + 1)
        return out

    @staticmethod
    def _span(text: str, index: list[int] | None, a: int, b: int, kind: str) -> EntityMatch:
        if index is not None:
            a, b = index[a], index[b - 1] + 1
        while b < len(text) and unicodedata.combining(text[b]):
            b += 1  # a decomposed accent belongs to the matched letter
        return EntityMatch(a, b, kind)


@lru_cache(maxsize=256)
def matcher(entities: tuple[tuple[str, str], ...]) -> EntityMatcher:
    """Compiled matchers are cached: clients resend the same entity lists call after call."""
    return EntityMatcher(entities)


PLAIN = 0
"""Tier of a span kept as it is (a checksum-invalid number)."""


Detector = Callable[[str, int, int], Iterator["Span"]]
"""Spans of ``text[a:b]`` (patterns see the text around the window for their lookbehinds)."""


class Span(NamedTuple):
    start: int
    end: int
    tier: int  # 1: drop/refuse, 2: tokenise, 0: plain
    kind: str  # tier 1: iban, card, …; tier 2: the token type (PERSON, EMAIL, …)


# --- patterns ----------------------------------------------------------------------------
# Python's re scans fast only for a pattern that starts with a literal or a character class:
# so patterns start with their digit, symbol or cue word, and check what precedes them with a
# lookbehind after the first character (or in Python). Cue words are spelled in their three
# usual cases rather than with (?i), which is several times slower.


def _words(*words: str) -> str:
    """An alternation of the words in lower, Capitalised and UPPER case, longest first."""
    spelled = {v for w in words for v in (w, w[:1].upper() + w[1:], w.upper())}
    return "(?:" + "|".join(re.escape(w) for w in sorted(spelled, key=len, reverse=True)) + ")"


_IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{2,4}){3,8}(?![a-z0-9])")
_CARD = re.compile(
    r"\d(?<![\w.,+-]\d)(?:\d{3}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{3}([ -])\d{6}\2\d{4,5}|\d{12,18})"
    r"(?![\w-]|[.,]\d)"
)
_SSN_DASHED = re.compile(r"(\d(?<![\w-]\d)\d{2})-(\d{2})-(\d{4})(?![\w-])")
_CUE_TAIL = (
    r"(?:\s*" + _words("number", "no.", "no", "nr.", "nr", "num.", "nummer", "numéro",
                       "número", "numero", "n°", "#") + r")?\s*[:#]?\s*"
)  # fmt: skip
_SSN_CUED = re.compile(
    _words("ssn", "social security number", "social security", "soc. sec.", "soc sec")
    + _CUE_TAIL + r"(\d{3})[ -]?(\d{2})[ -]?(\d{4})(?![\w-])"
)  # fmt: skip
_ROUTING = re.compile(
    _words("routing", "aba", "rtn", "transit")
    + r"(?:\s+" + _words("transit", "number", "no.", "no", "#") + r")*\s*[:#]?\s*"
    + r"(\d{9})(?![\w-])"
)  # fmt: skip
_ACCOUNT = re.compile(
    _words("account", "acct.", "acct", "a/c", "kontonummer", "kontonr.", "kontonr", "konto",
           "compte", "cuenta", "conto", "rekening")
    + _CUE_TAIL + r"(\d[\d -]{4,22}\d)(?![\w-])"
)  # fmt: skip
_PASSPORT = re.compile(
    _words("passport", "reisepass", "passnummer", "passeport", "pasaporte", "passaporto",
           "paszport")
    + _CUE_TAIL + r"([A-Z0-9]{6,9})(?![\w-])"
)  # fmt: skip
_COUNTRIES = frozenset(IBAN_LENGTHS) | frozenset(
    """US CA MX AR CL CO PE VE AU NZ JP CN HK TW KR SG MY TH VN ID PH IN LK BD NP ZA NG KE GH
    MA DZ EG ET TZ UG RU UZ KG TJ AM IR AF OM YE""".split()  # noqa: SIM905
)
"""Country codes a SWIFT/BIC may carry (the IBAN countries and the larger others)."""
_SWIFT = re.compile(r"([A-Z](?<![\w-][A-Z])[A-Z]{3})([A-Z]{2})([A-Z0-9]{2})([A-Z0-9]{3})?(?![\w-])")
_SWIFT_CUES = ("swift", "bic")

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])")
_URL = re.compile(r"(?i:\b(?:https?://|www\.))[^\s<>\"'`]+")
_URL_TRAIL = ".,;:!?)]}'\""
_PHONES = (
    re.compile(r"\+(?<![\w+]\+)\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\w])"),
    re.compile(r"\((?<!\w\()\d{3}\) ?\d{3}[ .-]\d{4}(?![\w])"),
    re.compile(r"\d(?<![\w.-]\d)\d{2}([.-])\d{3}\1\d{4}(?![\w]|[.-]\d)"),
    re.compile(r"0(?<![\w.-]0)\d{1,4}(?:[ /-]\d{2,8}){1,4}(?![\w]|[.-]\d)"),
)
_CODES = "USD|EUR|GBP|CHF|JPY|CAD|AUD|SEK|NOK|DKK|INR|CNY|PLN|CZK"
_NUM = r"(?:\d{1,3}(?:[,.' ]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?)"
_NUM_REST = r"(?:\d{0,2}(?:[,.' ]\d{3})+(?:[.,]\d{1,2})?|\d*(?:[.,]\d{1,2})?)"
_SCALE = r"(?:\s?(?:k|K|m|M|bn|mn|million|billion|thousand|Mio\.?|Mrd\.?|millions?|milliards?)\b)?"
_AMOUNT = re.compile(
    rf"(?:[$€£¥₹₣]|US\$)\s?{_NUM}{_SCALE}"
    rf"|(?:{_CODES})(?<![A-Za-z][A-Z]{{3}})\s?{_NUM}{_SCALE}"
    rf"|\d(?<![\w.,]\d){_NUM_REST}{_SCALE}\s?(?:[$€£¥₹]|(?:{_CODES}|[Ee]uros?|EUROS?|[Dd]ollars?"
    r"|[Pp]ounds?|[Ff]rancs?)\b)"
)
MONTHS = frozenset(
    """january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec januar februar märz maerz mai juni juli
    oktober dezember janvier février fevrier mars avril juin juillet août aout septembre octobre
    novembre décembre decembre enero febrero marzo abril mayo junio julio agosto septiembre
    octubre noviembre diciembre gennaio febbraio aprile maggio giugno luglio settembre ottobre
    dicembre""".split()  # noqa: SIM905
)
_MONTH_RE = "|".join(sorted(MONTHS, key=len, reverse=True))
_DATES = (
    re.compile(r"(\d(?<![\w.-]\d)\d{3})-(\d{2})-(\d{2})(?:[T ]\d{2}:\d{2}(?::\d{2})?)?(?![\w-])"),
    re.compile(r"(\d(?<![\w./-]\d)\d?)/(\d{1,2})/(\d{4}|\d{2})(?![\w/]|\.\d)"),
    re.compile(r"(\d(?<![\w./-]\d)\d?)([.-])(\d{1,2})\2(\d{4})(?![\w]|[.-]\d)"),
    re.compile(
        rf"\d(?<!\w\d)\d?(?:st|nd|rd|th|er|º|\.)?\s+(?:de\s+)?(?i:{_MONTH_RE})\.?,?\s+"
        r"(?:de\s+)?\d{4}(?!\w)"
    ),
)
_YEAR = re.compile(r"\d(?<![\w.,]\d)\d{3}(?!\w|[.,]\d)")
_MONTH_BEFORE = re.compile(r"(?<!\w)([^\W\d_]{3,10})\.?(?:\s+\d{1,2}(?:st|nd|rd|th)?,?)?\s+\Z")
_UP = r"[A-ZÄÖÜÁÉÍÓÚÀÈÂÊÎÔÛÇÑ]"
_ADDRESS_EN = re.compile(
    rf"\d(?<![\w.-]\d)\d{{0,4}}[A-Za-z]?\s+(?:{_UP}[\w'.-]*\s+){{1,4}}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Way|Court|Ct|Place|Pl"
    r"|Terrace|Parkway|Pkwy|Square|Sq|Highway|Hwy|Close|Crescent)\b"
    r"(?:,?\s+(?:Suite|Ste\.?|Apt\.?|Unit|Floor|#)\s*\w+)?"
)
_ADDRESS_DE = re.compile(
    _words("straße", "strasse", "str.", "weg", "gasse", "platz", "allee", "damm", "ufer")
    + r"\s+\d{1,4}\s?[a-z]?(?![\w])"
)
_ADDRESS_FR = re.compile(
    r"\d(?<![\w.-]\d)\d{0,3}(?:\s?(?:bis|ter))?,?\s+(?i:rue|avenue|av\.|boulevard|bd|place|chemin"
    r"|quai|allée|impasse|route)\s+(?:(?:de la|de l'|du|des|de|d')\s*)?"
    rf"{_UP}[\w'-]*(?:\s+{_UP}[\w'-]*){{0,3}}"
)
_ADDRESS_ES = re.compile(
    r"(?:Calle|Avenida|Avda\.|Plaza|Paseo|Via|Viale|Piazza|Corso|Largo)\s+"
    rf"(?:(?:de la|del|de|della|dei|delle|di)\s+)?{_UP}[\w'-]*(?:\s+{_UP}[\w'-]*){{0,3}},?"
    r"\s+\d{1,4}(?!\w)"
)
_LONG_DIGITS = re.compile(r"\d(?<![\w.,+-]\d)\d{7,}(?![\w-]|[.,]\d)")


def _word_start(text: str, i: int) -> bool:
    return i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")


# --- tier 1 ------------------------------------------------------------------------------


def _iban(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _IBAN.finditer(text, a, b):
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


def _cards(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _CARD.finditer(text, a, b):
        digits = re.sub(r"[ -]", "", m.group())
        yield Span(m.start(), m.end(), 1 if luhn_valid(digits) else PLAIN, "card")


def _ssn_dashed(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _SSN_DASHED.finditer(text, a, b):
        yield Span(m.start(), m.end(), 1 if ssn_valid(*m.groups()) else PLAIN, "ssn")


def _ssn_cued(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _SSN_CUED.finditer(text, a, b):
        if _word_start(text, m.start()):
            g = m.groups()
            yield Span(m.start(1), m.end(3), 1 if ssn_valid(*g) else PLAIN, "ssn")


def _routing(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _ROUTING.finditer(text, a, b):
        if _word_start(text, m.start()):
            tier = 1 if aba_valid(m.group(1)) else PLAIN
            yield Span(m.start(1), m.end(1), tier, "routing")


def _account(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _ACCOUNT.finditer(text, a, b):
        if _word_start(text, m.start()) and sum(c.isdigit() for c in m.group(1)) >= 6:
            yield Span(m.start(1), m.end(1), 1, "account")


def _passport(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _PASSPORT.finditer(text, a, b):
        if _word_start(text, m.start()) and any(c.isdigit() for c in m.group(1)):
            yield Span(m.start(1), m.end(1), 1, "passport")


def _swift(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _SWIFT.finditer(text, a, b):
        if m.group(2) not in _COUNTRIES:
            continue
        before = text[max(0, m.start() - 40) : m.start()].lower()
        cued = any(cue in before for cue in _SWIFT_CUES)
        if cued or any(c.isdigit() for c in m.group(3)):
            yield Span(m.start(), m.end(), 1, "swift")


class Win:
    """A window around digit runs: where detectors look, and what their gates check."""

    __slots__ = ("_low", "a", "b", "digits", "longest", "seg")

    def __init__(self, text: str, a: int, b: int, digits: int, longest: int) -> None:
        self.a, self.b, self.digits, self.longest = a, b, digits, longest
        self.seg = text[a:b]
        self._low: str | None = None

    def __iter__(self) -> Iterator[int]:
        return iter((self.a, self.b))

    @property
    def low(self) -> str:
        if self._low is None:
            self._low = self.seg.lower()
        return self._low


Gate = Callable[[Win], bool]
"""A cheap test that a detector could match in a window (no regex call when it cannot)."""


def _some(words: tuple[str, ...], s: str) -> bool:
    for w in words:  # noqa: SIM110 - a plain loop: cheaper than any() over a generator
        if w in s:
            return True
    return False


def _has(*chars: str) -> Gate:
    return lambda w: _some(chars, w.seg)


def _cue(*words: str) -> Gate:
    """One of the cue words (lower case) in the window."""
    return lambda w: _some(words, w.low)


def _run_of(n: int, *chars: str) -> Gate:
    """A digit run of ``n`` at least (and one of ``chars`` in the window, if given)."""
    return lambda w: w.longest >= n and (not chars or _some(chars, w.seg))


def _always(w: Win) -> bool:
    return True


_ROUTING_CUES = ("routing", "aba", "rtn", "transit")
TIER1: tuple[tuple[Detector, bool, Gate], ...] = (
    (_iban, False, lambda w: w.digits >= 10),
    (_cards, False, lambda w: w.digits >= 13),
    (_ssn_dashed, False, _run_of(4, "-")),
    (_ssn_cued, True, _cue("ssn", "soc")),
    (_routing, True, lambda w: w.longest >= 9 and _some(_ROUTING_CUES, w.low)),
    (_account, True, _cue("account", "acct", "a/c", "konto", "compte", "cuenta", "conto",
                          "rekening")),
    (_passport, True, _cue("pas")),
    (_swift, True, _always),
)  # fmt: skip
"""(detector, needs the wide window (cue words or names around the number), gate)."""

# --- tier 2 ------------------------------------------------------------------------------


def _matcher(pattern: re.Pattern[str], kind: str) -> Detector:
    def run(text: str, a: int, b: int) -> Iterator[Span]:
        for m in pattern.finditer(text, a, b):
            yield Span(m.start(), m.end(), 2, kind)

    return run


_EMAILS = _matcher(_EMAIL, "EMAIL")


def _urls(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _URL.finditer(text, a, b):
        end = m.end()
        while end > m.start() and text[end - 1] in _URL_TRAIL:
            end -= 1
        yield Span(m.start(), end, 2, "URL")


def _phone(pattern: re.Pattern[str]) -> Detector:
    def run(text: str, a: int, b: int) -> Iterator[Span]:
        for m in pattern.finditer(text, a, b):
            if 8 <= sum(c.isdigit() for c in m.group()) <= 15:
                yield Span(m.start(), m.end(), 2, "PHONE")

    return run


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


def _date(pattern: re.Pattern[str]) -> Detector:
    def run(text: str, a: int, b: int) -> Iterator[Span]:
        for m in pattern.finditer(text, a, b):
            if _valid_date(m):
                yield Span(m.start(), m.end(), 2, "DATE")

    return run


def _month_first(text: str, a: int, b: int) -> Iterator[Span]:
    """``March 2024``, ``March 5, 2024``: found from the year, the month word checked before."""
    for m in _YEAR.finditer(text, a, b):
        before = _MONTH_BEFORE.search(text, max(0, m.start() - 24), m.start())
        if before and before.group(1).lower() in MONTHS:
            yield Span(before.start(), m.end(), 2, "DATE")


def _address_de(text: str, a: int, b: int) -> Iterator[Span]:
    """``Hauptstraße 12``, ``Berliner Straße 5``: found from the street word and the number,
    then widened to the capitalised word(s) the street word ends."""
    for m in _ADDRESS_DE.finditer(text, a, b):
        start = m.start()
        while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "-"):
            start -= 1
        if start == m.start():  # a word of its own: take the capitalised word before it
            prev = start - 1
            while prev > 0 and text[prev - 1].isalpha():
                prev -= 1
            if prev < start - 1 and text[start - 1] == " " and text[prev].isupper():
                start = prev
        if text[start].isupper():
            yield Span(start, m.end(), 2, "ADDRESS")


def _address_es(text: str, a: int, b: int) -> Iterator[Span]:
    for m in _ADDRESS_ES.finditer(text, a, b):
        if _word_start(text, m.start()):
            yield Span(m.start(), m.end(), 2, "ADDRESS")


_MONEY = re.compile(rf"[$€£¥₹₣]|{_CODES}|[Ee]uro|EURO|[Dd]ollar|[Pp]ound|[Ff]ranc")

TIER2_IN_WINDOWS: tuple[tuple[tuple[Detector, bool, Gate], ...], ...] = (
    ((_matcher(_ADDRESS_EN, "ADDRESS"), True, _always),
     (_address_de, True, _cue("str", "weg", "gasse", "platz", "allee", "damm", "ufer")),
     (_matcher(_ADDRESS_FR, "ADDRESS"), True,
      _cue("rue", "av", "bd", "place", "chemin", "quai", "allée", "impasse", "route")),
     (_address_es, True, _has("Calle", "Avenida", "Avda", "Plaza", "Paseo", "Via", "Piazza",
                              "Corso", "Largo"))),
    ((_date(_DATES[0]), False, _run_of(4, "-")), (_date(_DATES[1]), False, _has("/")),
     (_date(_DATES[2]), False, _run_of(4, ".", "-")), (_date(_DATES[3]), False, _run_of(4)),
     (_month_first, True, _run_of(4))),
    ((_matcher(_AMOUNT, "AMOUNT"), False, lambda w: _MONEY.search(w.seg) is not None),),
    ((_phone(_PHONES[0]), False, _has("+")), (_phone(_PHONES[1]), False, _has("(")),
     (_phone(_PHONES[2]), False, _run_of(4, "-", ".")), (_phone(_PHONES[3]), False, _has("0"))),
    ((_matcher(_LONG_DIGITS, "NUMBER"), False, _run_of(8)),),
)  # fmt: skip
"""Addresses, dates, amounts, phones, long digit runs: in this order of priority."""

# --- where to look -----------------------------------------------------------------------

_DIGIT_RUN = re.compile(r"[0-9]+")
MARGIN = 64
"""Characters around a digit run where cue words, street or month names may be (wide)."""
TIGHT = (6, 36)
"""Before and after a digit run for patterns that start at most a currency code before it
and end a scale and currency word after it (tight)."""


def _end_at_space(text: str, b: int) -> int:
    """Push a window's end to the next whitespace (bounded), so lookaheads at its end see
    what they would see in the whole text."""
    if b >= len(text):
        return len(text)
    ends = [i for i in (text.find(" ", b, b + MARGIN), text.find("\n", b, b + MARGIN)) if i != -1]
    return min(ends) if ends else min(len(text), b + MARGIN)


def windows(
    text: str, runs: list[tuple[int, int]] | None = None, before: int = MARGIN, after: int = MARGIN
) -> list[Win]:
    """The stretches around the text's digit runs (near ones merged): every detector but the
    entity, e-mail, URL and cued-SWIFT ones needs a digit, and looks only there. Lookbehinds
    see the text before a window; its end is at a whitespace."""
    if runs is None:
        runs = [m.span() for m in _DIGIT_RUN.finditer(text)]
    out: list[Win] = []
    start = end = -1
    digits = longest = 0
    for s, e in runs:
        if start != -1 and s - end <= before + after:
            end, digits, longest = e, digits + e - s, max(longest, e - s)
            continue
        if start != -1:
            out.append(
                Win(text, max(0, start - before), _end_at_space(text, end + after), digits, longest)
            )
        start, end, digits, longest = s, e, e - s, e - s
    if start != -1:
        out.append(
            Win(text, max(0, start - before), _end_at_space(text, end + after), digits, longest)
        )
    return out


_NON_SPACE = re.compile(r"\S*")


def _around(text: str, low: str, needles: tuple[str, ...], before: int, after: int = 0
            ) -> list[tuple[int, int]]:  # fmt: skip
    """Windows around each occurrence of the needles (in the lower-cased text): from
    ``before`` characters before it to the end of its word (at least ``after`` past it)."""
    out = []
    for needle in needles:
        pos = low.find(needle)
        while pos != -1:
            m = _NON_SPACE.match(text, pos)
            end = max(m.end() if m else pos, min(len(text), pos + after))
            out.append((max(0, pos - before), _end_at_space(text, end)))
            pos = low.find(needle, pos + 1)
    return out


def _in(detector: Detector, text: str, wins: Iterable[tuple[int, int]]) -> Iterator[Span]:
    for a, b in wins:
        yield from detector(text, a, b)


def _gated(detector: Detector, gate: Gate, text: str, wins: list[Win]) -> Iterator[Span]:
    for w in wins:
        if gate(w):
            yield from detector(text, w.a, w.b)


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
    e-mails, URLs, addresses, dates, amounts, phones, long digit runs."""
    mask = bytearray(len(text))
    out: list[Span] = []
    _claim((Span(m.start(), m.end(), 2, LITERAL) for m in TOKEN_RE.finditer(text)), mask, out)
    runs = [m.span() for m in _DIGIT_RUN.finditer(text)]
    wide, tight = windows(text, runs), windows(text, runs, *TIGHT)
    low = text.lower()
    if len(low) != len(text):  # a lower-casing that changes length: keep positions
        low = "".join(ch.lower()[:1] or ch for ch in text)
    for detector, needs_wide, gate in TIER1:
        _claim(_gated(detector, gate, text, wide if needs_wide else tight), mask, out)
    _claim(_in(_swift, text, _around(text, low, _SWIFT_CUES, 0, 48)), mask, out)
    if entities is not None:
        _claim((Span(e.start, e.end, 2, e.kind) for e in entities.find(text)), mask, out)
    _claim(_in(_EMAILS, text, _around(text, low, ("@",), 64)), mask, out)
    _claim(_in(_urls, text, _around(text, low, ("http", "www."), 0)), mask, out)
    skip = {1} if not dates else set()
    if not amounts:
        skip.add(2)
    for i, group in enumerate(TIER2_IN_WINDOWS):
        if i in skip:
            continue
        for detector, needs_wide, gate in group:
            _claim(_gated(detector, gate, text, wide if needs_wide else tight), mask, out)
    out.sort()
    return out


# --- the comparison --------------------------------------------------------------------------

ENTITIES: tuple[tuple[str, str], ...] = (
    *(("PERSON", v) for v in KNOWN["persons"]),
    *(("ORG", v) for v in KNOWN["orgs"]),
    *(("FUND", v) for v in KNOWN["funds"]),
    *(("LOCATION", v) for v in KNOWN["locations"]),
    *(("EMAIL", v) for v in KNOWN["emails"]),
    ("ORG", "Bank of America"),
    ("LOCATION", "America"),
    ("ORG", "AT&T"),
    ("ORG", "AT"),
    ("PERSON", "Mu\u0308ller"),
    ("ORG", "ab ab"),
    ("ORG", "Straße AG"),
)
"""The corpus' names, plus keys that overlap each other (a key inside a longer one, a first
word that is a prefix of another, a key that repeats its first word)."""

FRAGMENTS = [
    *"0123456789", ".", ",", "  ", " ", ". ", ", ", "-", "/", "+", "(", ")", ":", "#", "@",
    "\n", "\t", "$", "€", "£", "₹", "_", "'", "[", "]", "%", "&", "?", "º",
    *"ABCDEFGHSTUVWXYZabcdeghilmnorstuvwxyz",
    "Ü", "ü", "é", "ß", "İ", "\u0131", "\u017f", "Σ", "\u03c3", "\u0301", "\u00a0",
    "\u2009", "\u0663", "\uff10", "\u212a",
    "IBAN ", "DE89 3704 0044 0532 0130 00", "GB82 WEST ", "routing number ", "ABA ", "RTN ",
    "SSN ", "social security ", "account no. ", "acct ", "Kontonummer: ", "passport no. ",
    "Reisepass ", "BIC ", "SWIFT ", "COBADEFFXXX", "DEUTDEFF500", "NWBKGB2L", " Street",
    " St", " Avenue", "Baker", "Hauptstraße ", "Berliner Straße ", "strasse ", "Weg ",
    " rue de la Paix", "avenue ", "Calle de Alcalá ", "Via Roma ", "Plaza ", "March ",
    "märz ", "Jan. ", "mars ", "de ", "1er ", "th ", "st ", "USD", "US$", "EUR ", "euros",
    "Dollar", "CHF", "M", "bn", "million", "k ", "Mio. ", "http://", "https://x.y/a",
    "www.", "a@b.co", "x.y@z-q.de ", "[PERSON_1]", "[ORG_", "2024", "1999", "06/30/",
    "15.03.", "2024-06-30", "+41 ", "(415) ", "555-0132", "415.555.0132", "030 ",
    "4111 1111 1111 1111", "4111111111111111", "021000021", "123-45-6789", "078-05-1120",
    "1,250,000", "12.500", "Müller", "MÜLLER", "Mu\u0308ller", "Jürgen", "JÜRGEN MÜLLER",
    "Bank of America", "America", "Zoë", "São Paulo", "Li Wei", "li", "Kraków",
    "Acme Holdings Inc.",
    "1er mars 2024",
    "5. Mai 2023",
    "21st March 2024",
    "3º de marzo de 2024",
    "2 JUNE 2020",
    "12.03.2024",
    "1-2-2024",
    "221B Baker Street",
    "5 Élysée Road",
    "7a Zoë Lane",
    "12 rue de la Paix",
    "Via Roma 10",
    "030 1234 5678",
    "DE89",
    "999-99-9999", " & ", "Söhne", "AT&T", "ab ab ab", "STRASSE AG",
]  # fmt: skip


def same(text: str, every_policy: bool = True) -> None:
    ref_matcher = matcher(ENTITIES)
    new_matcher = entities.matcher(ENTITIES)
    policies = ((True, True), (False, True), (True, False)) if every_policy else ((True, True),)
    for amounts, dates in policies:
        for ents in (True, False) if every_policy else (True,):
            want = detect(text, ref_matcher if ents else None, amounts=amounts, dates=dates)
            got = detectors.detect(
                text, new_matcher if ents else None, amounts=amounts, dates=dates
            )
            assert got == want, (text, amounts, dates, ents)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join))
def test_same_spans_on_assembled_text(text: str) -> None:
    same(text)


def test_same_spans_on_the_corpus_and_its_mutations() -> None:
    rng = random.Random(6)
    docs = [d.text for d in corpus(30, seed=13)] + [prompt_4k(seed)[0] for seed in range(3)]
    for text in docs:
        same(text)
    for _ in range(300):
        chars = list(rng.choice(docs))
        for _ in range(rng.randint(1, 25)):
            i = rng.randrange(len(chars) + 1)
            chars[i : i + rng.randint(0, 3)] = rng.choice(FRAGMENTS)
        same("".join(chars))


def test_entity_candidates_unchanged() -> None:
    text = "ab ab ab, AT&T and AT, bank of  america, MU\u0308LLER, Straße AG " * 3
    want = matcher(ENTITIES).find(text)
    got = entities.matcher(ENTITIES).find(text)
    assert sorted(got) == sorted(want)


ANCHORED = (
    (detectors._ADDRESS_EN, detectors._STREET_NUMBER),
    (detectors._DATES[3], detectors._DAY_MONTH_NAME),
    (detectors._DATES[2], detectors._DAY_MONTH_YEAR),
    (detectors._DATES[0], detectors._ISO_DATE),
    (detectors._PHONES[2], detectors._PHONE_DASHED),
    (detectors._IBAN, detectors._IBAN_START),
    (detectors._SSN_DASHED, detectors._SSN_START),
)


def anchors_hold(text: str) -> None:
    """Where a detector's pattern matches (with any window end after it), its anchor starts:
    the property the gates and the match-at-anchor scans rely on (when \\d and \\s match
    only ASCII in the text)."""
    others = {ch for ch in text if not ch.isascii()}
    if any(ch.isdecimal() or ch.isspace() for ch in others):
        return
    kinds = text.encode("ascii", "replace").translate(detectors._KINDS)
    for pattern, anchor in ANCHORED:
        starts = set(anchor(kinds))
        for p in range(len(text)):
            if p in starts:
                continue
            for b in range(p + 1, len(text) + 1):
                assert pattern.match(text, p, b) is None, (pattern.pattern, text, p, b)
    years = set(detectors._SPACE_YEAR(kinds))
    for p in range(1, len(text)):
        if text[p - 1].isspace() and p not in years:
            for b in range(p + 1, len(text) + 1):
                assert detectors._YEAR.match(text, p, b) is None, (text, p, b)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join))
def test_anchors_hold_on_assembled_text(text: str) -> None:
    anchors_hold(text)


SHAPES = (
    "DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32", "2024-06-30 10:00",
    "123-45-6789", "15 March 2024", "1er mars 2024", "5. Mai 2023", "3º de marzo de 2024",
    "12.03.2024", "1-2-2024", "415-555-0132", "415.555.0132", "221B Baker Street",
    "7a Zoë Lane", "March 2024", "June 5, 2021",
)  # fmt: skip
CONTEXTS = ("", " ", ",", ".", "(", "-", "/", "+", "_", "'", "x", "X", "7", "€", "é", "É", "\n")


def test_anchors_and_spans_at_every_boundary() -> None:
    """Each shape a detector finds, with every kind of character before and after it."""
    for shape in SHAPES:
        for before in CONTEXTS:
            for after in CONTEXTS:
                text = f"ab {before}{shape}{after} cd"
                anchors_hold(text)
                same(text, every_policy=False)
