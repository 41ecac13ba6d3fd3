"""Rule-based detectors: which spans of a text are tier 1 (dropped or refused) and which are
tier 2 (tokenised), resolved by priority so no two spans overlap.

Checksummed tier-1 shapes (IBAN, card, routing) that fail their checksum are ordinary numbers:
they are claimed as *plain* so no weaker detector redacts them either. Technical tokens
(``S3``, ``EKS``, ``C4``, versions, hashes) match none of the patterns.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import NamedTuple

from app.redaction.checksums import IBAN_LENGTHS, aba_valid, iban_valid, luhn_valid, ssn_valid
from app.redaction.entities import EntityMatcher, non_ascii
from app.redaction.tokens import LITERAL, TOKEN_RE

PLAIN = 0
"""Tier of a span kept as it is (a checksum-invalid number)."""


Detector = Callable[["Win"], Iterator["Span"]]
"""Spans in a window of a text (patterns see the text around it for their lookbehinds)."""


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

_EMAIL = re.compile(
    r"[\w.%+-](?<![\w.%+-][\w.%+-])[\w.%+-]*@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])"
)
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
_CODES_AFTER_FIRST = "|".join(f"(?<={c[0]}){c[1:]}" for c in _CODES.split("|"))
_AMOUNT = re.compile(
    # three alternatives (symbol or US$ first, code first, number first), tried in this order;
    # their first characters are consumed by one leading class (re scans for a class fast,
    # for an alternation slowly) and each alternative checks its own with a lookbehind
    rf"[$€£¥₹₣ACDEGIJNPSU\d](?:(?:(?<=[$€£¥₹₣])|(?<=U)S\$)\s?{_NUM}{_SCALE}"
    rf"|(?:{_CODES_AFTER_FIRST})(?<![A-Za-z][A-Z]{{3}})\s?{_NUM}{_SCALE}"
    rf"|(?<=\d)(?<![\w.,]\d){_NUM_REST}{_SCALE}\s?(?:[$€£¥₹]|(?:{_CODES}|[Ee]uros?|EUROS?"
    r"|[Dd]ollars?|[Pp]ounds?|[Ff]rancs?)\b))"
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


def _iban(w: Win) -> Iterator[Span]:
    text = w.scan.text
    for m in _finditer(w, _IBAN, _IBAN_START):
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


def _cards(w: Win) -> Iterator[Span]:
    text, a, b = w.scan.text, w.a, w.b
    for m in _CARD.finditer(text, a, b):
        digits = re.sub(r"[ -]", "", m.group())
        yield Span(m.start(), m.end(), 1 if luhn_valid(digits) else PLAIN, "card")


def _ssn_dashed(w: Win) -> Iterator[Span]:
    for m in _finditer(w, _SSN_DASHED, _SSN_START):
        yield Span(m.start(), m.end(), 1 if ssn_valid(*m.groups()) else PLAIN, "ssn")


def _ssn_cued(w: Win) -> Iterator[Span]:
    text, a, b = w.scan.text, w.a, w.b
    for m in _SSN_CUED.finditer(text, a, b):
        if _word_start(text, m.start()):
            g = m.groups()
            yield Span(m.start(1), m.end(3), 1 if ssn_valid(*g) else PLAIN, "ssn")


def _routing(w: Win) -> Iterator[Span]:
    text, a, b = w.scan.text, w.a, w.b
    for m in _ROUTING.finditer(text, a, b):
        if _word_start(text, m.start()):
            tier = 1 if aba_valid(m.group(1)) else PLAIN
            yield Span(m.start(1), m.end(1), tier, "routing")


def _account(w: Win) -> Iterator[Span]:
    text, a, b = w.scan.text, w.a, w.b
    for m in _ACCOUNT.finditer(text, a, b):
        if _word_start(text, m.start()) and sum(c.isdigit() for c in m.group(1)) >= 6:
            yield Span(m.start(1), m.end(1), 1, "account")


def _passport(w: Win) -> Iterator[Span]:
    text, a, b = w.scan.text, w.a, w.b
    for m in _PASSPORT.finditer(text, a, b):
        if _word_start(text, m.start()) and any(c.isdigit() for c in m.group(1)):
            yield Span(m.start(1), m.end(1), 1, "passport")


def _swift(w: Win) -> Iterator[Span]:
    text, a, b = w.scan.text, w.a, w.b
    for m in _SWIFT.finditer(text, a, b):
        if m.group(2) not in _COUNTRIES:
            continue
        before = text[max(0, m.start() - 40) : m.start()].lower()
        cued = any(cue in before for cue in _SWIFT_CUES)
        if cued or any(c.isdigit() for c in m.group(3)):
            yield Span(m.start(), m.end(), 1, "swift")


# --- gates -------------------------------------------------------------------------------


def _kinds_table() -> bytes:
    table = bytearray(range(256))
    for i in range(128):
        ch = chr(i)
        if "0" <= ch <= "9":
            table[i] = ord("d")
        elif "A" <= ch <= "Z":
            table[i] = ord("U")
        elif "a" <= ch <= "z":
            table[i] = ord("l")
        elif ch.isspace():
            table[i] = ord("s")
    return bytes(table)


_KINDS = _kinds_table()
"""Each character's kind, one byte: ``d`` an ASCII digit, ``U`` an ASCII capital, ``l`` an
ASCII small letter, ``s`` ASCII whitespace, ``?`` any non-ASCII character (after encoding
with ``replace``), any other ASCII character itself."""

Anchor = Callable[[bytes], list[int]]
"""Where, in a text's kinds, a detector's matches can start: every start of a match is in the
list (it may hold more). Used only when ``\\d`` and ``\\s`` match nothing but ASCII in
the text, so that a digit or a space has its own kind."""


def _kinds_pattern(pattern: bytes) -> Anchor:
    """Starts of a pattern of kinds (its non-overlapping matches: the pattern never matches
    inside its own match where the detector could start)."""
    compiled = re.compile(pattern)
    return lambda kinds: [m.start() for m in compiled.finditer(kinds)]


def _kinds_shapes(*shapes: bytes, not_after: bytes = b"", skip: int = 0) -> Anchor:
    """Starts (``skip`` past where the shape starts) of literal shapes of kinds, not right
    after one of the kinds ``not_after``: bytes.find, faster than a pattern."""

    def starts(kinds: bytes) -> list[int]:
        out: list[int] = []
        for shape in shapes:
            pos = kinds.find(shape)
            while pos != -1:
                if pos == 0 or kinds[pos - 1] not in not_after:
                    out.append(pos + skip)
                pos = kinds.find(shape, pos + 1)
        if len(shapes) > 1:
            out.sort()
        return out

    return starts


_STREET_NUMBER = _kinds_pattern(rb"d(?<![dUl_.\-]d)d{0,4}[lU]?s+[U?]")
"""``221B Baker``: a house number, a space, a capital (how ``_ADDRESS_EN`` starts)."""
_DAY_MONTH_NAME = _kinds_pattern(rb"d(?<![dUl_]d)d?(?:ll|\?|\.)?s+[lU?]")
"""``15 March``, ``1er mars``, ``5. Mai``: a day, a space, a letter (``_DATES[3]``)."""
_DAY_MONTH_YEAR = _kinds_pattern(rb"d(?<![dUl_./\-]d)d?[.\-]dd?[.\-]dddd")
"""``15.03.2024`` (``_DATES[2]``)."""
_PHONE_DASHED = _kinds_shapes(b"ddd-ddd-dddd", b"ddd.ddd.dddd", not_after=b"dUl_.-")
"""``415-555-0132`` (``_PHONES[2]``: the same separator twice)."""
_SPACE_YEAR = _kinds_shapes(b"sdddd", skip=1)
"""Four digits after a space: the years ``_month_first`` looks before."""
_IBAN_START = _kinds_shapes(b"UUdd", not_after=b"dUl")
"""``DE89`` (``_IBAN``)."""
_SSN_START = _kinds_shapes(b"ddd-dd-dddd", not_after=b"dUl_-")
"""``123-45-6789`` (``_SSN_DASHED``)."""
_ISO_DATE = _kinds_shapes(b"dddd-dd-dd", not_after=b"dUl_.-")
"""``2024-06-30`` (``_DATES[0]``)."""


class Scan:
    """A text being scanned and what its gates look up, each computed once for the text."""

    __slots__ = ("_lowb", "_starts", "ascii", "exact", "kinds", "low", "same_lower", "text")

    def __init__(self, text: str, low: str, same_lower: bool, exact: bool) -> None:
        self.text = text
        self.low = low
        """The text lower-cased character by character (same positions)."""
        self.same_lower = same_lower
        """``low == text.lower()`` (no İ, whose lower case is two characters)."""
        self.ascii = text.encode("ascii", "replace")
        """The text in ASCII, ``?`` for any other character (same positions)."""
        self.kinds = self.ascii.translate(_KINDS)
        self._lowb: bytes | None = None
        self.exact = exact
        """Every character that ``\\d`` or ``\\s`` matches is ASCII: the anchors hold."""
        self._starts: dict[Anchor, list[int]] = {}

    @property
    def lowb(self) -> bytes:
        """``low`` in ASCII, ``?`` for any other character (same positions)."""
        if self._lowb is None:
            self._lowb = self.low.encode("ascii", "replace")
        return self._lowb

    def starts(self, anchor: Anchor) -> list[int] | None:
        """Where the anchor's matches can start, sorted; None when the kinds are not exact."""
        if not self.exact:
            return None
        found = self._starts.get(anchor)
        if found is None:
            found = self._starts[anchor] = anchor(self.kinds)
        return found


