"""The SQL edge of ingest: one transaction per batch, COPY into staging, INSERT ... ON CONFLICT DO NOTHING."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from ingest.batch import DEAD_COLUMNS, EVENT_COLUMNS, STATUS_COLUMNS, TELEMETRY_COLUMNS, Device, Rows


@cache
def query(name: str) -> str:
    return resources.files("ingest.sql").joinpath(f"{name}.sql").read_text("utf-8")


@dataclass(frozen=True)
class Stored:
    telemetry_rows: int
    telemetry_inserted: int
    events_rows: int
    events_inserted: int
    statuses: int
    dead: int

    @property
    def duplicates(self) -> int:
        return self.telemetry_rows - self.telemetry_inserted + self.events_rows - self.events_inserted


def prepare(conn: psycopg.Connection[Any]) -> None:
    """Create this connection's staging tables (temp tables live as long as the connection)."""
    with conn.transaction():
        conn.execute(query("stage"))


def _copy(
    conn: psycopg.Connection[Any], table: str, columns: tuple[str, ...], rows: list[tuple[object, ...]]
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row(row)


def store(conn: psycopg.Connection[Any], rows: Rows) -> Stored:
    """Write one batch in the caller's transaction; returns what was new."""
    tel_new = ev_new = 0
    if rows.telemetry:
        _copy(conn, "stage_telemetry", TELEMETRY_COLUMNS, rows.telemetry)
        rec = conn.execute(query("store_telemetry")).fetchone()
        tel_new = int(_first(rec))
    if rows.events:
        _copy(conn, "stage_events", EVENT_COLUMNS, rows.events)
        rec = conn.execute(query("store_events")).fetchone()
        ev_new = int(_first(rec))
    if rows.statuses:
        _copy(conn, "device_status", STATUS_COLUMNS, rows.statuses)
    if rows.dead:
        _copy(conn, "dead_letters", DEAD_COLUMNS, rows.dead)
    return Stored(len(rows.telemetry), tel_new, len(rows.events), ev_new, len(rows.statuses), len(rows.dead))


def _first(rec: Any) -> Any:
    if rec is None:
        return 0
    if isinstance(rec, dict):
        return next(iter(rec.values()))
    return rec[0]


def lookup_devices(conn: psycopg.Connection[Any], ids: list[str]) -> dict[str, Device]:
    found: dict[str, Device] = {}
    for rec in conn.execute(query("registry"), {"ids": ids}).fetchall():
        r = (
            rec
            if isinstance(rec, dict)
            else dict(zip(("id", "resident_id", "kind", "enabled"), rec, strict=True))
        )
        found[r["id"]] = Device(r["id"], r["resident_id"], r["kind"], r["enabled"])
    return found


def store_rows(conn: psycopg.Connection[Any], rows: Rows) -> Stored:
    """Convenience for tests and tools: stage and store in a transaction of its own."""
    prepare(conn)
    with conn.transaction():
        return store(conn, rows)
