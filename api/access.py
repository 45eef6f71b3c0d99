"""The access log (who read whose health data) and the audited reveal of key-safe/door codes.

Access codes are never selected by ordinary queries (they live in resident_access) and never logged:
an operator sees them only by asking explicitly while holding an open call of that resident.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from api.deps import Conn, Id, Principal, get_conn, require_roles, resident_or_404
from api.errors import Problem, problems

router = APIRouter(prefix="/api/v1", tags=["access"], responses=problems(400))


def record_access(
    conn: Conn,
    principal: Principal,
    resident_id: int | None,
    action: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Audit one read of a resident's data (call it from every endpoint that returns health data)."""
    conn.execute(
        "INSERT INTO access_log (user_id, resident_id, action, detail) VALUES (%s, %s, %s, %s)",
        (principal.id, resident_id, action, Jsonb(detail or {})),
    )


class AccessLogEntry(BaseModel):
    id: int
    at: datetime
    user_id: int | None
    username: str | None
    resident_id: int | None
    action: str = Field(examples=["read:vitals"])
    detail: dict[str, Any]


class AccessLogPage(BaseModel):
    items: list[AccessLogEntry]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for the next (older) page.")


@router.get("/access-log", response_model=AccessLogPage, summary="Who read whose data (admins)")
def access_log(
    resident_id: int | None = Query(default=None, ge=1, le=2**62),
    user_id: int | None = Query(default=None, ge=1, le=2**62),
    cursor: str | None = Query(default=None, max_length=40, description="Opaque cursor from next_cursor."),
    limit: int = Query(default=100, ge=1, le=1000),
    principal: Principal = Depends(require_roles("admin")),
    conn: Conn = Depends(get_conn),
) -> AccessLogPage:
    before = 2**62
    if cursor is not None:
        try:
            before = int(cursor, 16)
        except ValueError as exc:
            raise Problem(400, "Bad request", "cursor is not valid") from exc
    rows = conn.execute(
        """SELECT a.id, a.at, a.user_id, u.username, a.resident_id, a.action, a.detail
             FROM access_log a LEFT JOIN users u ON u.id = a.user_id
            WHERE a.id < %(before)s
              AND (%(rid)s::bigint IS NULL OR a.resident_id = %(rid)s)
              AND (%(uid)s::bigint IS NULL OR a.user_id = %(uid)s)
            ORDER BY a.id DESC LIMIT %(lim)s""",
        {"before": before, "rid": resident_id, "uid": user_id, "lim": limit + 1},
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return AccessLogPage(
        items=[AccessLogEntry(**r) for r in rows],
        next_cursor=format(rows[-1]["id"], "x") if more and rows else None,
    )


class AccessReveal(BaseModel):
    resident_id: int
    access_notes: str = Field(description="Key-safe / door codes. Do not copy into notes or logs.")
    call_id: int


@router.post(
    "/residents/{resident_id}/access-reveal",
    response_model=AccessReveal,
    summary="Reveal access codes (operator holding an open call of this resident)",
    responses={403: {"description": "no open call of this resident is claimed by you"}},
)
def access_reveal(
    resident_id: Id,
    principal: Principal = Depends(require_roles("operator", "supervisor")),
    conn: Conn = Depends(get_conn),
) -> AccessReveal:
    resident_or_404(conn, principal, resident_id)
    call = conn.execute(
        "SELECT id FROM calls WHERE resident_id = %s AND status <> 'resolved' AND claimed_by = %s",
        (resident_id, principal.id),
    ).fetchone()
    if call is None:
        raise Problem(
            403,
            "Forbidden",
            "access codes are shown only to the operator holding an open call "
            f"of resident {resident_id}; claim the call first",
        )
    row = conn.execute(
        "SELECT access_notes FROM resident_access WHERE resident_id = %s", (resident_id,)
    ).fetchone()
    record_access(conn, principal, resident_id, "reveal:access", {"call_id": call["id"]})
    return AccessReveal(
        resident_id=resident_id, access_notes=row["access_notes"] if row else "", call_id=call["id"]
    )
