"""RFC 9457 problem details: one error shape for every failure, so clients never parse HTML or guess.

Raise ``Problem(status, title, detail)`` anywhere below a route; the handlers registered by
``install_handlers`` turn it (and validation errors, unknown routes, an unreachable database and
unexpected bugs) into ``application/problem+json`` bodies with ``type``/``title``/``status``/``detail``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://carewatch.invalid/problems/"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "error"


class Problem(Exception):
    """An HTTP error with a stable machine-readable ``type`` and a human ``detail``.

    ``headers`` (e.g. Retry-After, WWW-Authenticate) may be passed as a keyword; every other keyword
    becomes an extension member of the body.
    """

    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.headers: dict[str, str] = dict(extra.pop("headers", None) or {})
        self.type = str(extra.pop("type", None) or TYPE_BASE + _slug(title))
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class ProblemModel(BaseModel):
    """Schema of every error body (documented in OpenAPI for each route)."""

    type: str = Field(examples=[TYPE_BASE + "not-found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["resident 42 does not exist"])
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Validation errors: field path and message for each invalid field."
    )


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problem statuses a route (or router) can answer."""
    return {
        code: {"model": ProblemModel, "content": {PROBLEM_JSON: {}}, "description": title_for(code)}
        for code in codes
    }


def problem_response(problem: Problem) -> JSONResponse:
    return JSONResponse(
        problem.body(), status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def db_unavailable(detail: str = "the database is unreachable; retry shortly") -> Problem:
    return Problem(503, "Service unavailable", detail, headers={"Retry-After": "5"})


_STATUS_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def title_for(status: int) -> str:
    return _STATUS_TITLES.get(status, "Error")


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        errors.append(
            {
                "field": ".".join(loc[1:]) if len(loc) > 1 else ".".join(loc),
                "in": loc[0] if loc else "",
                "message": str(err.get("msg", "")),
            }
        )
    fields = ", ".join(e["field"] or e["in"] for e in errors)
    return problem_response(Problem(422, "Validation failed", f"invalid fields: {fields}", errors=errors))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else title_for(exc.status_code)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}"
    if exc.status_code == 405 and detail == "Method Not Allowed":
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(
        Problem(exc.status_code, title_for(exc.status_code), detail, headers=dict(exc.headers or {}))
    )


async def _on_db_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return problem_response(db_unavailable())


async def _on_data_error(request: Request, exc: Exception) -> JSONResponse:
    """Input the database cannot hold (a NUL byte in text, a number out of its column's range) is the
    caller's mistake: a precise 422, not a 500."""
    detail = str(exc).splitlines()[0][:200] if str(exc) else "the input cannot be stored"
    log.info("rejected input in %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return problem_response(Problem(422, "Invalid input", detail))


async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return problem_response(
        Problem(500, "Internal server error", "an unexpected error occurred; it was logged")
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(PoolTimeout, _on_db_down)
    app.add_exception_handler(psycopg.OperationalError, _on_db_down)
    app.add_exception_handler(psycopg.DataError, _on_data_error)
    app.add_exception_handler(Exception, _on_bug)