class Win:
    """A window around digit runs: where detectors look, and what their gates check."""

    __slots__ = ("_low", "a", "b", "digits", "longest", "scan", "seg")

    def __init__(self, scan: Scan, a: int, b: int, digits: int, longest: int) -> None:
        self.scan, self.a, self.b, self.digits, self.longest = scan, a, b, digits, longest
        self.seg = scan.text[a:b]
        self._low: str | None = None

    @property
    def low(self) -> str:
        if self._low is None:
            scan = self.scan
            self._low = scan.low[self.a : self.b] if scan.same_lower else self.seg.lower()
        return self._low


class Windows:
    """All windows of one size around a text's digit runs, with what a gate checks first for
    all of them at once: their largest digit counts, their text and lower case (ASCII, see
    ``Scan.ascii``), joined."""

    __slots__ = ("_ascii", "_lowb", "digits", "longest", "scan", "wins")

    def __init__(self, scan: Scan, wins: list[Win], digits: int, longest: int) -> None:
        self.scan, self.wins, self.digits, self.longest = scan, wins, digits, longest
        self._ascii: bytes | None = None
        self._lowb: bytes | None = None

    @property
    def ascii(self) -> bytes:
        if self._ascii is None:
            text = self.scan.ascii
            self._ascii = b"\0".join([text[w.a : w.b] for w in self.wins])
        return self._ascii

    @property
    def lowb(self) -> bytes:
        if self._lowb is None:
            low = self.scan.lowb
            self._lowb = b"\0".join([low[w.a : w.b] for w in self.wins])
        return self._lowb


