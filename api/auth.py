"""Sign-in: OAuth2 password flow returning a short-lived access JWT plus a refresh token.

Passwords are Argon2 hashes; attempts are rate-limited per username and per client address in memory
(per API process), which is what stops online guessing; 429 carries Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from api.deps import ALL_ROLES, Conn, Principal, get_conn, get_settings_dep, require_roles
from api.errors import Problem, problems
from api.tokens import InvalidToken, decode, issue
from carewatch.settings import Settings

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=problems(401, 429))

_hasher = PasswordHasher()
# Verified against when the user does not exist, so timing does not reveal valid usernames.
_DUMMY_HASH = _hasher.hash("carewatch-dummy-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


class RateLimiter:
    """Sliding one-minute window of attempts per key; thread-safe (sync routes run in a thread pool)."""

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float) -> float:
        """Record an attempt; return 0 if allowed, else seconds until the next attempt may be made."""
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.per_minute:
                return hits[0] + self.window_s - now
            hits.append(now)
            if len(self._hits) > 100_000:  # bound memory under a spray of usernames
                self._hits = {k: v for k, v in self._hits.items() if v and v[-1] > now - self.window_s}
            return 0.0


class TokenPair(BaseModel):
    access_token: str
    token_type: str = Field(default="bearer", examples=["bearer"])
    expires_in: int = Field(description="Seconds the access token is valid.", examples=[900])
    refresh_token: str
    refresh_expires_in: int = Field(examples=[43200])
    role: str = Field(examples=["operator"])


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=4096)


class Me(BaseModel):
    id: int
    username: str
    role: str
    resident_ids: list[int] | None = Field(description="Family: the residents they may see; others: null.")


def _pair(request: Request, settings: Settings, user: dict[str, Any]) -> TokenPair:
    key: str = request.app.state.signing_key
    return TokenPair(
        access_token=issue(key, user["id"], user["token_version"], "access", settings.token_ttl_s),
        expires_in=settings.token_ttl_s,
        refresh_token=issue(key, user["id"], user["token_version"], "refresh", settings.refresh_ttl_s),
        refresh_expires_in=settings.refresh_ttl_s,
        role=user["role"],
    )


def _too_many(wait: float) -> Problem:
    seconds = max(1, int(wait + 0.999))
    return Problem(
        429,
        "Too many requests",
        f"too many sign-in attempts; retry in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


_BAD_LOGIN = "username or password is incorrect, or the user is disabled"


@router.post(
    "/token",
    response_model=TokenPair,
    summary="Sign in (OAuth2 password flow)",
    responses={401: {"description": _BAD_LOGIN}, 429: {"description": "rate limited"}},
)
def token(
    request: Request,
    form: OAuth2PasswordRequestForm = Depends(),
    settings: Settings = Depends(get_settings_dep),
    conn: Conn = Depends(get_conn),
) -> TokenPair:
    limiter: RateLimiter = request.app.state.login_limiter
    now = time.monotonic()
    client = request.client.host if request.client else "unknown"
    for key in (f"user:{form.username.lower()[:64]}", f"ip:{client}"):
        wait = limiter.hit(key, now)
        if wait > 0:
            raise _too_many(wait)
    user = conn.execute(
        "SELECT id, role, password_hash, disabled, token_version FROM users WHERE username = %s",
        (form.username,),
    ).fetchone()
    ok = verify_password(user["password_hash"] if user else _DUMMY_HASH, form.password)
    if user is None or not ok or user["disabled"]:
        raise Problem(401, "Unauthorized", _BAD_LOGIN, headers={"WWW-Authenticate": "Bearer"})
    return _pair(request, settings, user)


@router.post(
    "/refresh",
    response_model=TokenPair,
    summary="Exchange a refresh token for new tokens",
    responses={401: {"description": "refresh token invalid, expired or revoked"}},
)
def refresh(
    request: Request,
    body: RefreshRequest,
    settings: Settings = Depends(get_settings_dep),
    conn: Conn = Depends(get_conn),
) -> TokenPair:
    try:
        claims = decode(request.app.state.signing_key, body.refresh_token, "refresh")
    except InvalidToken as exc:
        raise Problem(401, "Unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
    user = conn.execute(
        "SELECT id, role, disabled, token_version FROM users WHERE id = %s", (claims.user_id,)
    ).fetchone()
    if user is None or user["disabled"] or user["token_version"] != claims.version:
        raise Problem(
            401,
            "Unauthorized",
            "the refresh token was revoked; sign in again",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return _pair(request, settings, user)


@router.get("/me", response_model=Me, summary="Who am I")
def me(principal: Principal = Depends(require_roles(*ALL_ROLES))) -> Me:
    ids = None if principal.resident_ids is None else sorted(principal.resident_ids)
    return Me(id=principal.id, username=principal.username, role=principal.role, resident_ids=ids)
