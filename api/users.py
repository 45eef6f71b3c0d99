"""Users and roles (admins only): create, disable, reset password, link family users to residents.

Disabling or resetting a password bumps ``token_version``, which every request checks, so old tokens
die at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.auth import hash_password
from api.deps import Conn, Id, Principal, get_conn, require_roles
from api.errors import Problem, problems

router = APIRouter(prefix="/api/v1/users", tags=["users"], responses=problems(409))

Role = Literal["admin", "supervisor", "operator", "family"]
Username = str
USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"


class UserExists(Exception):
    """create_admin: the username is taken (pass reset=True to set a new password instead)."""


def create_admin(conn: Conn, username: str, password: str, *, reset: bool = False) -> int:
    """Create an admin (CLI ``carewatch create-admin``); with ``reset`` an existing user gets the new
    password, the admin role and is re-enabled. Returns the user id."""
    if len(password) < 8:
        raise ValueError("password must be at least 8 characters")
    hashed = hash_password(password)
    with conn.transaction():
        row = conn.execute("SELECT id FROM users WHERE username = %s FOR UPDATE", (username,)).fetchone()
        if row is not None:
            if not reset:
                raise UserExists(f"user {username!r} already exists (use --reset to set a new password)")
            conn.execute(
                "UPDATE users SET password_hash = %s, role = 'admin', disabled = false, "
                "token_version = token_version + 1 WHERE id = %s",
                (hashed, row["id"]),
            )
            return int(row["id"])
        new = conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'admin') RETURNING id",
            (username, hashed),
        ).fetchone()
        assert new is not None
        return int(new["id"])


class UserIn(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN, examples=["li.wei"])
    display_name: str = Field(default="", max_length=200, examples=["Li Wei"])
    password: str = Field(min_length=8, max_length=200, examples=["correct horse battery"])
    role: Role = Field(examples=["operator"])
    resident_ids: list[int] = Field(
        default_factory=list, max_length=100, description="Family users: the residents they may see."
    )


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str
    role: Role
    disabled: bool
    created_at: datetime
    resident_ids: list[int] = Field(default_factory=list)


class PasswordReset(BaseModel):
    password: str = Field(min_length=8, max_length=200)


class Links(BaseModel):
    resident_ids: list[int] = Field(max_length=100, examples=[[1, 2]])


_SELECT = """SELECT u.id, u.username, u.display_name, u.role, u.disabled, u.created_at,
                    coalesce(array_agg(f.resident_id ORDER BY f.resident_id)
                             FILTER (WHERE f.resident_id IS NOT NULL), '{}') AS resident_ids
               FROM users u LEFT JOIN family_links f ON f.user_id = u.id"""


def _get(conn: Conn, user_id: int) -> UserOut:
    row = conn.execute(_SELECT + " WHERE u.id = %s GROUP BY u.id", (user_id,)).fetchone()
    if row is None:
        raise Problem(404, "Not found", f"user {user_id} does not exist")
    return UserOut(**row)


def _set_links(conn: Conn, user_id: Id, role: str, resident_ids: list[int]) -> None:
    if resident_ids and role != "family":
        raise Problem(
            422,
            "Validation failed",
            "only family users are linked to residents",
            errors=[{"field": "resident_ids", "in": "body", "message": "only for role family"}],
        )
    ids = sorted(set(resident_ids))
    found = conn.execute("SELECT id FROM residents WHERE id = ANY(%s)", (ids,)).fetchall()
    missing = set(ids) - {r["id"] for r in found}
    if missing:
        raise Problem(
            422,
            "Validation failed",
            f"residents {sorted(missing)} do not exist",
            errors=[{"field": "resident_ids", "in": "body", "message": "unknown resident"}],
        )
    conn.execute("DELETE FROM family_links WHERE user_id = %s", (user_id,))
    for rid in ids:
        conn.execute("INSERT INTO family_links (user_id, resident_id) VALUES (%s, %s)", (user_id, rid))


@router.get("", response_model=list[UserOut], summary="List users")
def list_users(
    _: Principal = Depends(require_roles("admin")), conn: Conn = Depends(get_conn)
) -> list[UserOut]:
    rows = conn.execute(_SELECT + " GROUP BY u.id ORDER BY u.id").fetchall()
    return [UserOut(**r) for r in rows]


@router.post(
    "",
    response_model=UserOut,
    status_code=201,
    summary="Create a user",
    responses={409: {"description": "username taken"}},
)
def create_user(
    body: UserIn, _: Principal = Depends(require_roles("admin")), conn: Conn = Depends(get_conn)
) -> UserOut:
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO users (username, display_name, password_hash, role) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (username) DO NOTHING RETURNING id",
            (body.username, body.display_name, hash_password(body.password), body.role),
        ).fetchone()
        if row is None:
            raise Problem(409, "Conflict", f"username {body.username!r} is taken")
        _set_links(conn, row["id"], body.role, body.resident_ids)
    return _get(conn, row["id"])


@router.get("/{user_id}", response_model=UserOut, summary="One user")
def get_user(
    user_id: Id, _: Principal = Depends(require_roles("admin")), conn: Conn = Depends(get_conn)
) -> UserOut:
    return _get(conn, user_id)


def _set_disabled(conn: Conn, principal: Principal, user_id: Id, disabled: bool) -> UserOut:
    if disabled and user_id == principal.id:
        raise Problem(409, "Conflict", "you cannot disable yourself")
    row = conn.execute(
        "UPDATE users SET disabled = %s, token_version = token_version + 1 WHERE id = %s RETURNING id",
        (disabled, user_id),
    ).fetchone()
    if row is None:
        raise Problem(404, "Not found", f"user {user_id} does not exist")
    return _get(conn, user_id)


@router.post("/{user_id}/disable", response_model=UserOut, summary="Disable a user (tokens die at once)")
def disable_user(
    user_id: Id, principal: Principal = Depends(require_roles("admin")), conn: Conn = Depends(get_conn)
) -> UserOut:
    return _set_disabled(conn, principal, user_id, True)


@router.post("/{user_id}/enable", response_model=UserOut, summary="Re-enable a user")
def enable_user(
    user_id: Id, principal: Principal = Depends(require_roles("admin")), conn: Conn = Depends(get_conn)
) -> UserOut:
    return _set_disabled(conn, principal, user_id, False)


@router.post("/{user_id}/password", response_model=UserOut, summary="Reset a password (tokens die)")
def reset_password(
    user_id: Id,
    body: PasswordReset,
    _: Principal = Depends(require_roles("admin")),
    conn: Conn = Depends(get_conn),
) -> UserOut:
    row = conn.execute(
        "UPDATE users SET password_hash = %s, token_version = token_version + 1 WHERE id = %s RETURNING id",
        (hash_password(body.password), user_id),
    ).fetchone()
    if row is None:
        raise Problem(404, "Not found", f"user {user_id} does not exist")
    return _get(conn, user_id)


@router.put("/{user_id}/residents", response_model=UserOut, summary="Link a family user to residents")
def set_links(
    user_id: Id, body: Links, _: Principal = Depends(require_roles("admin")), conn: Conn = Depends(get_conn)
) -> UserOut:
    user = _get(conn, user_id)
    with conn.transaction():
        _set_links(conn, user_id, user.role, body.resident_ids)
    return _get(conn, user_id)
