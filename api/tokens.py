"""Signed bearer tokens: short-lived access JWTs and longer refresh JWTs, both bound to the user's
``token_version`` so that disabling a user or resetting a password kills every token at once."""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt

from carewatch.settings import Settings

ALGORITHM = "HS256"
ISSUER = "carewatch"
TokenType = Literal["access", "refresh"]


def signing_key(settings: Settings) -> str:
    """The configured key, or one generated once and kept (mode 0600) under data_dir."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    path = Path(settings.data_dir) / "secret_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    try:
        os.link(path.with_suffix(".tmp"), path)  # first writer wins if two processes race
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        path.with_suffix(".tmp").unlink(missing_ok=True)
    return key


@dataclass(frozen=True)
class Claims:
    user_id: int
    version: int
    type: TokenType


def issue(
    key: str, user_id: int, version: int, type_: TokenType, ttl_s: int, *, now: float | None = None
) -> str:
    at = int(now if now is not None else time.time())
    payload: dict[str, Any] = {
        "sub": str(user_id),
        "ver": version,
        "typ": type_,
        "iat": at,
        "exp": at + ttl_s,
        "iss": ISSUER,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(payload, key, algorithm=ALGORITHM)


class InvalidToken(Exception):
    """Why a token was refused; the message is safe to show (it never echoes the token)."""


def decode(key: str, token: str, expected: TokenType) -> Claims:
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iat", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("the token has expired") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken("the token is invalid") from exc
    if payload.get("typ") != expected:
        raise InvalidToken(f"expected an {expected} token")
    try:
        return Claims(int(payload["sub"]), int(payload["ver"]), expected)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidToken("the token is invalid") from exc
