"""HTTP edge of the hotline queue (mounted under /api/v1 by api.app).

Staff (operator, supervisor, admin) act on calls; family users may only read the calls of their linked
residents, as summaries without notes, log or responders. Domain errors map to problem details: 409 when
another operator holds the call, 422 for a transition the state machine forbids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.access import record_access
from api.deps import (
    Conn,
    Principal,
    get_conn,
    get_settings_dep,
    report_window,
    require_roles,
    visible_resident,
)
from api.errors import Problem
from carewatch.settings import Settings
from hotline import lifecycle, reports, service
from hotline.service import Actor, Publisher
from hotline.store import call_summary

router = APIRouter(tags=["hotline"])

STAFF = ("operator", "supervisor", "admin")
EVERYONE = (*STAFF, "family")
PUBLIC_FIELDS = (
    "id",
    "resident_id",
    "resident_name",
    "priority",
    "status",
    "title",
    "created_at",
    "claimed_at",
    "resolved_at",
    "outcome",
    "cancelled_by_wearer",
)
T = TypeVar("T")


def _actor(principal: Principal) -> Actor:
    return Actor(principal.id, principal.username, principal.role)


def _now() -> datetime:
    return datetime.now(UTC)


def _publisher(request: Request) -> Publisher | None:
    """The API process's MQTT command publisher, if the app set one (app.state.cmd_publisher)."""
    publisher: Publisher | None = getattr(request.app.state, "cmd_publisher", None)
    return publisher


@contextmanager
def _domain_errors(call_id: int | None = None) -> Iterator[None]:
    try:
        yield
    except lifecycle.HeldByOther as exc:
        raise Problem(409, "Conflict", str(exc), call_id=call_id) from exc
    except service.Conflict as exc:
        raise Problem(409, "Conflict", str(exc), call_id=call_id) from exc
    except lifecycle.InvalidTransition as exc:
        raise Problem(422, "Invalid transition", str(exc), call_id=call_id) from exc
    except lifecycle.Forbidden as exc:
        raise Problem(403, "Forbidden", str(exc)) from exc
    except service.NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from exc


def _run(call_id: int | None, fn: Callable[[], T]) -> T:
    with _domain_errors(call_id):
        return fn()


# --- reads -------------------------------------------------------------------------------------------


@router.get("/calls", summary="Open calls in queue order (priority, escalation, waiting time)")
def list_calls(
    status: Literal["queued", "claimed", "in_progress", "resolved"] | None = None,
    priority: int | None = Query(default=None, ge=1, le=4),
    resident_id: int | None = Query(default=None, ge=1, le=2**62),
    limit: int = Query(default=200, ge=1, le=1000),
    principal: Principal = Depends(require_roles(*EVERYONE)),
    conn: Conn = Depends(get_conn),
) -> list[dict[str, Any]]:
    if resident_id is not None:
        visible_resident(principal, resident_id)
    rows = service.list_calls(
        conn,
        status=status,
        priority=priority,
        resident_id=resident_id,
        visible=principal.resident_ids,
        limit=limit,
    )
    if principal.role == "family":
        return [{k: r[k] for k in PUBLIC_FIELDS} for r in rows]
    return rows


