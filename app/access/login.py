"""The dashboard's sign-in: a form that takes a token and keeps it in an HttpOnly cookie, so
pages, htmx calls and live logs (EventSource sends cookies, not headers) carry it. Also the
open liveness probe."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import MediaType, Request, get, post
from litestar.datastructures import Cookie, State
from litestar.params import QueryParameter
from litestar.response import Redirect, Template

from app.access.policy import COOKIE, Access
from app.access.tokens import READ

FORM_LIMIT = 4 * 1024
COOKIE_MAX_AGE_S = 30 * 86400


def access_of(state: State) -> Access:
    access: Access = state.access
    return access


def safe_next(value: object) -> str:
    """Where to go after signing in: a path on this site only (no ``//host``, no scheme)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/"


@get("/healthz")
async def healthz() -> dict[str, bool]:
    """Liveness, open to all: says nothing about hosts, models or the fleet."""
    return {"ok": True}


@get("/login", media_type=MediaType.HTML)
async def login_page(
    state: State, target: Annotated[str, QueryParameter(name="next")] = "/"
) -> Template | Redirect:
    if not access_of(state).required:
        return Redirect(safe_next(target))
    return Template("login.html", context={"next": safe_next(target), "error": None})


@post("/login", status_code=303, request_max_body_size=FORM_LIMIT, media_type=MediaType.HTML)
async def login(state: State, request: Request[Any, Any, Any]) -> Template | Redirect:
    """Form ``token``, ``next``: a token with the ``read`` scope sets the cookie."""
    form = await request.form()
    token, target = str(form.get("token") or "").strip(), safe_next(form.get("next"))
    access = access_of(state)
    if not access.required:
        return Redirect(target, status_code=303, media_type=MediaType.HTML)
    identity = access.tokens.lookup(token) if token else None
    error = None
    if identity is None:
        error = "unknown token"
    elif not identity.allows(READ):
        error = f"token {identity.name!r} cannot use the dashboard (it needs the read scope)"
    if error:
        context = {"next": target, "error": error}
        return Template("login.html", context=context, status_code=401)
    cookie = Cookie(
        key=COOKIE, value=token, path="/", httponly=True, samesite="lax",
        secure=request.url.scheme == "https", max_age=COOKIE_MAX_AGE_S,
    )  # fmt: skip
    return Redirect(target, status_code=303, cookies=[cookie], media_type=MediaType.HTML)


@post("/logout", status_code=303, media_type=MediaType.HTML)
async def logout() -> Redirect:
    gone = Cookie(key=COOKIE, value="", path="/", httponly=True, samesite="lax", max_age=0)
    return Redirect("/login", status_code=303, cookies=[gone], media_type=MediaType.HTML)


ROUTES = [healthz, login_page, login, logout]
