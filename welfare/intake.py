"""Service requests from devices: the alert engine calls ``open_from_event`` inside its transaction.

Chosen over a consumer of our own: the engine already receives every event once per resident under a
row lock and dedups redeliveries (engine_seen), so the request commits with the event's ack. The unique
(device_id, event_ts, event_seq) key makes a second call with the same event a no-op all the same.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from welfare import lifecycle

SYSTEM = "system:device"


def open_from_event(
    conn: psycopg.Connection[Any],
    *,
    resident_id: int,
    device_id: str,
    event_ts: datetime,
    seq: int,
    category: str | None,
    now: datetime,
) -> int | None:
    """Open a request for a device 'service' event; None if this event already opened one."""
    cat = category if category in lifecycle.CATEGORIES else "other"
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """INSERT INTO service_requests (resident_id, category, source, wanted_at, device_id, event_ts,
                                             event_seq, created_at)
               VALUES (%s, %s, 'device', %s, %s, %s, %s, %s)
               ON CONFLICT (device_id, event_ts, event_seq) DO NOTHING RETURNING id""",
            (resident_id, cat, event_ts, device_id, event_ts, seq, now),
        )
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(
            """INSERT INTO work_order_log (request_id, at, actor, action, to_status, detail)
               VALUES (%s, %s, %s, 'created', 'open', jsonb_build_object('device_id', %s::text,
                       'category', %s::text))""",
            (row["id"], now, SYSTEM, device_id, cat),
        )
        return int(row["id"])
