"""A resident's status and history: vitals charts, events, alerts, calls, presence, location, activity.

Every endpoint is resident-scoped (family users: their linked residents only, others 404) and every read
is written to the access log. Long vitals ranges read the rollups (vitals_1m / vitals_1h) that ingest
maintains in the same transaction as the raw rows, never the raw table. Lists are newest first with
opaque keyset cursors.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api.access import record_access
from api.deps import (
    ALL_ROLES,
    Conn,
    Id,
    Principal,
    as_utc,
    get_conn,
    report_window,
    require_roles,
    resident_or_404,
)
from api.errors import Problem, problems
from api.residents import zone
from api.status_logic import LIMITS, Bucket, choose_bucket, overall, whereabouts

router = APIRouter(prefix="/api/v1/residents", tags=["history"], responses=problems(400))
Readers = Depends(require_roles(*ALL_ROLES))


def _local(ts: datetime | None, tz: str) -> str | None:
    return ts.astimezone(zone(tz)).isoformat() if ts else None


def encode_cursor(values: list[Any]) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, shape: tuple[type, ...]) -> list[Any]:
    """Parse a cursor made by ``encode_cursor``; anything else is a 400 (not a 500)."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(shape):
            raise ValueError("shape")
        out: list[Any] = []
        for value, kind in zip(values, shape, strict=True):
            if kind is datetime:
                out.append(as_utc(datetime.fromisoformat(value)))
            elif kind is int:
                if not isinstance(value, int) or not 0 <= value < 2**62:
                    raise ValueError("int")
                out.append(value)
            else:
                if not isinstance(value, str) or len(value) > 64:
                    raise ValueError("str")
                out.append(value)
        return out
    except (ValueError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(
            400,
            "Bad request",
            "cursor is not valid; pass next_cursor from a previous page unchanged",
            errors=[{"field": "cursor", "in": "query", "message": "invalid cursor"}],
        ) from exc


FromQ = Query(
    default=None,
    alias="from",
    description="Start (RFC 3339); default: 24 h before 'to'.",
    examples=["2026-01-01T00:00:00Z"],
)
ToQ = Query(default=None, alias="to", description="End (RFC 3339), exclusive; default: now.")
CursorQ = Query(default=None, max_length=400, description="Opaque cursor: next_cursor of the previous page.")
LimitQ = Query(default=100, ge=1, le=1000)


# --- status ------------------------------------------------------------------------------------


class OpenCall(BaseModel):
    id: int
    priority: int
    status: str
    title: str
    created_at: datetime
    created_local: str | None


class Reading(BaseModel):
    value: int | bool | None
    at: datetime | None
    at_local: str | None


class Status(BaseModel):
    resident_id: int
    timezone: str = Field(examples=["Asia/Shanghai"])
    now: datetime
    last_seen: datetime | None
    last_seen_local: str | None
    heart_rate: Reading
    spo2: Reading
    battery: Reading
    worn: Reading
    place: Literal["home", "away", "unknown"]
    place_how: Literal["geofence", "room", "none"]
    room: str | None
    distance_from_home_m: float | None
    open_calls: list[OpenCall]
    open_alerts: int
    state: Literal["ok", "attention", "emergency"]
    reasons: list[str] = Field(examples=[["no recent readings"]])


def _latest(conn: Conn, resident_id: int, column: str, since: datetime) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {column} AS v, ts FROM telemetry "
        f"WHERE resident_id = %s AND ts >= %s AND {column} IS NOT NULL "
        "ORDER BY ts DESC LIMIT 1",
        (resident_id, since),
    ).fetchone()