class Gate(NamedTuple):
    """A cheap test that a detector could match in a window (no regex call when it cannot),
    first for all windows at once (false: none can). Gates on digit counts are part of what
    a detector finds; the others only skip windows where its pattern cannot match."""

    all: Callable[[Windows], bool]
    one: Callable[[Win], bool]


def _some(words: tuple[str, ...], s: str) -> bool:
    for w in words:  # noqa: SIM110 - a plain loop: cheaper than any() over a generator
        if w in s:
            return True
    return False


def _found(needles: tuple[bytes, ...], hay: bytes, a: int, b: int) -> bool:
    for n in needles:  # noqa: SIM110 - a plain loop: cheaper than any() over a generator
        if hay.find(n, a, b) != -1:
            return True
    return False


# Substring tests run on the text (or its lower case) encoded as ASCII with "?" for any
# other character: the same positions, one byte each, searched several times faster than
# a str that holds a non-ASCII character. The needles are ASCII and hold no "?".


def _has(*chars: str) -> Gate:
    """One of ``chars`` (ASCII) in the window."""
    needles = tuple(c.encode("ascii") for c in chars)
    return Gate(
        lambda ws: _found(needles, ws.ascii, 0, len(ws.ascii)),
        lambda w: _found(needles, w.scan.ascii, w.a, w.b),
    )


