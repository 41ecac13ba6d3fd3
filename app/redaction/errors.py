"""The gateway's refusals. Codes are the earlier gateway's (lower case, its clients match
them); messages and extra fields name kinds and tokens, never a value."""

from __future__ import annotations

from typing import Any

from app.errors import SparkError


class RedactionError(SparkError):
    code = "redaction_error"
    status = 422

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code}


class Tier1Detected(RedactionError):
    """``tier1_action: reject`` and tier-1 values were found: nothing is emitted."""

    code = "tier1_detected"

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = sorted(set(kinds))
        super().__init__(f"tier 1 values found ({', '.join(self.kinds)}); nothing was emitted")

    def body(self) -> dict[str, Any]:
        return {**super().body(), "kinds": self.kinds}


class NerUnavailable(RedactionError):
    """The NER model was asked for and could not answer: fail closed."""

    code = "ner_unavailable"

    def __init__(self, why: str) -> None:
        super().__init__(f"the NER model is unavailable ({why}); nothing was emitted")


class UnknownTokens(RedactionError):
    """Strict rehydration met tokens the map does not hold."""

    code = "unknown_tokens"

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = sorted(set(tokens))
        super().__init__(f"{len(self.tokens)} token(s) not in this map")

    def body(self) -> dict[str, Any]:
        return {**super().body(), "tokens": self.tokens}


class MapNotFound(RedactionError):
    code = "map_not_found"
    status = 404

    def __init__(self) -> None:
        super().__init__("map_handle unknown or expired")


class MapUnavailable(RedactionError):
    """The map database cannot be opened or written (the message names the path and why)."""

    code = "map_unavailable"
    status = 503


class BadRedactionRequest(RedactionError):
    code = "bad_request"
    status = 400