@router.get("/{resident_id}/status", response_model=Status, summary="Current status card")
def status(resident_id: Id, principal: Principal = Readers, conn: Conn = Depends(get_conn)) -> Status:
    resident = resident_or_404(conn, principal, resident_id)
    tz = resident["timezone"]
    now = datetime.now(UTC)
    since = now - timedelta(days=2)
    last = conn.execute(
        "SELECT max(ts) AS ts FROM telemetry WHERE resident_id = %s AND ts >= %s",
        (resident_id, now - timedelta(days=30)),
    ).fetchone()
    last_seen = last["ts"] if last else None
    values = {c: _latest(conn, resident_id, c, since) for c in ("hr", "spo2", "battery", "worn")}
    fix = conn.execute(
        "SELECT ts, lat, lon FROM telemetry WHERE resident_id = %s AND ts >= %s AND lat IS NOT NULL "
        "ORDER BY ts DESC LIMIT 1",
        (resident_id, since),
    ).fetchone()
    seen_room = conn.execute(
        "SELECT ts, room FROM telemetry WHERE resident_id = %s AND ts >= %s AND room IS NOT NULL "
        "AND (presence OR motion) ORDER BY ts DESC LIMIT 1",
        (resident_id, since),
    ).fetchone()
    interval = conn.execute(
        "SELECT max(report_interval_s) AS s FROM devices WHERE resident_id = %s AND enabled", (resident_id,)
    ).fetchone()
    calls = conn.execute(
        "SELECT id, priority, status, title, created_at FROM calls WHERE resident_id = %s "
        "AND status <> 'resolved' ORDER BY priority, created_at",
        (resident_id,),
    ).fetchall()
    alerts = conn.execute(
        "SELECT count(*) AS n FROM alerts WHERE resident_id = %s AND status = 'open'", (resident_id,)
    ).fetchone()
    home = (
        (resident["home_lat"], resident["home_lon"])
        if resident["home_lat"] is not None and resident["home_lon"] is not None
        else None
    )
    where = whereabouts(
        home=home,
        geofence_m=resident["geofence_m"],
        fix=(fix["ts"], fix["lat"], fix["lon"]) if fix else None,
        room=(seen_room["ts"], seen_room["room"]) if seen_room else None,
        now=now,
    )
    stale = timedelta(seconds=3 * ((interval or {}).get("s") or 60))
    battery = values["battery"]["v"] if values["battery"] else None
    worn = values["worn"]["v"] if values["worn"] else None
    state, reasons = overall(
        open_call_priorities=[c["priority"] for c in calls],
        open_alerts=int(alerts["n"]) if alerts else 0,
        last_seen=last_seen,
        now=now,
        stale_after=stale,
        worn=worn,
        battery=battery,
    )
    record_access(conn, principal, resident_id, "read:status")

    def reading(key: str) -> Reading:
        row = values[key]
        return Reading(
            value=row["v"] if row else None,
            at=row["ts"] if row else None,
            at_local=_local(row["ts"], tz) if row else None,
        )

    return Status(
        resident_id=resident_id,
        timezone=tz,
        now=now,
        last_seen=last_seen,
        last_seen_local=_local(last_seen, tz),
        heart_rate=reading("hr"),
        spo2=reading("spo2"),
        battery=reading("battery"),
        worn=reading("worn"),
        place=where.place,
        place_how=where.how,
        room=where.room,
        distance_from_home_m=where.distance_m,
        open_calls=[OpenCall(**c, created_local=_local(c["created_at"], tz)) for c in calls],
        open_alerts=int(alerts["n"]) if alerts else 0,
        state=state,
        reasons=reasons,
    )


# --- vitals ------------------------------------------------------------------------------------


class VitalsPoint(BaseModel):
    t: datetime = Field(description="Bucket start (or reading time for raw).")
    hr_min: int | None
    hr_mean: float | None
    hr_max: int | None
    spo2_min: int | None
    spo2_mean: float | None
    spo2_max: int | None
    hr_n: int
    spo2_n: int


class Vitals(BaseModel):
    resident_id: int
    timezone: str
    bucket: Bucket
    source: Literal["telemetry", "vitals_1m", "vitals_1h"]
    from_: datetime = Field(alias="from")
    to: datetime
    points: list[VitalsPoint]

    model_config = {"populate_by_name": True}


_RAW_VITALS = """
SELECT ts AS t, hr AS hr_min, hr::float8 AS hr_mean, hr AS hr_max,
       spo2 AS spo2_min, spo2::float8 AS spo2_mean,
       spo2 AS spo2_max, (hr IS NOT NULL)::int AS hr_n, (spo2 IS NOT NULL)::int AS spo2_n
  FROM telemetry
 WHERE resident_id = %(rid)s AND ts >= %(start)s AND ts < %(end)s AND (hr IS NOT NULL OR spo2 IS NOT NULL)
 ORDER BY ts, device_id, seq
 LIMIT 100000"""

_ROLLUP_VITALS = """
SELECT bucket AS t, hr_min, hr_sum::float8 / nullif(hr_n, 0) AS hr_mean, hr_max,
       spo2_min, spo2_sum::float8 / nullif(spo2_n, 0) AS spo2_mean, spo2_max, hr_n, spo2_n
  FROM {table}
 WHERE resident_id = %(rid)s AND bucket >= %(start)s AND bucket < %(end)s AND (hr_n > 0 OR spo2_n > 0)
 ORDER BY bucket"""


