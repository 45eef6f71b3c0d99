"""The SQL edge of the alert engine: registry look-ups, locked per-resident state, and alerts → calls.

Every function runs inside the caller's transaction; the caller holds the resident's engine_state row lock
(see `lock_state`) before touching that resident's alerts, so alerts and calls for one resident are only
ever changed by one engine worker at a time.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from alerts.models import Action, Cancel, Clear, DeviceInfo, Raise, ResidentInfo, Thresholds
from alerts.rules import TECHNICAL, ResidentState
from carewatch.settings import Settings

log = logging.getLogger(__name__)

_RESIDENTS_SQL = resources.files("alerts").joinpath("residents.sql").read_text("utf-8")
_OPEN_ALERT = """SELECT a.id, a.count, a.call_id, a.details, c.status AS call_status
                   FROM alerts a LEFT JOIN calls c ON c.id = a.call_id
                  WHERE a.resident_id = %s AND a.rule = %s AND a.status = 'open'
                  FOR UPDATE OF a"""


def thresholds(raw: Any, resident_id: int) -> Thresholds:
    """Per-resident overrides; a bad document falls back to the defaults (the API validates on write)."""
    try:
        return Thresholds.model_validate(raw or {})
    except ValidationError as exc:
        log.warning("resident %s: invalid thresholds ignored (%d errors)", resident_id, exc.error_count())
        return Thresholds()


def send_residents(
    conn: psycopg.Connection[Any], ids: list[int], devices: list[str] | None = None
) -> psycopg.Cursor[dict[str, Any]]:
    """Ask for the active residents with these ids or owning these (enabled) devices; read the answer
    with :func:`read_residents` (in pipeline mode, after sending whatever else can travel with it)."""
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(_RESIDENTS_SQL, {"ids": ids, "devices": devices or []})
    return cur


def read_residents(cur: psycopg.Cursor[dict[str, Any]]) -> dict[int, ResidentInfo]:
    out: dict[int, ResidentInfo] = {}
    for row in cur.fetchall():
        owned = tuple(
            DeviceInfo(d["id"], d["kind"], int(row["id"]), d.get("room"), int(d["report_interval_s"]))
            for d in row["devices"]
        )
        out[int(row["id"])] = ResidentInfo(
            resident_id=int(row["id"]),
            timezone=row["timezone"],
            home_lat=row["home_lat"],
            home_lon=row["home_lon"],
            geofence_m=float(row["geofence_m"]),
            dementia=bool(row["dementia"]),
            thresholds=thresholds(row["thresholds"], int(row["id"])),
            devices=owned,
        )
    return out


def load_residents(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, ResidentInfo]:
    return read_residents(send_residents(conn, ids))


def lock_states(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, ResidentState]:
    """Create if missing, then row-lock these residents' states until commit, in id order.

    This lock is the scale-out serialisation point: a worker changes a resident's alerts only while holding
    it. Rows are locked in resident-id order by every caller, so two workers' batches cannot deadlock.
    """
    ids = sorted(set(ids))
    states = _select_for_update(conn, ids)
    missing = [i for i in ids if i not in states]
    if missing:  # first message for a resident: create its row, then lock it like the others
        conn.execute(
            """INSERT INTO engine_state (resident_id) SELECT unnest(%s::bigint[]) ORDER BY 1
               ON CONFLICT (resident_id) DO NOTHING""",
            (missing,),
        )
        states = _select_for_update(conn, ids)
    return states


_LOCK_STATES = """SELECT resident_id, state FROM engine_state WHERE resident_id = ANY(%s)
                   ORDER BY resident_id FOR UPDATE"""


def _select_for_update(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, ResidentState]:
    rows = conn.execute(_LOCK_STATES, (ids,)).fetchall()
    return {int(r[0]): ResidentState.from_json(r[1]) for r in rows}


_SAVE_STATES = """UPDATE engine_state s SET state = v.state, next_due_at = v.due, updated_at = %s
  FROM jsonb_to_recordset(%s::jsonb) AS v (id bigint, state jsonb, due timestamptz)
 WHERE s.resident_id = v.id"""


def save_states(
    conn: psycopg.Connection[Any], rows: list[tuple[int, ResidentState, datetime | None]], now: datetime
) -> None:
    """All states as one JSON document: psycopg dumps a jsonb[] array element by element in Python
    (quoting each through a regex), which was a quarter of the engine's CPU under telemetry."""
    if not rows:
        return
    doc = [{"id": rid, "state": st.to_json(), "due": due and due.isoformat()} for rid, st, due in rows]
    conn.execute(_SAVE_STATES, (now, json.dumps(doc, separators=(",", ":"), allow_nan=False)))