@router.get("/calls/{call_id}", summary="The call screen: alerts, log, contacts with attempts, dispatches")
def get_call(
    call_id: int,
    principal: Principal = Depends(require_roles(*EVERYONE)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    family = principal.role == "family"
    call = _run(call_id, lambda: service.get_call(conn, call_id, internal=not family))
    visible_resident(principal, int(call["resident_id"]))
    record_access(conn, principal, int(call["resident_id"]), "read:call", {"call_id": call_id})
    return call


# --- actions ------------------------------------------------------------------------------------------


class NoteIn(BaseModel):
    note: str | None = Field(default=None, max_length=4000)


class NoteRequired(BaseModel):
    note: str = Field(min_length=1, max_length=4000)
    internal: bool = Field(default=True, description="Internal notes are never shown to family.")


class ContactAttemptIn(BaseModel):
    contact_id: int = Field(ge=1, le=2**62)
    result: Literal["reached", "no_answer", "declined", "busy"]
    note: str | None = Field(default=None, max_length=4000)


class DispatchIn(BaseModel):
    responder_kind: Literal["ambulance", "care_worker", "family", "property_manager", "police", "other"]
    responder_name: str = Field(default="", max_length=200)
    note: str | None = Field(default=None, max_length=4000)


class ArrivedIn(BaseModel):
    handover: Literal["hospital", "family", "resolved_at_home", "other"] | None = None
    note: str | None = Field(default=None, max_length=4000)


class ResolveIn(BaseModel):
    outcome: Literal[
        "genuine_emergency",
        "resident_ok",
        "false_alarm",
        "no_answer_help_sent",
        "technical_fault",
        "cancelled_by_wearer",
    ]
    note: str = Field(min_length=1, max_length=4000)


@router.post(
    "/calls/claim-next",
    summary="Claim the top of the queue (204 when the queue is empty)",
    responses={204: {"description": "the queue is empty: nothing to claim"}},
)
def claim_next(
    request: Request,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> Any:
    call = _run(None, lambda: service.claim_next(conn, _actor(principal), _now(), _publisher(request)))
    return Response(status_code=204) if call is None else call


@router.post("/calls/{call_id}/claim", summary="Claim a call (409 if another operator holds it)")
def claim(
    call_id: int,
    request: Request,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    return _run(call_id, lambda: service.claim(conn, call_id, _actor(principal), _now(), _publisher(request)))


@router.post("/calls/{call_id}/release", summary="Return a held call to the queue")
def release(
    call_id: int,
    body: NoteIn | None = None,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    note = body.note if body else None
    return _run(call_id, lambda: service.release(conn, call_id, _actor(principal), _now(), note))


@router.post("/calls/{call_id}/start", summary="claimed → in_progress")
def start(
    call_id: int,
    body: NoteIn | None = None,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    note = body.note if body else None
    return _run(call_id, lambda: service.start(conn, call_id, _actor(principal), _now(), note))


@router.post("/calls/{call_id}/notes", summary="Add a note (allowed at every step)")
def add_note(
    call_id: int,
    body: NoteRequired,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    return _run(
        call_id, lambda: service.add_note(conn, call_id, _actor(principal), _now(), body.note, body.internal)
    )


@router.post("/calls/{call_id}/contact-attempts", summary="Record one attempt to reach a contact")
def contact_attempt(
    call_id: int,
    body: ContactAttemptIn,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    return _run(
        call_id,
        lambda: service.contact_attempt(
            conn,
            call_id,
            _actor(principal),
            _now(),
            contact_id=body.contact_id,
            result=body.result,
            note=body.note,
        ),
    )


@router.post("/calls/{call_id}/dispatch", status_code=201, summary="Record who was sent")
def dispatch(
    call_id: int,
    body: DispatchIn,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    dispatch_id = _run(
        call_id,
        lambda: service.dispatch(
            conn,
            call_id,
            _actor(principal),
            _now(),
            responder_kind=body.responder_kind,
            responder_name=body.responder_name,
            note=body.note,
        ),
    )
    return {"dispatch_id": dispatch_id, "call": call_summary(conn, call_id)}


@router.post("/calls/{call_id}/dispatches/{dispatch_id}/arrived", summary="The responder is on site")
def arrived(
    call_id: int,
    dispatch_id: int,
    body: ArrivedIn | None = None,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    body = body or ArrivedIn()
    return _run(
        call_id,
        lambda: service.arrived(
            conn, call_id, dispatch_id, _actor(principal), _now(), handover=body.handover, note=body.note
        ),
    )


@router.post("/calls/{call_id}/resolve", summary="Close the call with an outcome and a note")
def resolve(
    call_id: int,
    body: ResolveIn,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    return _run(
        call_id,
        lambda: service.resolve(
            conn, call_id, _actor(principal), _now(), outcome=body.outcome, note=body.note
        ),
    )


@router.post("/calls/{call_id}/reopen", summary="Reopen a resolved call (supervisors)")
def reopen(
    call_id: int,
    body: NoteIn | None = None,
    principal: Principal = Depends(require_roles("supervisor", "admin")),
    conn: Conn = Depends(get_conn),
    settings: Settings = Depends(get_settings_dep),
) -> dict[str, Any]:
    note = body.note if body else None

    def run() -> dict[str, Any]:
        call = service.get_call(conn, call_id, internal=False)
        return service.reopen(
            conn,
            call_id,
            _actor(principal),
            _now(),
            answer_target_s=settings.answer_target(int(call["priority"])),
            note=note,
        )

    return _run(call_id, run)


# --- reports ------------------------------------------------------------------------------------------


@router.get(
    "/reports/answer-times",
    summary="Time to claim / resolve per priority, operator and day",
    responses={200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}}},
)
def answer_times(
    from_: datetime | None = Query(default=None, alias="from", description="Default: 7 days before `to`."),
    to: datetime | None = Query(default=None, description="Default: now."),
    format: Literal["json", "csv"] = "json",
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
    settings: Settings = Depends(get_settings_dep),
) -> Any:
    now = _now()
    begin, end = report_window(from_, to, now)
    report = service.answer_time_report(conn, start=begin, end=end, now=now, targets=settings.answer_target_s)
    if format == "csv":
        return Response(
            reports.to_csv(report),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="answer-times.csv"'},
        )
    return report
