"""The OpenAPI document says what every operation can answer besides success: the JSON error
body ``{"error", "code"}`` (app/errors.py) for any 4xx and for 5xx, which Litestar cannot infer
because handlers raise SparkError rather than return it."""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
)

ERROR_BODY = Schema(
    type=OpenAPIType.OBJECT,
    required=["error", "code"],
    properties={
        "error": Schema(type=OpenAPIType.STRING, description="what went wrong, for people"),
        "code": Schema(type=OpenAPIType.STRING, description="stable machine code"),
    },
)


def _error(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={"application/json": OpenAPIMediaType(schema=ERROR_BODY)},
    )


ERRORS = {
    "400": _error("bad request: the body, a parameter or a value failed validation"),
    "4XX": _error("refused: unknown resource, not allowed, conflict, locked, too large, …"),
    "5XX": _error("the bus, a host, an upstream or the store is unavailable"),
}


def _operations(doc: OpenAPI) -> list[Operation]:
    found = []
    for item in (doc.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            op = getattr(item, method, None)
            if op is not None:
                found.append(op)
    return found


def document_errors(app: Litestar) -> None:
    """On start-up: every operation lists the error responses (400 replaces Litestar's
    ``ValidationException`` body, which this app never sends)."""
    for op in _operations(app.openapi_schema):
        responses = dict(op.responses or {})
        responses.update(ERRORS)
        op.responses = responses
