"""Synthetic documents for the redaction tests and benchmark: every PII kind, several
languages' diacritics, valid checksums made here (nothing real), and look-alikes that must
stay (checksum-invalid numbers, technical tokens)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PERSONS = [
    "Jürgen Müller",
    "François Lefèvre",
    "José Núñez",
    "Łukasz Wąsik",
    "Zoë Ångström",
    "Søren Kierkegård",
    "Antonín Dvořák",
    "Siobhán Ní Bhriain",
    "Mary O'Neil",
    "Li Wei",
]
ORGS = [
    "Crédit Lyonnais Épargne",
    "Nordström Kapital AB",
    "Müller & Söhne GmbH",
    "Acme Holdings Inc.",
    "Banco Español de Crédito",
    "Żabka Polska",
]
FUNDS = ["Fjällräven Growth Fund III", "Alpine Résilience Fund", "Blue Harbor Capital Fund"]
LOCATIONS = ["São Paulo", "Zürich", "Kraków", "Málaga", "Reykjavík", "Montréal"]
EMAILS = ["j.mueller@mueller-soehne.de", "f.lefevre@credit-epargne.fr", "jose.nunez@bec.es"]
TECHNICAL = [
    "S3",
    "EKS",
    "C4",
    "vLLM 0.6.3.post1",
    "Python 3.12.10",
    "CUDA 13",
    "GB10",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "commit 3f2a9c1e",
    "192.168.1.10:8888",
    "--gpu-memory-utilization 0.82",
]


def iban(country: str, bban: str) -> str:
    digits = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    check = 98 - int(digits) % 97
    raw = f"{country}{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def luhn_complete(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it Luhn-valid."""
    for d in "0123456789":
        digits = prefix + d
        total = 0
        for i, ch in enumerate(reversed(digits)):
            v = int(ch)
            if i % 2:
                v = v * 2 - 9 if v > 4 else v * 2
            total += v
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def aba_complete(eight: str) -> str:
    d = [int(c) for c in eight]
    s = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5])
    return eight + str((10 - s % 10) % 10)


def spaced_card(number: str) -> str:
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


@dataclass
class Doc:
    text: str
    tier1: list[str] = field(default_factory=list)
    tier2: list[str] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)
    """What must stay as written (checksum-invalid numbers, technical tokens)."""


KNOWN = {"persons": PERSONS, "orgs": ORGS, "funds": FUNDS, "locations": LOCATIONS, "emails": EMAILS}


def document(rng: random.Random, tier1: bool = True) -> Doc:
    p, q = rng.sample(PERSONS, 2)
    org, fund, loc, mail = (
        rng.choice(ORGS),
        rng.choice(FUNDS),
        rng.choice(LOCATIONS),
        rng.choice(EMAILS),
    )
    tech = rng.sample(TECHNICAL, 3)
    bban_de = "".join(rng.choice("0123456789") for _ in range(18))
    good_iban = iban("DE", bban_de)
    bad_iban = good_iban[:-1] + str((int(good_iban[-1]) + 1) % 10)
    card = luhn_complete("4" + "".join(rng.choice("0123456789") for _ in range(14)))
    bad_card = card[:-1] + str((int(card[-1]) + 1) % 10)
    routing = aba_complete(
        "0" + rng.choice("12") + "".join(rng.choice("0123456789") for _ in range(6))
    )
    bad_routing = routing[:-1] + str((int(routing[-1]) + 1) % 10)
    ssn = f"{rng.randint(101, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
    phone = f"+49 30 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}"
    amount = f"€{rng.randint(1, 999)},{rng.randint(100, 999)}.00"
    date = f"{rng.randint(1, 28)} März {rng.randint(2019, 2026)}"
    lines = [
        f"Betreff: Überweisung für {p} ({mail}), {org}.",
        f"{q} from {fund} met {p.upper()} in {loc} on {date}; the fee was {amount}.",
        f"Call {phone} or write to {mail}. Adresse: Hauptstraße {rng.randint(1, 99)}, {loc}.",
        f"Ref {rng.randint(10**9, 10**10 - 1)}; see https://example.com/c/{rng.randint(1, 9)}.",
        f"Tech: {tech[0]}, {tech[1]} and {tech[2]} stay as they are. Also [PERSON_1] and [ORG_9].",
        f"Wrong numbers stay: IBAN {bad_iban}, card {spaced_card(bad_card)},",
        f"and routing number {bad_routing}.",
    ]
    doc = Doc(
        "",
        tier2=[p, q, org, fund, loc, mail, phone, amount, date],
        plain=[*tech, bad_iban, spaced_card(bad_card), bad_routing],
    )
    if tier1:
        lines += [
            f"Pay IBAN {good_iban} (BIC COBADEFFXXX), card {spaced_card(card)}.",
            f"Routing number {routing}, SSN {ssn}, passport no. C01X00T{rng.randint(10, 99)}.",
            f"Kontonummer: {rng.randint(10**7, 10**8 - 1)}.",
        ]
        doc.tier1 = [good_iban, good_iban.replace(" ", ""), card, spaced_card(card), routing, ssn]
    rng.shuffle(lines)
    doc.text = "\n".join(lines)
    return doc


def corpus(n: int, seed: int = 7, tier1: bool = True) -> list[Doc]:
    rng = random.Random(seed)
    return [document(rng, tier1) for _ in range(n)]


def prompt_4k(seed: int = 1) -> tuple[str, dict[str, list[str]]]:
    """About 4 KB of prose naming 20 known entities (each a few times), with the odd e-mail,
    amount, date, phone number and figure an analyst's prompt carries: the benchmark's."""
    rng = random.Random(seed)
    entities = {
        "persons": PERSONS[:8],
        "orgs": ORGS[:5],
        "funds": FUNDS,
        "locations": LOCATIONS[:4],
    }
    names = [v for vs in entities.values() for v in vs]
    others = [
        "j.mueller@mueller-soehne.de",
        "€1,250,000",
        "USD 3.4M",
        "15 March 2024",
        "2024-06-30",
        "+41 44 668 1800",
        "12.5%",
        "Q3 2024",
        "S3",
        "v2.1",
        "4.2x",
    ]
    words = [
        "the",
        "quarterly",
        "review",
        "covers",
        "allocation",
        "risk",
        "exposure",
        "and",
        "the",
        "liquidity",
        "position",
        "of",
        "each",
        "mandate",
        "with",
        "commentary",
        "on",
        "fees",
        "performance",
        "and",
        "outlook",
        "for",
        "next",
        "year",
    ]
    parts: list[str] = []
    while sum(len(x) + 1 for x in parts) < 4096:
        r = rng.random()
        parts.append(
            rng.choice(names) if r < 0.06 else rng.choice(others) if r < 0.08 else rng.choice(words)
        )
    return " ".join(parts)[:4096], entities