def _cue(*words: str) -> Gate:
    """One of the cue words (lower case) in the window's lower case."""
    ascii_words = tuple(w.encode("ascii") for w in words if w.isascii())
    others = tuple(w for w in words if not w.isascii())

    def all_(ws: Windows) -> bool:
        lowb = ws.lowb
        # a window's lower case is the text's, but for İ (two characters, the first an i),
        # so a word (with no U+0307) in a window is in the text's
        return _found(ascii_words, lowb, 0, len(lowb)) or (
            bool(others) and _some(others, ws.scan.low)
        )

    def one(w: Win) -> bool:
        if not w.scan.same_lower:
            return _some(words, w.low)
        return _found(ascii_words, w.scan.lowb, w.a, w.b) or (bool(others) and _some(others, w.low))

    return Gate(all_, one)


def _run_of(n: int, *chars: str) -> Gate:
    """A digit run of ``n`` at least (and one of ``chars`` (ASCII) in the window, if given)."""
    if not chars:
        return Gate(lambda ws: ws.longest >= n, lambda w: w.longest >= n)
    has = _has(*chars)
    return Gate(lambda ws: ws.longest >= n and has.all(ws), lambda w: w.longest >= n and has.one(w))


def _digits(n: int) -> Gate:
    """``n`` digits at least in the window."""
    return Gate(lambda ws: ws.digits >= n, lambda w: w.digits >= n)


_ALWAYS = Gate(lambda ws: True, lambda w: True)


def _shape(shape: bytes, base: Gate = _ALWAYS) -> Gate:
    """``base``, and ``shape`` (literal kinds every match contains) in the window."""

    def one(w: Win) -> bool:
        scan = w.scan
        return base.one(w) and (not scan.exact or scan.kinds.find(shape, w.a, w.b) != -1)

    return Gate(lambda ws: base.all(ws) and (not ws.scan.exact or shape in ws.scan.kinds), one)


def _anchor(anchor: Anchor, base: Gate = _ALWAYS) -> Gate:
    """``base``, and a match of ``anchor`` (kinds every match starts with) starting in the
    window. An anchor never matches inside its own match where the detector could start, so
    its non-overlapping matches over the whole text find every such start."""

    def one(w: Win) -> bool:
        if not base.one(w):
            return False
        starts = w.scan.starts(anchor)
        if starts is None:
            return True
        i = bisect_left(starts, w.a)
        return i < len(starts) and starts[i] < w.b

    def all_(ws: Windows) -> bool:
        return base.all(ws) and ws.scan.starts(anchor) != []

    return Gate(all_, one)


def _capitals(kinds: bytes, a: int, b: int) -> bool:
    """Six ASCII capitals in a row in ``[a, b)``: how every SWIFT/BIC starts."""
    return kinds.find(b"UUUUUU", a, b) != -1


_CAPITALS = Gate(
    lambda ws: _capitals(ws.scan.kinds, 0, len(ws.scan.kinds)),
    lambda w: _capitals(w.scan.kinds, w.a, w.b),
)
_ROUTING_CUES = ("routing", "aba", "rtn", "transit")
_ROUTING_CUE = _cue(*_ROUTING_CUES)
_ROUTING_GATE = Gate(
    lambda ws: ws.longest >= 9 and _ROUTING_CUE.all(ws),
    lambda w: w.longest >= 9 and _ROUTING_CUE.one(w),
)

TIER1: tuple[tuple[Detector, bool, Gate], ...] = (
    (_iban, False, _anchor(_IBAN_START, _digits(10))),
    (_cards, False, _digits(13)),
    (_ssn_dashed, False, _anchor(_SSN_START, _run_of(4, "-"))),
    (_ssn_cued, True, _cue("ssn", "soc")),
    (_routing, True, _ROUTING_GATE),
    (_account, True, _cue("account", "acct", "a/c", "konto", "compte", "cuenta", "conto",
                          "rekening")),
    (_passport, True, _cue("pas")),
    (_swift, True, _CAPITALS),
)  # fmt: skip
"""(detector, needs the wide window (cue words or names around the number), gate)."""

