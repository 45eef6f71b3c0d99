"""Resident registry: who is cared for, their home geofence, care notes, thresholds and contacts.

Admins write; staff read everything; a family user reads only the residents linked to them, in a reduced
form (no care notes, thresholds or contacts' private fields). Access codes are write-only here.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from fastapi import APIRouter, Depends, Response
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field, field_validator

from api.access import record_access
from api.deps import ALL_ROLES, STAFF, Conn, Id, Principal, get_conn, require_roles, resident_or_404
from api.errors import Problem, problems

router = APIRouter(prefix="/api/v1/residents", tags=["residents"], responses=problems(409))

_ZONES = available_timezones()


def _thresholds_model() -> Any:
    """alerts.models.Thresholds when the alert engine is installed (its field names are the valid keys)."""
    try:
        from alerts import models
    except ImportError:
        return None
    return getattr(models, "Thresholds", None)


def threshold_errors(values: dict[str, Any]) -> list[dict[str, str]]:
    """Validate per-resident overrides against alerts.models.Thresholds when the alert code exists."""
    Thresholds = _thresholds_model()
    errors: list[dict[str, str]] = []
    if Thresholds is not None:
        fields = getattr(Thresholds, "model_fields", None) or getattr(Thresholds, "__dataclass_fields__", {})
        for key in values:
            if key not in fields:
                errors.append(
                    {
                        "field": f"thresholds.{key}",
                        "in": "body",
                        "message": f"unknown threshold; valid: {', '.join(sorted(fields))}",
                    }
                )
        if not errors and hasattr(Thresholds, "model_validate"):
            try:
                Thresholds.model_validate(values)
            except Exception as exc:  # pydantic.ValidationError: report per field
                for err in getattr(exc, "errors", lambda: [])():
                    loc = ".".join(str(p) for p in err.get("loc", ()))
                    errors.append(
                        {"field": f"thresholds.{loc}", "in": "body", "message": str(err.get("msg"))}
                    )
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append({"field": f"thresholds.{key}", "in": "body", "message": "must be a number"})
    return errors


class CareNotes(BaseModel):
    conditions: str = Field(default="", max_length=2000, examples=["type 2 diabetes; hypertension"])
    medication: str = Field(default="", max_length=2000, examples=["metformin 500 mg twice daily"])
    mobility: str = Field(default="", max_length=2000, examples=["walks with a frame"])
    language: str = Field(default="", max_length=200, examples=["Cantonese"])


Timezone = str


class ResidentBase(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Chen Mei"])
    date_of_birth: date | None = Field(default=None, examples=["1938-04-02"])
    address: str = Field(default="", max_length=500, examples=["12 Garden Road, flat 3B"])
    district: str = Field(default="", max_length=200, examples=["Wan Chai"])
    timezone: str = Field(default="Asia/Shanghai", max_length=64, examples=["Asia/Shanghai"])
    home_lat: float | None = Field(default=None, ge=-90, le=90, examples=[22.2783])
    home_lon: float | None = Field(default=None, ge=-180, le=180, examples=[114.1747])
    geofence_m: float = Field(default=200, gt=0, le=100_000, examples=[200])
    lives_alone: bool = False
    dementia: bool = False
    care_notes: CareNotes = Field(default_factory=CareNotes)
    thresholds: dict[str, int | float] = Field(
        default_factory=dict,
        max_length=50,
        description="Overrides of alert thresholds (alerts.models.Thresholds).",
        examples=[{"hr_high": 130}],
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in _ZONES:
            raise ValueError(f"unknown IANA time zone {value!r}")
        return value


class ResidentIn(ResidentBase):
    pass


class ResidentPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    date_of_birth: date | None = None
    address: str | None = Field(default=None, max_length=500)
    district: str | None = Field(default=None, max_length=200)
    timezone: str | None = Field(default=None, max_length=64)
    home_lat: float | None = Field(default=None, ge=-90, le=90)
    home_lon: float | None = Field(default=None, ge=-180, le=180)
    geofence_m: float | None = Field(default=None, gt=0, le=100_000)
    lives_alone: bool | None = None
    dementia: bool | None = None
    care_notes: CareNotes | None = None
    thresholds: dict[str, int | float] | None = Field(default=None, max_length=50)
    active: bool | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None and value not in _ZONES:
            raise ValueError(f"unknown IANA time zone {value!r}")
        return value


class ResidentOut(ResidentBase):
    id: int
    active: bool
    created_at: datetime


class ResidentSummary(BaseModel):
    """What a family member sees of their relative."""

    id: int
    name: str
    timezone: str
    district: str


ContactKind = Literal["family", "neighbour", "key_holder", "care_team", "property_manager", "doctor"]


class ContactIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Chen Jun"])
    relation: str = Field(default="", max_length=100, examples=["son"])
    phone: str = Field(default="", max_length=40, pattern=r"^[0-9+() -]*$", examples=["+852 5555 0101"])
    kind: ContactKind = "family"
    is_responder: bool = False
    notify: bool = False
    webhook_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://")


class ContactOut(ContactIn):
    id: int
    position: int


class AccessNotes(BaseModel):
    access_notes: str = Field(max_length=2000, description="Key-safe / door codes; never shown in reads.")


def _check_thresholds(values: dict[str, Any]) -> None:
    errors = threshold_errors(values)
    if errors:
        raise Problem(
            422,
            "Validation failed",
            "invalid thresholds: " + ", ".join(e["field"] for e in errors),
            errors=errors,
        )


def _out(row: dict[str, Any]) -> ResidentOut:
    return ResidentOut(**row)


@router.get(
    "",
    response_model=list[ResidentOut] | list[ResidentSummary],
    summary="List residents",
    description="Staff see every resident; family users see only their linked residents (summary).",
)
def list_residents(
    principal: Principal = Depends(require_roles(*ALL_ROLES)), conn: Conn = Depends(get_conn)
) -> list[ResidentOut] | list[ResidentSummary]:
    if principal.resident_ids is None:
        return [_out(r) for r in conn.execute("SELECT * FROM residents ORDER BY id").fetchall()]
    rows = conn.execute(
        "SELECT * FROM residents WHERE id = ANY(%s) ORDER BY id", (sorted(principal.resident_ids),)
    ).fetchall()
    return [ResidentSummary(**r) for r in rows]


@router.post("", response_model=ResidentOut, status_code=201, summary="Register a resident")
def create_resident(
    body: ResidentIn, _: Principal = Depends(require_roles("admin")), conn: Conn = Depends(get_conn)
) -> ResidentOut:
    _check_thresholds(body.thresholds)
    data = body.model_dump()
    data["care_notes"] = Jsonb(data["care_notes"])
    data["thresholds"] = Jsonb(data["thresholds"])
    cols = list(data)
    row = conn.execute(
        f"INSERT INTO residents ({', '.join(cols)}) VALUES ({', '.join('%(' + c + ')s' for c in cols)}) "
        "RETURNING *",
        data,
    ).fetchone()
    assert row is not None
    return _out(row)


@router.get("/{resident_id}", response_model=ResidentOut | ResidentSummary, summary="One resident")
def get_resident(
    resident_id: Id, principal: Principal = Depends(require_roles(*ALL_ROLES)), conn: Conn = Depends(get_conn)
) -> ResidentOut | ResidentSummary:
    row = resident_or_404(conn, principal, resident_id)
    record_access(conn, principal, resident_id, "read:resident")
    if principal.role == "family":
        return ResidentSummary(**row)
    return _out(row)


@router.patch("/{resident_id}", response_model=ResidentOut, summary="Update a resident")
def update_resident(
    resident_id: Id,
    body: ResidentPatch,
    principal: Principal = Depends(require_roles("admin")),
    conn: Conn = Depends(get_conn),
) -> ResidentOut:
    resident_or_404(conn, principal, resident_id)
    data = body.model_dump(exclude_unset=True)
    for key in ("name", "timezone", "geofence_m", "lives_alone", "dementia", "active", "address", "district"):
        if key in data and data[key] is None:
            raise Problem(
                422,
                "Validation failed",
                f"{key} cannot be null",
                errors=[{"field": key, "in": "body", "message": "cannot be null"}],
            )
    if data.get("thresholds") is not None:
        _check_thresholds(data["thresholds"])
    for key in ("care_notes", "thresholds"):
        if key in data:
            data[key] = Jsonb(data[key] if data[key] is not None else {})
    if data:
        sets = ", ".join(f"{c} = %({c})s" for c in data)
        conn.execute(f"UPDATE residents SET {sets} WHERE id = %(id)s", {**data, "id": resident_id})
    return _out(resident_or_404(conn, principal, resident_id))


@router.get(
    "/{resident_id}/contacts", response_model=list[ContactOut], summary="Emergency contacts, in order"
)
def list_contacts(
    resident_id: Id, principal: Principal = Depends(require_roles(*STAFF)), conn: Conn = Depends(get_conn)
) -> list[ContactOut]:
    resident_or_404(conn, principal, resident_id)
    rows = conn.execute(
        "SELECT * FROM contacts WHERE resident_id = %s AND position >= 0 ORDER BY position, id",
        (resident_id,),
    ).fetchall()
    return [ContactOut(**r) for r in rows]


@router.put(
    "/{resident_id}/contacts",
    response_model=list[ContactOut],
    summary="Replace the emergency contacts (list order = calling order)",
)
def replace_contacts(
    resident_id: Id,
    body: list[ContactIn],
    principal: Principal = Depends(require_roles("admin")),
    conn: Conn = Depends(get_conn),
) -> list[ContactOut]:
    resident_or_404(conn, principal, resident_id)
    if len(body) > 20:
        raise Problem(
            422,
            "Validation failed",
            "at most 20 contacts",
            errors=[{"field": "body", "in": "body", "message": "at most 20 contacts"}],
        )
    with conn.transaction():
        used = conn.execute(
            "SELECT 1 FROM contact_attempts a JOIN contacts c ON c.id = a.contact_id "
            "WHERE c.resident_id = %s LIMIT 1",
            (resident_id,),
        ).fetchone()
        if used:
            # Contacts referenced by call records are kept for the audit trail: move them out of the list.
            conn.execute(
                "UPDATE contacts SET position = -1, notify = false, is_responder = false "
                "WHERE resident_id = %s AND id IN (SELECT contact_id FROM contact_attempts)",
                (resident_id,),
            )
        conn.execute(
            "DELETE FROM contacts WHERE resident_id = %s AND id NOT IN "
            "(SELECT contact_id FROM contact_attempts)",
            (resident_id,),
        )
        for pos, c in enumerate(body):
            conn.execute(
                "INSERT INTO contacts (resident_id, position, name, relation, phone, kind, is_responder, "
                "notify, webhook_url) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    resident_id,
                    pos,
                    c.name,
                    c.relation,
                    c.phone,
                    c.kind,
                    c.is_responder,
                    c.notify,
                    c.webhook_url,
                ),
            )
    rows = conn.execute(
        "SELECT * FROM contacts WHERE resident_id = %s AND position >= 0 ORDER BY position", (resident_id,)
    ).fetchall()
    return [ContactOut(**r) for r in rows]


@router.put(
    "/{resident_id}/access",
    status_code=204,
    response_class=Response,
    summary="Set access codes (write-only; read only via access-reveal)",
)
def set_access(
    resident_id: Id,
    body: AccessNotes,
    principal: Principal = Depends(require_roles("admin")),
    conn: Conn = Depends(get_conn),
) -> Response:
    resident_or_404(conn, principal, resident_id)
    conn.execute(
        "INSERT INTO resident_access (resident_id, access_notes, updated_at) VALUES (%s, %s, now()) "
        "ON CONFLICT (resident_id) DO UPDATE SET access_notes = EXCLUDED.access_notes, updated_at = now()",
        (resident_id, body.access_notes),
    )
    record_access(conn, principal, resident_id, "write:access")
    return Response(status_code=204)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except Exception:  # a bad zone in old data must not break reads
        return ZoneInfo("UTC")
