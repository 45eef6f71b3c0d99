"""Device registry and MQTT credentials (admins).

Enrolling or re-keying issues a secret ONCE (only its mosquitto hash is stored) and re-renders the
broker's password file and ACL, so each device may publish only under its own care/v1/{id}/ topics.
Revoking disables the device and removes its credentials from the broker.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from api.deps import Conn, Principal, get_conn, get_settings_dep, require_roles
from api.errors import Problem, problems
from carewatch.broker import SERVICE_USERS, hash_password
from carewatch.registry_sync import service_accounts_from, sync_broker
from carewatch.settings import Settings

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=problems(409))

DeviceKind = Literal["wristband", "ir_sensor", "presence_sensor"]
DEVICE_ID = r"^[A-Za-z0-9_-]{1,64}$"
SYNC_LOCK = 0x43574252  # "CWBR": one broker re-render at a time across API processes

DeviceIdPath = Path(
    pattern=DEVICE_ID, description="Device id (also its MQTT username).", examples=["wb-0001"]
)


class DeviceIn(BaseModel):
    id: str = Field(pattern=DEVICE_ID, examples=["wb-0001"])
    kind: DeviceKind = Field(examples=["wristband"])
    resident_id: int | None = Field(default=None, ge=1, le=2**62, examples=[1])
    room: str | None = Field(default=None, min_length=1, max_length=64, examples=["bathroom"])
    report_interval_s: int = Field(default=60, ge=1, le=86_400)


class DevicePatch(BaseModel):
    resident_id: int | None = Field(default=None, ge=1, le=2**62)
    room: str | None = Field(default=None, min_length=1, max_length=64)
    report_interval_s: int | None = Field(default=None, ge=1, le=86_400)


class DeviceOut(BaseModel):
    id: str
    kind: DeviceKind
    resident_id: int | None
    room: str | None
    report_interval_s: int
    enabled: bool
    has_credentials: bool
    created_at: datetime


class DeviceCredentials(DeviceOut):
    mqtt_username: str = Field(examples=["wb-0001"])
    mqtt_password: str = Field(description="Shown ONCE; only a hash is stored. Re-key if lost.")
    topics: list[str] = Field(examples=[["care/v1/wb-0001/telemetry", "care/v1/wb-0001/event"]])


_COLS = (
    "id, kind, resident_id, room, report_interval_s, enabled, secret_hash IS NOT NULL AS has_credentials, "
    "created_at"
)


def _get(conn: Conn, device_id: str) -> dict[str, Any]:
    row = conn.execute(f"SELECT {_COLS} FROM devices WHERE id = %s", (device_id,)).fetchone()
    if row is None:
        raise Problem(404, "Not found", f"device {device_id!r} does not exist")
    return row


def _check_binding(conn: Conn, kind: str, resident_id: int | None, room: str | None) -> None:
    if (
        resident_id is not None
        and conn.execute("SELECT 1 FROM residents WHERE id = %s", (resident_id,)).fetchone() is None
    ):
        raise Problem(
            422,
            "Validation failed",
            f"resident {resident_id} does not exist",
            errors=[{"field": "resident_id", "in": "body", "message": "unknown resident"}],
        )
    if kind != "wristband" and resident_id is not None and room is None:
        raise Problem(
            422,
            "Validation failed",
            "a fixed sensor bound to a resident needs a room",
            errors=[{"field": "room", "in": "body", "message": "required for fixed sensors"}],
        )


def sync(request: Request, settings: Settings, conn: Conn) -> None:
    """Re-render broker credentials when this API manages the broker's files (settings.broker_passwd_file)."""
    if settings.broker_passwd_file is None:
        return
    passwd = settings.broker_passwd_file
    acl = settings.broker_acl_file or passwd.with_name("acl")
    reload = getattr(request.app.state, "broker_reload", None)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SYNC_LOCK,))
        sync_broker(
            conn,
            passwd,
            acl,
            service_accounts=service_accounts_from(passwd),
            reload=reload,
            pid_file=settings.broker_pid_file,
        )


def _credentials(row: dict[str, Any], secret: str) -> DeviceCredentials:
    did = row["id"]
    return DeviceCredentials(
        **row,
        mqtt_username=did,
        mqtt_password=secret,
        topics=[f"care/v1/{did}/{k}" for k in ("telemetry", "event", "status")],
    )