_SEEN = """INSERT INTO engine_seen (device_id, ts, seq)
SELECT u.* FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[]) AS u (device_id, ts, seq)
  JOIN devices d ON d.id = u.device_id AND d.enabled AND d.resident_id IS NOT NULL
 ORDER BY 1, 2, 3
ON CONFLICT DO NOTHING RETURNING device_id, ts, seq"""

_LOCK_STATES_OF = """WITH wanted AS (
    SELECT unnest(%(ids)s::bigint[]) AS id
    UNION
    SELECT resident_id FROM devices
     WHERE id = ANY(%(devices)s::text[]) AND enabled AND resident_id IS NOT NULL
)
SELECT s.resident_id, s.state FROM engine_state s JOIN wanted w ON w.id = s.resident_id
 ORDER BY s.resident_id FOR UPDATE OF s"""


class SeenAndLock:
    """Record events as seen and lock residents' states, sent now and read later: in pipeline mode this
    travels with the registry look-up, so a fall's first round trip does all three.

    `fresh` holds the events seen for the first time (a redelivered event is not among them and must be
    skipped). Seen rows are inserted in key order before any state lock, and state locks are taken in id
    order, so two workers handling the same events wait for each other but never deadlock. States are
    locked for the residents `ids` and the owners of `devices` (the registry's cache misses)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        events: list[tuple[str, datetime, int]],
        ids: list[int],
        devices: list[str],
    ) -> None:
        self.conn = conn
        keys = sorted(set(events))
        self._seen = (
            conn.cursor().execute(_SEEN, ([e[0] for e in keys], [e[1] for e in keys], [e[2] for e in keys]))
            if keys
            else None
        )
        self._locked = conn.cursor().execute(
            _LOCK_STATES_OF, {"ids": sorted(set(ids)), "devices": sorted(set(devices))}
        )

    def read(self, residents: list[int]) -> tuple[set[tuple[str, datetime, int]], dict[int, ResidentState]]:
        """The fresh events and the locked states of `residents` (rows created for those without one)."""
        fresh = (
            {(str(d), ts, int(q)) for d, ts, q in self._seen.fetchall()} if self._seen is not None else set()
        )
        locked = {int(r[0]): ResidentState.from_json(r[1]) for r in self._locked.fetchall()}
        if any(rid not in locked for rid in residents):
            locked.update(lock_states(self.conn, residents))
        return fresh, {rid: locked[rid] for rid in sorted(residents)}


def discover(conn: psycopg.Connection[Any], now: datetime) -> int:
    """Give every resident with devices a state row due now, so silence is noticed with no message at all."""
    cur = conn.execute(
        """INSERT INTO engine_state (resident_id, next_due_at)
           SELECT DISTINCT d.resident_id, %s::timestamptz
             FROM devices d JOIN residents r ON r.id = d.resident_id
            WHERE d.enabled AND r.active
              AND NOT EXISTS (SELECT 1 FROM engine_state s WHERE s.resident_id = d.resident_id)
           ON CONFLICT (resident_id) DO NOTHING""",
        (now,),
    )
    return cur.rowcount


def lock_due(
    conn: psycopg.Connection[Any], now: datetime, limit: int = 100
) -> list[tuple[int, ResidentState]]:
    """Due timers; rows another worker holds are skipped, it is handling them (or will, next tick)."""
    rows = conn.execute(
        """SELECT resident_id, state FROM engine_state WHERE next_due_at <= %s
            ORDER BY next_due_at LIMIT %s FOR UPDATE SKIP LOCKED""",
        (now, limit),
    ).fetchall()
    return [(int(r[0]), ResidentState.from_json(r[1])) for r in rows]


def _log(
    conn: psycopg.Connection[Any], alert_id: int, from_status: str | None, to_status: str, reason: str
) -> None:
    conn.execute(
        "INSERT INTO alert_log (alert_id, from_status, to_status, reason) VALUES (%s, %s, %s, %s)",
        (alert_id, from_status, to_status, reason[:500]),
    )


def _open_alert(conn: psycopg.Connection[Any], resident_id: int, rule: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_OPEN_ALERT, (resident_id, rule)).fetchone()


def apply_actions(
    conn: psycopg.Connection[Any], resident_id: int, actions: list[Action], now: datetime, settings: Settings
) -> None:
    for action in actions:
        if isinstance(action, Raise):
            _raise(conn, resident_id, action, now, settings)
        elif isinstance(action, Clear):
            _clear(conn, resident_id, action, now)
        else:
            _cancel(conn, resident_id, action, now, settings)


def _raise(
    conn: psycopg.Connection[Any], resident_id: int, a: Raise, now: datetime, settings: Settings
) -> None:
    """Open the alert (or count a repeat on the open one) and put it on a call, in one statement whose
    result nobody waits for: in pipeline mode it travels with the state write-back and the COMMIT, so a
    new emergency costs the engine no round trip of its own (the database function raise_alert,
    migration 0006, does what the hotline's open_or_attach does)."""
    from hotline.intake import family_priorities

    details = {**a.details, "late": a.late} if a.late else dict(a.details)
    conn.execute(
        "SELECT raise_alert(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            resident_id,
            a.device_id,
            a.rule,
            a.priority,
            a.event_at,
            now,
            a.late,
            a.title,
            Jsonb(details),
            settings.answer_target(a.priority),
            family_priorities(),
        ),
    )