@router.get(
    "/{resident_id}/vitals",
    response_model=Vitals,
    response_model_by_alias=True,
    summary="Heart rate and SpO2 over time (min/mean/max per bucket)",
    description="bucket: raw for ranges up to 2 h, per-minute up to 2 days, hourly beyond, unless given. "
    "Explicit limits: raw ≤ 1 day, 1m ≤ 7 days, 1h ≤ 800 days. Rollup buckets are aligned "
    "to UTC minute/hour starts; 'from' is rounded down to the bucket.",
)
def vitals(
    resident_id: Id,
    start: datetime | None = FromQ,
    end: datetime | None = ToQ,
    bucket: Bucket | None = Query(default=None, description="raw, 1m or 1h; default from the range."),
    principal: Principal = Readers,
    conn: Conn = Depends(get_conn),
) -> Vitals:
    resident = resident_or_404(conn, principal, resident_id)
    lo, hi = report_window(start, end, datetime.now(UTC), timedelta(hours=24))
    chosen: Bucket = bucket or choose_bucket(lo, hi)
    if hi - lo > LIMITS[chosen]:
        raise Problem(
            422,
            "Validation failed",
            f"range too long for bucket {chosen} (max {LIMITS[chosen]}); use a coarser bucket",
            errors=[{"field": "bucket", "in": "query", "message": "range too long"}],
        )
    params = {"rid": resident_id, "start": lo, "end": hi}
    if chosen == "raw":
        rows = conn.execute(_RAW_VITALS, params).fetchall()
        source: Literal["telemetry", "vitals_1m", "vitals_1h"] = "telemetry"
    else:
        source = "vitals_1m" if chosen == "1m" else "vitals_1h"
        unit = "minute" if chosen == "1m" else "hour"
        params["start"] = (
            lo.replace(second=0, microsecond=0)
            if unit == "minute"
            else lo.replace(minute=0, second=0, microsecond=0)
        )
        rows = conn.execute(_ROLLUP_VITALS.format(table=source), params).fetchall()
    record_access(
        conn,
        principal,
        resident_id,
        "read:vitals",
        {"from": lo.isoformat(), "to": hi.isoformat(), "bucket": chosen},
    )
    body = {"resident_id": resident_id, "timezone": resident["timezone"], "bucket": chosen, "source": source}
    return Vitals.model_validate({**body, "from": lo, "to": hi, "points": rows})


# --- paginated lists ---------------------------------------------------------------------------


class Page(BaseModel):
    resident_id: int
    timezone: str
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for the next (older) page.")


class EventItem(BaseModel):
    ts: datetime
    local_time: str
    device_id: str
    seq: int
    type: str = Field(examples=["fall"])
    confidence: float | None
    room: str | None
    lat: float | None
    lon: float | None
    category: str | None


class EventPage(Page):
    items: list[EventItem]


class AlertItem(BaseModel):
    id: int
    rule: str = Field(examples=["high_hr"])
    priority: int
    status: str
    title: str
    opened_at: datetime
    opened_local: str
    last_seen_at: datetime
    cleared_at: datetime | None
    count: int
    call_id: int | None


class AlertPage(Page):
    items: list[AlertItem]


class CallItem(BaseModel):
    id: int
    priority: int
    status: str
    title: str
    reason: str
    event_at: datetime
    created_at: datetime
    created_local: str
    resolved_at: datetime | None
    outcome: str | None


class CallPage(Page):
    items: list[CallItem]


class PresenceItem(BaseModel):
    ts: datetime
    local_time: str
    device_id: str
    room: str
    presence: bool | None
    motion: bool | None


class PresencePage(Page):
    items: list[PresenceItem]


class LocationItem(BaseModel):
    ts: datetime
    local_time: str
    device_id: str
    lat: float
    lon: float
    acc_m: float | None


class LocationPage(Page):
    items: list[LocationItem]


