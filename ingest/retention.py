"""Retention, scheduled by CareWatch itself (the Apache edition of TimescaleDB has no policy jobs):
whole chunks dropped on TimescaleDB, bounded DELETE slices on plain PostgreSQL."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import psycopg

from carewatch.db import connect, storage
from carewatch.settings import Settings
from ingest.store import query

log = logging.getLogger(__name__)

LOCK_KEY = 0x52455445  # one retention run at a time across ingest workers
EVERY_S = 3600.0


def apply_retention(conn: psycopg.Connection, settings: Settings, now: datetime) -> dict[str, int]:
    """Drop raw telemetry older than retention_days and rollups older than their own horizons."""
    raw_cut = now - timedelta(days=settings.retention_days)
    plan = {
        "telemetry": raw_cut,
        "vitals_1m": raw_cut,
        "vitals_1h": now - timedelta(days=settings.rollup_retention_days),
    }
    dropped: dict[str, int] = {}
    if storage(conn) == "timescaledb":
        for table, cutoff in plan.items():
            rows = conn.execute("SELECT drop_chunks(%s, older_than => %s)", (table, cutoff)).fetchall()
            dropped[table] = len(rows)
    else:
        column = {"telemetry": "ts", "vitals_1m": "bucket", "vitals_1h": "bucket"}
        for table, cutoff in plan.items():
            total = 0
            while True:
                if table == "telemetry":
                    cur = conn.execute(query("retention"), {"cutoff": cutoff, "slice": 50_000})
                else:
                    cur = conn.execute(
                        f"DELETE FROM {table} WHERE {column[table]} < %s",
                        (cutoff,),
                    )
                total += cur.rowcount
                if table != "telemetry" or cur.rowcount < 50_000:
                    break
            dropped[table] = total
    conn.execute("DELETE FROM engine_seen WHERE seen_at < %s", (now - timedelta(days=60),))
    return dropped


class RetentionJob:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.next_run = time.monotonic() + 5.0

    def maybe_run(self, database_url: str) -> None:
        if time.monotonic() < self.next_run:
            return
        self.next_run = time.monotonic() + EVERY_S
        try:
            with connect(database_url, autocommit=True, application_name="carewatch-retention") as conn:
                got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
                if not got or not got[0]:
                    return
                dropped = apply_retention(conn, self.settings, datetime.now(UTC))
                if any(dropped.values()):
                    log.info("retention: dropped %s", dropped)
        except psycopg.Error as exc:
            log.warning("retention: skipped (%s)", type(exc).__name__)