# --- tier 2 ------------------------------------------------------------------------------


def _matcher(pattern: re.Pattern[str], kind: str, anchor: Anchor | None = None) -> Detector:
    def run(w: Win) -> Iterator[Span]:
        for m in _finditer(w, pattern, anchor):
            yield Span(m.start(), m.end(), 2, kind)

    return run


_EMAILS = _matcher(_EMAIL, "EMAIL")


def _urls(w: Win) -> Iterator[Span]:
    text, a, b = w.scan.text, w.a, w.b
    for m in _URL.finditer(text, a, b):
        end = m.end()
        while end > m.start() and text[end - 1] in _URL_TRAIL:
            end -= 1
        yield Span(m.start(), end, 2, "URL")


def _phone(pattern: re.Pattern[str], anchor: Anchor | None = None) -> Detector:
    def run(w: Win) -> Iterator[Span]:
        for m in _finditer(w, pattern, anchor):
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


def _date(pattern: re.Pattern[str], anchor: Anchor | None = None) -> Detector:
    def run(w: Win) -> Iterator[Span]:
        for m in _finditer(w, pattern, anchor):
            if _valid_date(m):
                yield Span(m.start(), m.end(), 2, "DATE")

    return run


def _month_first(w: Win) -> Iterator[Span]:
    """``March 2024``, ``March 5, 2024``: found from the year, the month word checked before."""
    text, low = w.scan.text, w.scan.low
    for m in _finditer(w, _YEAR, _SPACE_YEAR):
        year, lo = m.start(), max(0, m.start() - 24)
        if not text[year - 1 : year].isspace() or not _month_word_before(low, lo, year):
            continue  # _MONTH_BEFORE cannot match: spare its (slow) search
        before = _MONTH_BEFORE.search(text, lo, year)
        if before and before.group(1).lower() in MONTHS:
            yield Span(before.start(), m.end(), 2, "DATE")


def _month_word_before(low: str, lo: int, year: int) -> bool:
    """Whether one of the last two words before the year (letters ending a whitespace-
    separated token, after a final ``.`` or ``,``) is a month name: what every match of
    _MONTH_BEFORE has (``March 2024``, ``March 5, 2024``, ``(mars. 2024``)."""
    for token in low[lo:year].split()[-2:]:
        token = token.rstrip(".,")
        if token in MONTHS:
            return True
        if token.isalpha():
            continue  # all letters: the word itself
        i = len(token)
        while i and token[i - 1].isalpha():
            i -= 1
        if token[i:] in MONTHS:
            return True
    return False


def _address_de(w: Win) -> Iterator[Span]:
    """``Hauptstraße 12``, ``Berliner Straße 5``: found from the street word and the number,
    then widened to the capitalised word(s) the street word ends."""
    text, a, b = w.scan.text, w.a, w.b
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


def _address_es(w: Win) -> Iterator[Span]:
    text, a, b = w.scan.text, w.a, w.b
    for m in _ADDRESS_ES.finditer(text, a, b):
        if _word_start(text, m.start()):
            yield Span(m.start(), m.end(), 2, "ADDRESS")


_MONEY = re.compile(
    "|".join(re.escape(w) for w in ("$", "€", "£", "¥", "₹", "₣", *_CODES.split("|"), "Euro",
                                     "euro", "EURO", "Dollar", "dollar", "Pound", "pound",
                                     "Franc", "franc"))
)  # fmt: skip
"""A currency symbol, code or word (alternatives that each start with a literal: re scans
for those fast, unlike a class among the alternatives)."""
_AMOUNT_GATE = Gate(lambda ws: True, lambda w: _MONEY.search(w.seg) is not None)

