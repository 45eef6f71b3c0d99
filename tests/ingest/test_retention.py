"""Retention on both storage paths: raw telemetry past its horizon goes, rollups stay longer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from carewatch.settings import Settings
from ingest.retention import apply_retention
from tests.support import add_resident, scalar


def test_old_raw_rows_dropped_rollups_kept(fresh_database_url: str, storage: str) -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    settings = Settings(retention_days=180, rollup_retention_days=250)
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        rid = add_resident(conn, "Retention")
        ages = [400, 200, 181, 179, 30, 1]
        for i, days in enumerate(ages):
            ts = now - timedelta(days=days)
            conn.execute(
                "INSERT INTO telemetry (device_id, ts, seq, resident_id, hr)"
                " VALUES ('wb-ret', %s, %s, %s, 70)",
                (ts, i, rid),
            )
            for table, trunc in (("vitals_1m", "minute"), ("vitals_1h", "hour")):
                conn.execute(
                    f"INSERT INTO {table} (resident_id, bucket, hr_min, hr_max, hr_sum, hr_n)"
                    f" VALUES (%s, date_trunc('{trunc}', %s::timestamptz), 70, 70, 70, 1)",
                    (rid, ts),
                )
        apply_retention(conn, settings, now)
        kept = sorted(
            round((now - r["ts"]).total_seconds() / 86400)
            for r in conn.execute("SELECT ts FROM telemetry").fetchall()
        )
        # TimescaleDB drops whole one-day chunks entirely older than the cut-off; plain PostgreSQL deletes
        # rows: either way nothing younger than 180 days goes and nothing older than 181 stays
        assert kept == [1, 30, 179]
        young = "bucket > %s"
        assert (
            scalar(conn, f"SELECT count(*) FROM vitals_1m WHERE {young}", (now - timedelta(days=180),)) == 3
        )
        # per-minute rollups follow the raw horizon (TimescaleDB may keep a 7-day chunk straddling it)
        assert (
            scalar(conn, "SELECT count(*) FROM vitals_1m WHERE bucket < %s", (now - timedelta(days=190),))
            == 0
        )
        # hourly rollups are kept longer than raw rows: the 200-day-old hour survives, the 400-day one not
        hours = sorted(
            round((now - r["bucket"]).total_seconds() / 86400)
            for r in conn.execute("SELECT bucket FROM vitals_1h").fetchall()
        )
        assert hours == [1, 30, 179, 181, 200]
