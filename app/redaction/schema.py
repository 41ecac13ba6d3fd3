"""Request bodies of /scrub and /rehydrate (the earlier gateway's contract) and the chat
redaction policy. Unknown fields are ignored: existing clients send what they send."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import msgspec

from app.redaction.errors import BadRedactionRequest

MAX_ITEMS = 1000
MAX_TEXT_CHARS = 2_000_000
MAX_ENTITIES = 5000

T = TypeVar("T")
Label = Annotated[str, msgspec.Meta(max_length=200)]
"""task_id, actor, item ids: labels of the caller's, bounded (they reach audit events)."""
Tier1Action = Literal["drop", "reject"]
NerMode = Literal["auto", "rules_only", "llm"]


class KnownEntities(msgspec.Struct, kw_only=True):
    persons: list[str] = msgspec.field(default_factory=list)
    orgs: list[str] = msgspec.field(default_factory=list)
    funds: list[str] = msgspec.field(default_factory=list)
    emails: list[str] = msgspec.field(default_factory=list)
    locations: list[str] = msgspec.field(default_factory=list)

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """(token type, value) of every entity."""
        return (
            *(("PERSON", v) for v in self.persons),
            *(("ORG", v) for v in self.orgs),
            *(("FUND", v) for v in self.funds),
            *(("EMAIL", v) for v in self.emails),
            *(("LOCATION", v) for v in self.locations),
        )


class Bucket(msgspec.Struct, kw_only=True):
    """Which bucket-able tier-2 kinds are tokenised (false: left in clear, e.g. when the task
    needs the figures)."""

    amounts: bool = True
    dates: bool = True


class Policy(msgspec.Struct, kw_only=True):
    """How to scrub: the /scrub fields other than the items (also the chat policy)."""

    known_entities: KnownEntities = msgspec.field(default_factory=KnownEntities)
    tier1_action: Tier1Action = "drop"
    bucket: Bucket = msgspec.field(default_factory=Bucket)
    ner: NerMode = "auto"
    map_handle: str | None = None


class ScrubItem(msgspec.Struct, kw_only=True):
    id: Label | int
    text: str


class ScrubRequest(Policy, kw_only=True):
    task_id: Label | int | None = None
    actor: Label | None = None
    items: list[ScrubItem]


class RehydrateItem(msgspec.Struct, kw_only=True):
    id: Label | int
    text: str | None = None
    scrubbed_text: str | None = None
    """Accepted too: a client may send back the items /scrub returned."""

    def body(self) -> str:
        value = self.text if self.text is not None else self.scrubbed_text
        if value is None:
            raise BadRedactionRequest(f"items[{self.id}]: text is required")
        return value


class RehydrateRequest(msgspec.Struct, kw_only=True):
    task_id: Label | int | None = None
    actor: Label | None = None
    map_handle: str
    items: list[RehydrateItem]
    strict: bool = False


def _decode(data: bytes, kind: type[T], what: str) -> T:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        # msgspec names the field and the expected type, never the value
        raise BadRedactionRequest(f"{what}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BadRedactionRequest(f"{what}: body is not valid JSON") from exc


def _check_sizes(texts: list[str], entities: int) -> None:
    if len(texts) > MAX_ITEMS:
        raise BadRedactionRequest(f"items: at most {MAX_ITEMS}")
    if sum(len(t) for t in texts) > MAX_TEXT_CHARS:
        raise BadRedactionRequest(f"items: at most {MAX_TEXT_CHARS} characters in all")
    if entities > MAX_ENTITIES:
        raise BadRedactionRequest(f"known_entities: at most {MAX_ENTITIES}")


def decode_scrub(data: bytes) -> ScrubRequest:
    req = _decode(data, ScrubRequest, "scrub")
    _check_sizes([i.text for i in req.items], len(req.known_entities.pairs()))
    return req


def decode_rehydrate(data: bytes) -> RehydrateRequest:
    req = _decode(data, RehydrateRequest, "rehydrate")
    _check_sizes([i.body() for i in req.items], 0)
    return req


def decode_policy(data: bytes) -> Policy:
    return _decode(data, Policy, "redaction policy")