TIER2_IN_WINDOWS: tuple[tuple[tuple[Detector, bool, Gate], ...], ...] = (
    ((_matcher(_ADDRESS_EN, "ADDRESS", _STREET_NUMBER), True, _anchor(_STREET_NUMBER)),
     (_address_de, True, _cue("straße", "strasse", "str.", "weg", "gasse", "platz", "allee",
                              "damm", "ufer")),
     (_matcher(_ADDRESS_FR, "ADDRESS"), True,
      _cue("rue", "av", "bd", "place", "chemin", "quai", "allée", "impasse", "route")),
     (_address_es, True, _has("Calle", "Avenida", "Avda", "Plaza", "Paseo", "Via", "Piazza",
                              "Corso", "Largo"))),
    ((_date(_DATES[0], _ISO_DATE), False, _anchor(_ISO_DATE, _run_of(4, "-"))),
     (_date(_DATES[1]), False, _has("/")),
     (_date(_DATES[2], _DAY_MONTH_YEAR), False,
      _anchor(_DAY_MONTH_YEAR, _run_of(4, ".", "-"))),
     (_date(_DATES[3], _DAY_MONTH_NAME), False, _anchor(_DAY_MONTH_NAME, _run_of(4))),
     (_month_first, True, _run_of(4))),
    ((_matcher(_AMOUNT, "AMOUNT"), False, _AMOUNT_GATE),),
    ((_phone(_PHONES[0]), False, _shape(b"+d", _has("+"))),
     (_phone(_PHONES[1]), False, _shape(b"(ddd)", _has("("))),
     (_phone(_PHONES[2], _PHONE_DASHED), False,
      _anchor(_PHONE_DASHED, _run_of(4, "-", "."))),
     (_phone(_PHONES[3]), False, _has("0"))),
    ((_matcher(_LONG_DIGITS, "NUMBER"), False, _run_of(8)),),
)  # fmt: skip
"""Addresses, dates, amounts, phones, long digit runs: in this order of priority."""

# --- windows -----------------------------------------------------------------------------

_DIGIT_RUN = re.compile(rb"dd*")
"""A run of ASCII digits, in the kinds (a pattern that starts with a literal: scanned fast)."""
MARGIN = 64
"""Characters around a digit run where cue words, street or month names may be (wide)."""
TIGHT = (6, 36)
"""Before and after a digit run for patterns that start at most a currency code before it
and end a scale and currency word after it (tight)."""


def _end_at_space(text: bytes, b: int) -> int:
    """Push a window's end to the next space or newline (bounded), so lookaheads at its end
    see what they would see in the whole text. ``text``: ``Scan.ascii`` (same positions)."""
    if b >= len(text):
        return len(text)
    space = text.find(b" ", b, b + MARGIN)
    newline = text.find(b"\n", b, b + MARGIN if space == -1 else space)
    if newline != -1:
        return newline
    return space if space != -1 else min(len(text), b + MARGIN)


def windows(
    scan: Scan, runs: list[tuple[int, int]], before: int = MARGIN, after: int = MARGIN
) -> Windows:
    """The stretches around the text's digit runs (near ones merged): every detector but the
    entity, e-mail, URL and cued-SWIFT ones needs a digit, and looks only there. Lookbehinds
    see the text before a window; its end is at a whitespace."""
    text = scan.ascii
    out: list[Win] = []
    start = end = -1
    digits = longest = most = 0
    for s, e in runs:
        if start != -1 and s - end <= before + after:
            end, digits = e, digits + e - s
            if e - s > longest:
                longest = e - s
            continue
        if start != -1:
            a = start - before if start > before else 0
            out.append(Win(scan, a, _end_at_space(text, end + after), digits, longest))
            most = digits if digits > most else most
        start, end, digits, longest = s, e, e - s, e - s
    if start != -1:
        a = start - before if start > before else 0
        out.append(Win(scan, a, _end_at_space(text, end + after), digits, longest))
        most = digits if digits > most else most
    return Windows(scan, out, most, max((w.longest for w in out), default=0))


_NON_SPACE = re.compile(r"\S*")