def _keyset(
    conn: Conn,
    sql: str,
    key_sql: str,
    shape: tuple[type, ...],
    key_of: list[str],
    params: dict[str, Any],
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Run a newest-first query with an optional ``(key) < (cursor)`` bound; return rows, next cursor."""
    where = ""
    if cursor is not None:
        values = decode_cursor(cursor, shape)
        marks = ", ".join(f"%(c{i})s" for i in range(len(values)))
        where = f" AND ({key_sql}) < ({marks})"
        params = {**params, **{f"c{i}": v for i, v in enumerate(values)}}
    rows = conn.execute(sql.format(cursor=where), {**params, "lim": limit + 1}).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor([rows[-1][k] for k in key_of]) if more and rows else None
    return rows, nxt


@router.get("/{resident_id}/events", response_model=EventPage, summary="Device events (falls, SOS, ...)")
def events(
    resident_id: Id,
    start: datetime | None = FromQ,
    end: datetime | None = ToQ,
    cursor: str | None = CursorQ,
    limit: int = LimitQ,
    principal: Principal = Readers,
    conn: Conn = Depends(get_conn),
) -> EventPage:
    resident = resident_or_404(conn, principal, resident_id)
    lo, hi = report_window(start, end, datetime.now(UTC), timedelta(days=7))
    rows, nxt = _keyset(
        conn,
        "SELECT ts, device_id, seq, type, confidence, room, lat, lon, category FROM events "
        "WHERE resident_id = %(rid)s AND ts >= %(lo)s AND ts < %(hi)s{cursor} "
        "ORDER BY ts DESC, device_id DESC, seq DESC LIMIT %(lim)s",
        "ts, device_id, seq",
        (datetime, str, int),
        ["ts", "device_id", "seq"],
        {"rid": resident_id, "lo": lo, "hi": hi},
        cursor,
        limit,
    )
    tz = resident["timezone"]
    record_access(conn, principal, resident_id, "read:events", {"from": lo.isoformat(), "to": hi.isoformat()})
    return EventPage(
        resident_id=resident_id,
        timezone=tz,
        next_cursor=nxt,
        items=[EventItem(**r, local_time=_local(r["ts"], tz) or "") for r in rows],
    )


@router.get("/{resident_id}/alerts", response_model=AlertPage, summary="Alerts raised for the resident")
def alerts(
    resident_id: Id,
    start: datetime | None = FromQ,
    end: datetime | None = ToQ,
    cursor: str | None = CursorQ,
    limit: int = LimitQ,
    principal: Principal = Readers,
    conn: Conn = Depends(get_conn),
) -> AlertPage:
    resident = resident_or_404(conn, principal, resident_id)
    lo, hi = report_window(start, end, datetime.now(UTC), timedelta(days=30))
    rows, nxt = _keyset(
        conn,
        "SELECT id, rule, priority, status, title, opened_at, last_seen_at, cleared_at, count, call_id "
        "FROM alerts "
        "WHERE resident_id = %(rid)s AND opened_at >= %(lo)s AND opened_at < %(hi)s{cursor} "
        "ORDER BY opened_at DESC, id DESC LIMIT %(lim)s",
        "opened_at, id",
        (datetime, int),
        ["opened_at", "id"],
        {"rid": resident_id, "lo": lo, "hi": hi},
        cursor,
        limit,
    )
    tz = resident["timezone"]
    record_access(conn, principal, resident_id, "read:alerts", {"from": lo.isoformat(), "to": hi.isoformat()})
    return AlertPage(
        resident_id=resident_id,
        timezone=tz,
        next_cursor=nxt,
        items=[AlertItem(**r, opened_local=_local(r["opened_at"], tz) or "") for r in rows],
    )


@router.get(
    "/{resident_id}/calls",
    response_model=CallPage,
    summary="Hotline calls about the resident (no internal notes)",
)
def calls(
    resident_id: Id,
    start: datetime | None = FromQ,
    end: datetime | None = ToQ,
    cursor: str | None = CursorQ,
    limit: int = LimitQ,
    principal: Principal = Readers,
    conn: Conn = Depends(get_conn),
) -> CallPage:
    resident = resident_or_404(conn, principal, resident_id)
    lo, hi = report_window(start, end, datetime.now(UTC), timedelta(days=90))
    rows, nxt = _keyset(
        conn,
        "SELECT id, priority, status, title, reason, event_at, created_at, resolved_at, outcome FROM calls "
        "WHERE resident_id = %(rid)s AND created_at >= %(lo)s AND created_at < %(hi)s{cursor} "
        "ORDER BY created_at DESC, id DESC LIMIT %(lim)s",
        "created_at, id",
        (datetime, int),
        ["created_at", "id"],
        {"rid": resident_id, "lo": lo, "hi": hi},
        cursor,
        limit,
    )
    tz = resident["timezone"]
    record_access(conn, principal, resident_id, "read:calls", {"from": lo.isoformat(), "to": hi.isoformat()})
    return CallPage(
        resident_id=resident_id,
        timezone=tz,
        next_cursor=nxt,
        items=[CallItem(**r, created_local=_local(r["created_at"], tz) or "") for r in rows],
    )


@router.get("/{resident_id}/presence", response_model=PresencePage, summary="Room presence / motion timeline")
def presence(
    resident_id: Id,
    start: datetime | None = FromQ,
    end: datetime | None = ToQ,
    cursor: str | None = CursorQ,
    limit: int = LimitQ,
    principal: Principal = Readers,
    conn: Conn = Depends(get_conn),
) -> PresencePage:
    resident = resident_or_404(conn, principal, resident_id)
    lo, hi = report_window(start, end, datetime.now(UTC), timedelta(hours=24))
    rows, nxt = _keyset(
        conn,
        "SELECT ts, device_id, seq, room, presence, motion FROM telemetry "
        "WHERE resident_id = %(rid)s AND ts >= %(lo)s AND ts < %(hi)s AND room IS NOT NULL "
        "AND (presence IS NOT NULL OR motion IS NOT NULL){cursor} "
        "ORDER BY ts DESC, device_id DESC, seq DESC LIMIT %(lim)s",
        "ts, device_id, seq",
        (datetime, str, int),
        ["ts", "device_id", "seq"],
        {"rid": resident_id, "lo": lo, "hi": hi},
        cursor,
        limit,
    )
    tz = resident["timezone"]
    record_access(
        conn, principal, resident_id, "read:presence", {"from": lo.isoformat(), "to": hi.isoformat()}
    )
    return PresencePage(
        resident_id=resident_id,
        timezone=tz,
        next_cursor=nxt,
        items=[PresenceItem(**r, local_time=_local(r["ts"], tz) or "") for r in rows],
    )


@router.get("/{resident_id}/location", response_model=LocationPage, summary="Location trail (lat/lon)")
def location(
    resident_id: Id,
    start: datetime | None = FromQ,
    end: datetime | None = ToQ,
    cursor: str | None = CursorQ,
    limit: int = LimitQ,
    principal: Principal = Readers,
    conn: Conn = Depends(get_conn),
) -> LocationPage:
    resident = resident_or_404(conn, principal, resident_id)
    lo, hi = report_window(start, end, datetime.now(UTC), timedelta(hours=24))
    rows, nxt = _keyset(
        conn,
        "SELECT ts, device_id, seq, lat, lon, acc_m FROM telemetry "
        "WHERE resident_id = %(rid)s AND ts >= %(lo)s AND ts < %(hi)s AND lat IS NOT NULL AND lon IS NOT NULL"
        "{cursor} ORDER BY ts DESC, device_id DESC, seq DESC LIMIT %(lim)s",
        "ts, device_id, seq",
        (datetime, str, int),
        ["ts", "device_id", "seq"],
        {"rid": resident_id, "lo": lo, "hi": hi},
        cursor,
        limit,
    )
    tz = resident["timezone"]
    record_access(
        conn, principal, resident_id, "read:location", {"from": lo.isoformat(), "to": hi.isoformat()}
    )
    return LocationPage(
        resident_id=resident_id,
        timezone=tz,
        next_cursor=nxt,
        items=[LocationItem(**r, local_time=_local(r["ts"], tz) or "") for r in rows],
    )


# --- activity ----------------------------------------------------------------------------------


class ActivityDay(BaseModel):
    day: date = Field(description="Local day in the resident's time zone.")
    motion: int = Field(description="Readings with motion seen.")
    steps: int | None = Field(description="Steps that day (highest since-midnight count).")


class Activity(BaseModel):
    resident_id: int
    timezone: str
    days: list[ActivityDay]


@router.get("/{resident_id}/activity", response_model=Activity, summary="Motion and steps per local day")
def activity(
    resident_id: Id,
    days: int = Query(default=7, ge=1, le=92),
    principal: Principal = Readers,
    conn: Conn = Depends(get_conn),
) -> Activity:
    resident = resident_or_404(conn, principal, resident_id)
    tz = resident["timezone"]
    today = datetime.now(UTC).astimezone(zone(tz)).date()
    first = today - timedelta(days=days - 1)
    rows = conn.execute(
        "SELECT (bucket AT TIME ZONE %(tz)s)::date AS day, sum(motion_n)::int AS motion, "
        "max(steps_max) AS steps "
        "FROM vitals_1h WHERE resident_id = %(rid)s "
        "AND bucket >= (%(first)s::timestamp AT TIME ZONE %(tz)s) - interval '1 hour' "
        "GROUP BY 1",
        {"tz": zone(tz).key, "rid": resident_id, "first": datetime.combine(first, datetime.min.time())},
    ).fetchall()
    by_day = {r["day"]: r for r in rows}
    out = []
    for i in range(days):
        d = first + timedelta(days=i)
        r = by_day.get(d)
        out.append(ActivityDay(day=d, motion=r["motion"] if r else 0, steps=r["steps"] if r else None))
    record_access(conn, principal, resident_id, "read:activity", {"days": days})
    return Activity(resident_id=resident_id, timezone=tz, days=out)
