"""HTTP edge of the welfare package (mounted under /api/v1/welfare by api.app).

Operators and supervisors create requests, assign them to providers and act for the providers' workers
(who use operator accounts: there is no provider role). Family users may rate orders of their own
relative and read that relative's rescue timeline in summary. Supervisors (and admins) see the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.deps import Conn, Id, Principal, as_utc, get_conn, get_settings_dep, report_window, require_roles
from api.errors import Problem
from carewatch.settings import Settings
from hotline.service import Actor
from welfare import lifecycle, service, supervision

router = APIRouter(prefix="/welfare", tags=["welfare"])

STAFF = ("operator", "supervisor", "admin")
SUPERVISORS = ("supervisor", "admin")
EVERYONE = (*STAFF, "family")
T = TypeVar("T")
# PostgreSQL text cannot hold NUL bytes: refuse them as invalid input (422), not a 500.
NO_NUL = r"^[^\x00]*$"

Category = Literal[
    "meal_delivery", "cleaning", "bathing", "hospital_escort", "repairs", "shopping", "chat", "other"
]


def _actor(p: Principal) -> Actor:
    return Actor(p.id, p.username, p.role)


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except lifecycle.InvalidTransition as exc:
        raise Problem(422, "Invalid transition", str(exc)) from exc
    except lifecycle.Forbidden as exc:
        raise Problem(403, "Forbidden", str(exc)) from exc
    except service.NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from exc


def _run(fn: Callable[[], T]) -> T:
    with _errors():
        return fn()


# --- providers ---------------------------------------------------------------------------------------


class ProviderIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    district: str = Field(default="", max_length=200, pattern=NO_NUL)


@router.get("/providers", summary="Provider organisations")
def providers(
    _: Principal = Depends(require_roles(*STAFF)), conn: Conn = Depends(get_conn)
) -> list[dict[str, Any]]:
    return service.list_providers(conn)


@router.post("/providers", status_code=201, summary="Add a provider organisation (supervisors)")
def add_provider(
    body: ProviderIn, _: Principal = Depends(require_roles(*SUPERVISORS)), conn: Conn = Depends(get_conn)
) -> dict[str, Any]:
    try:
        return service.create_provider(conn, body.name, body.district)
    except psycopg.errors.UniqueViolation as exc:
        raise Problem(409, "Conflict", f"a provider named {body.name!r} exists") from exc


# --- service requests and work orders ----------------------------------------------------------------


class RequestIn(BaseModel):
    resident_id: int = Field(ge=1, le=2**62)
    category: Category
    wanted_at: datetime
    notes: str = Field(default="", max_length=4000, pattern=NO_NUL)


class AssignIn(BaseModel):
    org_id: int = Field(ge=1, le=2**62)


class OrderActionIn(BaseModel):
    action: Literal["accept", "decline", "assign_worker", "check_in", "check_out", "cancel"]
    worker_name: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    note: str | None = Field(default=None, max_length=4000, pattern=NO_NUL)


class CancelIn(BaseModel):
    note: str | None = Field(default=None, max_length=4000, pattern=NO_NUL)


class RatingIn(BaseModel):
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)


@router.get("/requests", summary="Service requests: open and assigned, earliest wanted time first")
def list_requests(
    status: Literal["open", "assigned", "done", "cancelled"] | None = None,
    principal: Principal = Depends(require_roles(*EVERYONE)),
    conn: Conn = Depends(get_conn),
) -> list[dict[str, Any]]:
    rows = service.list_requests(conn, _now(), status=status, resident_ids=principal.resident_ids)
    if principal.role == "family":
        keep = (
            "id",
            "resident_id",
            "category",
            "status",
            "wanted_at",
            "order_id",
            "order_status",
            "org_name",
            "checked_in_at",
            "checked_out_at",
            "rating",
        )
        return [{k: r[k] for k in keep} for r in rows]
    return rows


@router.post("/requests", status_code=201, summary="Open a request taken on the phone")
def create_request(
    body: RequestIn, principal: Principal = Depends(require_roles(*STAFF)), conn: Conn = Depends(get_conn)
) -> dict[str, Any]:
    return _run(
        lambda: service.create_request(
            conn,
            _actor(principal),
            _now(),
            resident_id=body.resident_id,
            category=body.category,
            wanted_at=as_utc(body.wanted_at),
            notes=body.notes,
        )
    )


@router.get("/requests/{request_id}", summary="A request with its orders and audit log")
def get_request(
    request_id: Id, _: Principal = Depends(require_roles(*STAFF)), conn: Conn = Depends(get_conn)
) -> dict[str, Any]:
    return _run(lambda: service.get_request(conn, request_id, _now()))


@router.post("/requests/{request_id}/assign", summary="Assign an open request to a provider (a work order)")
def assign(
    request_id: Id,
    body: AssignIn,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    return _run(lambda: service.assign(conn, request_id, body.org_id, _actor(principal), _now()))


@router.post("/requests/{request_id}/cancel", summary="Cancel a request (and its live order)")
def cancel(
    request_id: Id,
    body: CancelIn | None = None,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    note = body.note if body else None
    return _run(lambda: service.cancel_request(conn, request_id, _actor(principal), _now(), note))


@router.post(
    "/orders/{order_id}/actions", summary="accept, decline, assign_worker, check_in, check_out, cancel"
)
def order_action(
    order_id: Id,
    body: OrderActionIn,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    return _run(
        lambda: service.order_action(
            conn,
            order_id,
            body.action,
            _actor(principal),
            _now(),
            worker_name=body.worker_name,
            note=body.note,
        )
    )


@router.post("/orders/{order_id}/rating", summary="Rate a completed order (family of the resident, or staff)")
def rate(
    order_id: Id,
    body: RatingIn,
    principal: Principal = Depends(require_roles(*EVERYONE)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        resident_id = service.order_resident(conn, order_id)
        if not principal.sees(resident_id):
            raise service.NotFound(f"work order {order_id} does not exist")
        return service.rate(
            conn, order_id, _actor(principal), _now(), rating=body.rating, comment=body.comment
        )

    return _run(run)


# --- visits ------------------------------------------------------------------------------------------


class VisitIn(BaseModel):
    visited_at: datetime | None = Field(default=None, description="Default: now.")
    worker: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    findings: str = Field(min_length=1, max_length=4000, pattern=NO_NUL)
    follow_ups: str = Field(default="", max_length=4000, pattern=NO_NUL)


@router.get("/visits", summary="Due welfare visits (or only the overdue, or the latest done)")
def list_visits(
    status: Literal["due", "overdue", "done"] = "due",
    _: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> list[dict[str, Any]]:
    return service.list_visits(conn, _now(), status=status)


@router.post("/visits/schedule", summary="Create the visits that fall due (idempotent)")
def schedule(_: Principal = Depends(require_roles(*STAFF)), conn: Conn = Depends(get_conn)) -> dict[str, int]:
    return {"created": service.schedule_due(conn, _now())}


@router.post("/visits/{visit_id}/record", summary="Record a visit: when, who, findings, follow-ups")
def record_visit(
    visit_id: Id,
    body: VisitIn,
    principal: Principal = Depends(require_roles(*STAFF)),
    conn: Conn = Depends(get_conn),
) -> dict[str, Any]:
    now = _now()
    return _run(
        lambda: service.record_visit(
            conn,
            visit_id,
            _actor(principal),
            now,
            visited_at=as_utc(body.visited_at) if body.visited_at else now,
            worker=body.worker,
            findings=body.findings,
            follow_ups=body.follow_ups,
        )
    )


@router.post(
    "/alerts/{alert_id}/visit", status_code=201, summary="Turn a welfare alert into an unscheduled visit"
)
def visit_from_alert(
    alert_id: Id, principal: Principal = Depends(require_roles(*STAFF)), conn: Conn = Depends(get_conn)
) -> dict[str, Any]:
    return _run(lambda: service.visit_from_alert(conn, alert_id, _actor(principal), _now()))


# --- rescue timeline ----------------------------------------------------------------------------------


@router.get("/calls/{call_id}/timeline", summary="Alarm → claim → dispatch → arrival → hand-over")
def rescue_timeline(
    call_id: Id, principal: Principal = Depends(require_roles(*EVERYONE)), conn: Conn = Depends(get_conn)
) -> dict[str, Any]:
    family = principal.role == "family"
    out = _run(lambda: service.rescue_timeline(conn, call_id, family=family))
    if family and not principal.sees(int(out["resident_id"])):
        raise Problem(404, "Not found", f"call {call_id} does not exist")
    return out


# --- supervision --------------------------------------------------------------------------------------


@router.get(
    "/supervision",
    summary="Calls, orders and visits per day and district; targets; providers",
    responses={200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}}},
)
def supervision_view(
    from_: datetime | None = Query(default=None, alias="from", description="Default: 7 days before `to`."),
    to: datetime | None = Query(default=None, description="Default: now."),
    tz: str = Query(default="UTC", max_length=64, description="Time zone of the day boundaries."),
    format: Literal["json", "csv"] = "json",
    table: Literal["daily", "providers", "answer_times", "visit_rates"] = "daily",
    _: Principal = Depends(require_roles(*SUPERVISORS)),
    conn: Conn = Depends(get_conn),
    settings: Settings = Depends(get_settings_dep),
) -> Any:
    now = _now()
    begin, end = report_window(from_, to, now)
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise Problem(422, "Validation failed", f"unknown time zone {tz!r}") from exc
    out = service.supervision_figures(
        conn, start=begin, end=end, now=now, targets=settings.answer_target_s, tz=tz
    )
    if format == "csv":
        fields = {
            "daily": supervision.DAILY_FIELDS,
            "providers": supervision.PROVIDER_FIELDS,
            "answer_times": (
                "priority",
                "target_s",
                "calls",
                "answered",
                "in_target",
                "in_target_rate",
                "median_answer_s",
            ),
            "visit_rates": ("tier", "district", "residents", "visited", "rate"),
        }[table]
        return Response(
            supervision.to_csv(out[table], fields),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="welfare-{table}.csv"'},
        )
    return out