def _around(scan: Scan, needles: tuple[str, ...], before: int, after: int = 0
            ) -> list[tuple[int, int]]:  # fmt: skip
    """Windows around each occurrence of the needles (in the lower-cased text): from
    ``before`` characters before it to the end of its word (at least ``after`` past it)."""
    text, low, ascii_text = scan.text, scan.low, scan.ascii
    out = []
    for needle in needles:
        pos = low.find(needle)
        while pos != -1:
            m = _NON_SPACE.match(text, pos)
            end = max(m.end() if m else pos, min(len(text), pos + after))
            out.append((max(0, pos - before), _end_at_space(ascii_text, end)))
            pos = low.find(needle, pos + 1)
    return out


def _in(detector: Detector, scan: Scan, wins: Iterable[tuple[int, int]]) -> list[Span]:
    found: list[Span] = []
    for a, b in wins:
        found += detector(Win(scan, a, b, 0, 0))
    return found


def _finditer(w: Win, pattern: re.Pattern[str], anchor: Anchor | None) -> Iterator[re.Match[str]]:
    """``pattern.finditer`` over the window. With an anchor (every position where a match can
    start), only those positions are tried, one ``match`` each, leftmost first and none inside
    the previous match: the same matches (none of these patterns matches empty text)."""
    scan, a, b = w.scan, w.a, w.b
    starts = None if anchor is None else scan.starts(anchor)
    if starts is None:
        yield from pattern.finditer(scan.text, a, b)
        return
    free = a
    for q in starts[bisect_left(starts, a) : bisect_left(starts, b)]:
        if q >= free:
            m = pattern.match(scan.text, q, b)
            if m:
                yield m
                free = m.end()


def _gated(detector: Detector, gate: Gate, ws: Windows) -> list[Span]:
    found: list[Span] = []
    if gate.all(ws):
        one = gate.one
        for w in ws.wins:
            if one(w):
                found += detector(w)
    return found


# --- resolution --------------------------------------------------------------------------


_START, _END = itemgetter(0), itemgetter(1)


def _claim(found: list[Span], mask: bytearray, out: list[Span]) -> None:
    """Accept spans that touch nothing claimed yet (leftmost, then longest, first)."""
    if len(found) > 1:  # two stable sorts in C: by start, and by end (last first) within it
        found.sort(key=_END, reverse=True)
        found.sort(key=_START)
    for span in found:
        start, end = span[0], span[1]
        if end > start and mask.find(1, start, end) == -1:
            mask[start:end] = b"\x01" * (end - start)
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
    _claim([Span(m.start(), m.end(), 2, LITERAL) for m in TOKEN_RE.finditer(text)], mask, out)
    lowered = text.lower()
    same = len(lowered) == len(text)
    low = lowered if same else "".join(ch.lower()[:1] or ch for ch in text)
    others = None if lowered.isascii() else non_ascii(lowered)
    exact = others is None or not any(ch.isdecimal() or ch.isspace() for ch in others)
    scan = Scan(text, low, same, exact)
    runs = [m.span() for m in _DIGIT_RUN.finditer(scan.kinds)]
    wide, tight = windows(scan, runs), windows(scan, runs, *TIGHT)
    for detector, needs_wide, gate in TIER1:
        found = _gated(detector, gate, wide if needs_wide else tight)
        if found:
            _claim(found, mask, out)
    if _capitals(scan.kinds, 0, len(text)):
        cued = [(a, b) for a, b in _around(scan, _SWIFT_CUES, 0, 48)
                if _capitals(scan.kinds, a, b)]  # fmt: skip
        _claim(_in(_swift, scan, cued), mask, out)
    if entities is not None:
        found = [Span(a, b, 2, kind) for a, b, kind in entities.matches(text, lowered, others)]
        _claim(found, mask, out)
    if "@" in text:
        _claim(_in(_EMAILS, scan, _around(scan, ("@",), 64)), mask, out)
    _claim(_in(_urls, scan, _around(scan, ("http", "www."), 0)), mask, out)
    for i, group in enumerate(TIER2_IN_WINDOWS):
        if (i == 1 and not dates) or (i == 2 and not amounts):
            continue
        for detector, needs_wide, gate in group:
            found = _gated(detector, gate, wide if needs_wide else tight)
            if found:
                _claim(found, mask, out)
    out.sort()
    return out
