"""FastAPI dependencies shared by every router: who is calling, may they, and a database connection.

Routers (including ``hotline.views``) declare access with ``Depends(require_roles("operator", ...))``;
the allowed roles are kept on the dependency (``allowed_roles``) so tests can enumerate them from the
routes. Family users are scoped to their linked residents: call ``visible_resident`` (or
``resident_or_404``) before touching any resident-scoped data, so another resident answers 404.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Path, Request
from fastapi.security import OAuth2PasswordBearer
from psycopg_pool import ConnectionPool, PoolTimeout

from api.errors import Problem, db_unavailable
from api.tokens import InvalidToken, decode
from carewatch.settings import Settings

ROLES = ("admin", "supervisor", "operator", "family")
STAFF = ("admin", "supervisor", "operator")
ALL_ROLES = ROLES
CONN_TIMEOUT_S = 3.0

Conn = psycopg.Connection[dict[str, Any]]

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


@dataclass(frozen=True)
class Principal:
    id: int
    username: str
    role: str
    resident_ids: frozenset[int] | None  # None: may see every resident; family: their linked ids

    def sees(self, resident_id: int) -> bool:
        return self.resident_ids is None or resident_id in self.resident_ids


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_conn(request: Request) -> Iterator[Conn]:
    """A pooled connection in autocommit mode: wrap multi-statement writes in ``conn.transaction()``.

    An unreachable database answers 503 (problem body) after a short wait instead of hanging.
    """
    pool: ConnectionPool[Conn] = request.app.state.pool
    try:
        ctx = pool.connection(timeout=CONN_TIMEOUT_S)
        conn = ctx.__enter__()
    except (PoolTimeout, psycopg.OperationalError) as exc:
        raise db_unavailable() from exc
    try:
        if not conn.autocommit:
            conn.autocommit = True
        yield conn
    except BaseException as exc:
        ctx.__exit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        ctx.__exit__(None, None, None)


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def principal_for_token(conn: Conn, key: str, token: str) -> Principal:
    """Check the token AND the current user row: disabled users and old token versions lose access."""
    try:
        claims = decode(key, token, "access")
    except InvalidToken as exc:
        raise _unauthorized(str(exc)) from exc
    row = conn.execute(
        "SELECT id, username, role, disabled, token_version FROM users WHERE id = %s", (claims.user_id,)
    ).fetchone()
    if row is None or row["disabled"]:
        raise _unauthorized("the user is disabled or no longer exists")
    if row["token_version"] != claims.version:
        raise _unauthorized("the token was revoked (password reset or user disabled); sign in again")
    resident_ids: frozenset[int] | None = None
    if row["role"] == "family":
        links = conn.execute("SELECT resident_id FROM family_links WHERE user_id = %s", (row["id"],))
        resident_ids = frozenset(int(r["resident_id"]) for r in links.fetchall())
    return Principal(int(row["id"]), str(row["username"]), str(row["role"]), resident_ids)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def require_roles(*roles: str, query_token: bool = False) -> Callable[..., Principal]:
    """Dependency factory: the caller must hold a valid access token and one of ``roles``.

    ``query_token`` also accepts ``?access_token=`` (only for SSE: EventSource cannot set headers).
    Answers 401 without/with a bad token, 403 for a valid user of another role.
    """
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    allowed = frozenset(roles)

    def dependency(request: Request, _: str | None = Depends(oauth2_scheme)) -> Principal:
        token = _bearer(request)
        if token is None and query_token:
            token = request.query_params.get("access_token") or None
        if token is None:
            raise _unauthorized("sign in: an 'Authorization: Bearer <token>' header is required")
        # A short borrow of its own, so a long-lived response (SSE) does not pin a pooled connection.
        pool: ConnectionPool[Conn] = request.app.state.pool
        try:
            with pool.connection(timeout=CONN_TIMEOUT_S) as conn:
                principal = principal_for_token(conn, request.app.state.signing_key, token)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise db_unavailable() from exc
        if principal.role not in allowed:
            raise Problem(403, "Forbidden", f"the {principal.role} role may not use this endpoint")
        request.state.principal = principal
        return principal

    dependency.allowed_roles = allowed  # type: ignore[attr-defined]
    dependency.__name__ = f"require_{'_'.join(sorted(allowed))}"
    return dependency


def visible_resident(principal: Principal, resident_id: int) -> None:
    """404 (not 403) for a resident the caller may not see: family users learn nothing of others."""
    if not principal.sees(resident_id):
        raise Problem(404, "Not found", f"resident {resident_id} does not exist")


def resident_or_404(conn: Conn, principal: Principal, resident_id: int) -> dict[str, Any]:
    """The resident's registry row (no access codes), if it exists and the caller may see it."""
    visible_resident(principal, resident_id)
    row = conn.execute("SELECT * FROM residents WHERE id = %s", (resident_id,)).fetchone()
    if row is None:
        raise Problem(404, "Not found", f"resident {resident_id} does not exist")
    return row


# Path ids are bounded so that a huge number answers 422/404, never a bigint overflow (500).
Id = Annotated[int, Path(ge=1, le=2**62, description="Numeric id.", examples=[1])]


MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)


def as_utc(value: datetime) -> datetime:
    """Query times without an offset are taken as UTC."""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def report_window(
    start: datetime | None, end: datetime | None, now: datetime, default: timedelta = timedelta(days=7)
) -> tuple[datetime, datetime]:
    """The `from`/`to` of a history or report query: `to` defaults to now, `from` to `default` before it."""
    end = as_utc(end) if end else now
    start = as_utc(start) if start else end - default
    if not (MIN_TIME <= start < end <= MAX_TIME):
        raise Problem(
            422,
            "Validation failed",
            "'from' must be before 'to', both between 2000 and 2200",
            errors=[{"field": "from", "in": "query", "message": "must be before 'to'"}],
        )
    return start, end