@router.get("", response_model=list[DeviceOut], summary="List devices")
def list_devices(
    _: Principal = Depends(require_roles("admin", "supervisor")), conn: Conn = Depends(get_conn)
) -> list[DeviceOut]:
    return [DeviceOut(**r) for r in conn.execute(f"SELECT {_COLS} FROM devices ORDER BY id").fetchall()]


@router.post(
    "",
    response_model=DeviceCredentials,
    status_code=201,
    summary="Enrol a device: returns its MQTT secret ONCE",
    responses={409: {"description": "device id taken"}},
)
def enrol_device(
    request: Request,
    body: DeviceIn,
    _: Principal = Depends(require_roles("admin")),
    settings: Settings = Depends(get_settings_dep),
    conn: Conn = Depends(get_conn),
) -> DeviceCredentials:
    if body.id in SERVICE_USERS:
        raise Problem(
            422,
            "Validation failed",
            f"{body.id!r} is reserved for a service account",
            errors=[{"field": "id", "in": "body", "message": "reserved name"}],
        )
    _check_binding(conn, body.kind, body.resident_id, body.room)
    secret = secrets.token_urlsafe(32)
    row = conn.execute(
        "INSERT INTO devices (id, kind, resident_id, room, report_interval_s, secret_hash) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
        (body.id, body.kind, body.resident_id, body.room, body.report_interval_s, hash_password(secret)),
    ).fetchone()
    if row is None:
        raise Problem(409, "Conflict", f"device {body.id!r} is already enrolled; rotate its secret instead")
    sync(request, settings, conn)
    return _credentials(_get(conn, body.id), secret)


@router.get("/{device_id}", response_model=DeviceOut, summary="One device")
def get_device(
    device_id: str = DeviceIdPath,
    _: Principal = Depends(require_roles("admin", "supervisor")),
    conn: Conn = Depends(get_conn),
) -> DeviceOut:
    return DeviceOut(**_get(conn, device_id))


@router.patch("/{device_id}", response_model=DeviceOut, summary="Re-bind a device (resident, room, interval)")
def update_device(
    body: DevicePatch,
    device_id: str = DeviceIdPath,
    _: Principal = Depends(require_roles("admin")),
    conn: Conn = Depends(get_conn),
) -> DeviceOut:
    current = _get(conn, device_id)
    data = body.model_dump(exclude_unset=True)
    if "report_interval_s" in data and data["report_interval_s"] is None:
        raise Problem(
            422,
            "Validation failed",
            "report_interval_s cannot be null",
            errors=[{"field": "report_interval_s", "in": "body", "message": "cannot be null"}],
        )
    merged = {**current, **data}
    _check_binding(conn, merged["kind"], merged["resident_id"], merged["room"])
    if data:
        sets = ", ".join(f"{c} = %({c})s" for c in data)
        conn.execute(f"UPDATE devices SET {sets} WHERE id = %(id)s", {**data, "id": device_id})
    return DeviceOut(**_get(conn, device_id))


@router.post(
    "/{device_id}/revoke",
    response_model=DeviceOut,
    summary="Revoke a device: disabled, removed from the broker",
)
def revoke_device(
    request: Request,
    device_id: str = DeviceIdPath,
    _: Principal = Depends(require_roles("admin")),
    settings: Settings = Depends(get_settings_dep),
    conn: Conn = Depends(get_conn),
) -> DeviceOut:
    _get(conn, device_id)
    conn.execute("UPDATE devices SET enabled = false WHERE id = %s", (device_id,))
    sync(request, settings, conn)
    return DeviceOut(**_get(conn, device_id))


@router.post(
    "/{device_id}/rotate-secret",
    response_model=DeviceCredentials,
    summary="Issue a new secret (the old one stops working); re-enables a revoked device",
)
def rotate_secret(
    request: Request,
    device_id: str = DeviceIdPath,
    _: Principal = Depends(require_roles("admin")),
    settings: Settings = Depends(get_settings_dep),
    conn: Conn = Depends(get_conn),
) -> DeviceCredentials:
    _get(conn, device_id)
    secret = secrets.token_urlsafe(32)
    conn.execute(
        "UPDATE devices SET secret_hash = %s, enabled = true WHERE id = %s",
        (hash_password(secret), device_id),
    )
    sync(request, settings, conn)
    return _credentials(_get(conn, device_id), secret)
