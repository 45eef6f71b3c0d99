"""Ingest formats telemetry rows as COPY text itself (ingest.store.copy_text): what the database reads back
must be exactly what was formatted, for every type telemetry holds and for text that needs escaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import psycopg

from ingest.batch import TELEMETRY_COLUMNS
from ingest.store import copy_text

ROWS: list[tuple[object, ...]] = [
    (
        "wb-1",
        datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=UTC),
        0,
        1,
        datetime(2026, 12, 3, 8, 0, 1, tzinfo=timezone(timedelta(hours=8))),
        72,
        97,
        80,
        True,
        1234,
        31.2304,
        121.4737,
        4.5,
        None,
        None,
        None,
    ),
    (
        "ir-kit",
        datetime(2026, 12, 3, 8, 0, 0, tzinfo=UTC),
        2**40,
        2,
        datetime(2026, 12, 3, 8, 0, 0, tzinfo=UTC),
        None,
        None,
        5,
        False,
        None,
        -0.000001,
        None,
        None,
        "kitchen\\back\tslash\nnew\rline 厨房 ☃ \\N",
        True,
        False,
    ),
]


def test_copy_text_round_trips_every_type(db: psycopg.Connection[dict[str, object]]) -> None:
    db.execute("CREATE TEMP TABLE copy_probe (LIKE telemetry)")
    cols = ", ".join(TELEMETRY_COLUMNS)
    with db.cursor().copy(f"COPY copy_probe ({cols}) FROM STDIN") as copy:
        copy.write(copy_text(ROWS))
    got = db.execute(f"SELECT {cols} FROM copy_probe ORDER BY resident_id").fetchall()
    assert [tuple(r.values()) for r in got] == ROWS