def _clear(conn: psycopg.Connection[Any], resident_id: int, c: Clear, now: datetime) -> None:
    current = _open_alert(conn, resident_id, c.rule)
    if current is None:
        return
    if c.rule in TECHNICAL:
        conn.execute(
            "UPDATE alerts SET status = 'cleared', cleared_at = %s, details = details || %s WHERE id = %s",
            (now, Jsonb({"cleared_reason": c.reason}), current["id"]),
        )
        _log(conn, int(current["id"]), "open", "cleared", c.reason)
    else:
        # Emergencies stay open until an operator closes them through the call; note the recovery.
        conn.execute(
            "UPDATE alerts SET details = details || %s WHERE id = %s",
            (Jsonb({"recovered_at": c.at.isoformat(), "recovered": c.reason}), current["id"]),
        )


def _cancel(
    conn: psycopg.Connection[Any], resident_id: int, c: Cancel, now: datetime, settings: Settings
) -> None:
    current = _open_alert(conn, resident_id, c.rule) if c.rule else None
    entry = {"device_id": c.device_id, "ref_seq": c.ref_seq, "at": c.event_at.isoformat(), "reason": c.reason}
    if current is None:
        log.info("resident %s: cancel recorded with no open alert: %s", resident_id, c.reason)
        return
    alert_id = int(current["id"])
    if c.honoured and current["call_id"] is not None and current["call_status"] != "resolved":
        from hotline.intake import wearer_cancel

        wearer_cancel(
            conn,
            call_id=int(current["call_id"]),
            now=now,
            note=c.reason,
            answer_target_s=settings.answer_target(3),
        )
        conn.execute(
            "UPDATE alerts SET details = details || %s WHERE id = %s",
            (Jsonb({"cancelled_by_wearer": entry}), alert_id),
        )
        _log(conn, alert_id, "open", "open", f"cancelled by wearer: {c.reason}")
        return
    ignored = [*current["details"].get("ignored_cancels", []), entry][-10:]
    conn.execute(
        "UPDATE alerts SET details = details || %s WHERE id = %s",
        (Jsonb({"ignored_cancels": ignored}), alert_id),
    )
    _log(conn, alert_id, "open", "open", f"cancel ignored: {c.reason}")
