"""SQL edge of the welfare package: every change locks its row, checks the pure rules and writes the
change with its append-only audit row in one transaction. Reads compute flags with the pure modules.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from hotline.service import Actor
from hotline.store import fetch_all, fetch_one
from welfare import lifecycle, supervision, timeline, visits
from welfare.lifecycle import OverdueRules

AnyConn = psycopg.Connection[Any]


class NotFound(Exception):
    """No such row (HTTP 404)."""


def _log(
    conn: AnyConn,
    request_id: int,
    actor: Actor,
    action: str,
    now: datetime,
    *,
    order_id: int | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    note: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        """INSERT INTO work_order_log (request_id, order_id, at, actor_id, actor, action, from_status,
                                       to_status, note, detail)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            request_id,
            order_id,
            now,
            actor.id,
            actor.username,
            action,
            from_status,
            to_status,
            note,
            Jsonb(detail or {}),
        ),
    )


# --- providers -----------------------------------------------------------------------------------------


def create_provider(conn: AnyConn, name: str, district: str) -> dict[str, Any]:
    row = fetch_one(
        conn, "INSERT INTO provider_orgs (name, district) VALUES (%s, %s) RETURNING *", (name, district)
    )
    assert row is not None
    return row


def list_providers(conn: AnyConn) -> list[dict[str, Any]]:
    return fetch_all(conn, "SELECT * FROM provider_orgs WHERE active ORDER BY name")


# --- requests and orders -------------------------------------------------------------------------------


def create_request(
    conn: AnyConn,
    actor: Actor,
    now: datetime,
    *,
    resident_id: int,
    category: str,
    wanted_at: datetime,
    notes: str = "",
) -> dict[str, Any]:
    """A request taken on the phone by an operator."""
    lifecycle.validate_category(category)
    with conn.transaction():
        if fetch_one(conn, "SELECT 1 FROM residents WHERE id = %s", (resident_id,)) is None:
            raise NotFound(f"resident {resident_id} does not exist")
        row = fetch_one(
            conn,
            """INSERT INTO service_requests (resident_id, category, source, wanted_at, notes, created_at,
                                             created_by)
               VALUES (%s, %s, 'phone', %s, %s, %s, %s) RETURNING id""",
            (resident_id, category, wanted_at, notes, now, actor.id),
        )
        assert row is not None
        _log(conn, row["id"], actor, "created", now, to_status=lifecycle.R_OPEN, note=notes or None)
    return get_request(conn, int(row["id"]), now)


_REQUESTS_SQL = """
SELECT s.id, s.resident_id, r.name AS resident_name, r.district, s.category, s.source, s.status,
       s.wanted_at, s.notes, s.created_at,
       o.id AS order_id, o.status AS order_status, o.org_id, p.name AS org_name, o.worker_name,
       o.assigned_at, o.accepted_at, o.checked_in_at, o.checked_out_at, o.rating
  FROM service_requests s
  JOIN residents r ON r.id = s.resident_id
  LEFT JOIN LATERAL (SELECT * FROM work_orders w WHERE w.request_id = s.id ORDER BY w.id DESC LIMIT 1) o
         ON true
  LEFT JOIN provider_orgs p ON p.id = o.org_id
"""


def _flag(row: dict[str, Any], now: datetime, rules: OverdueRules) -> dict[str, Any]:
    flag = lifecycle.request_overdue(status=row["status"], wanted_at=row["wanted_at"], now=now)
    if flag is None and row.get("order_status") and row["status"] == lifecycle.R_ASSIGNED:
        flag = lifecycle.order_overdue(
            status=row["order_status"],
            wanted_at=row["wanted_at"],
            assigned_at=row["assigned_at"],
            now=now,
            rules=rules,
        )
    row["overdue"] = flag
    row["rank"] = lifecycle.queue_rank("service")
    return row


def list_requests(
    conn: AnyConn,
    now: datetime,
    *,
    status: str | None = None,
    resident_ids: frozenset[int] | None = None,
    rules: OverdueRules = OverdueRules(),
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Open and assigned requests (or those of ``status``), earliest wanted time first."""
    rows = fetch_all(
        conn,
        _REQUESTS_SQL
        + """ WHERE (%(st)s::text IS NULL AND s.status IN ('open', 'assigned') OR s.status = %(st)s)
                AND (%(vis)s::bigint[] IS NULL OR s.resident_id = ANY(%(vis)s))
              ORDER BY s.wanted_at, s.id LIMIT %(limit)s""",
        {"st": status, "vis": None if resident_ids is None else sorted(resident_ids), "limit": limit},
    )
    return [_flag(r, now, rules) for r in rows]


def get_request(
    conn: AnyConn, request_id: int, now: datetime, rules: OverdueRules = OverdueRules()
) -> dict[str, Any]:
    row = fetch_one(conn, _REQUESTS_SQL + " WHERE s.id = %s", (request_id,))
    if row is None:
        raise NotFound(f"service request {request_id} does not exist")
    _flag(row, now, rules)
    row["orders"] = fetch_all(
        conn,
        """SELECT w.*, p.name AS org_name FROM work_orders w JOIN provider_orgs p ON p.id = w.org_id
            WHERE w.request_id = %s ORDER BY w.id""",
        (request_id,),
    )
    row["log"] = fetch_all(
        conn,
        """SELECT id, order_id, at, actor, action, from_status, to_status, note, detail
             FROM work_order_log WHERE request_id = %s ORDER BY id""",
        (request_id,),
    )
    return row


def _lock_request(conn: AnyConn, request_id: int) -> dict[str, Any]:
    row = fetch_one(conn, "SELECT * FROM service_requests WHERE id = %s FOR UPDATE", (request_id,))
    if row is None:
        raise NotFound(f"service request {request_id} does not exist")
    return row


def assign(conn: AnyConn, request_id: int, org_id: int, actor: Actor, now: datetime) -> dict[str, Any]:
    """Give an open request to a provider organisation: a new work order."""
    lifecycle.check_order_action("accept", role=actor.role, worker_name=None)
    with conn.transaction():
        req = _lock_request(conn, request_id)
        lifecycle.can_assign(req["status"])
        org = fetch_one(conn, "SELECT id, name FROM provider_orgs WHERE id = %s AND active", (org_id,))
        if org is None:
            raise NotFound(f"provider {org_id} does not exist")
        order = fetch_one(
            conn,
            """INSERT INTO work_orders (request_id, org_id, assigned_at, assigned_by)
               VALUES (%s, %s, %s, %s) RETURNING id""",
            (request_id, org_id, now, actor.id),
        )
        assert order is not None
        conn.execute("UPDATE service_requests SET status = 'assigned' WHERE id = %s", (request_id,))
        _log(
            conn,
            request_id,
            actor,
            "assigned",
            now,
            order_id=order["id"],
            from_status=req["status"],
            to_status=lifecycle.R_ASSIGNED,
            detail={"org_id": org_id, "org": org["name"]},
        )
    return get_request(conn, request_id, now)


_STAMP = {
    lifecycle.ACCEPTED: "accepted_at",
    lifecycle.CHECKED_IN: "checked_in_at",
    lifecycle.COMPLETED: "checked_out_at",
}


def order_action(
    conn: AnyConn,
    order_id: int,
    action: str,
    actor: Actor,
    now: datetime,
    *,
    worker_name: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """accept / decline / assign_worker / check_in / check_out / cancel, time-stamped and audited."""
    lifecycle.check_order_action(action, role=actor.role, worker_name=worker_name)
    with conn.transaction():
        order = fetch_one(conn, "SELECT * FROM work_orders WHERE id = %s", (order_id,))
        if order is None:
            raise NotFound(f"work order {order_id} does not exist")
        req = _lock_request(conn, int(order["request_id"]))  # request first, then order: one lock order
        order = fetch_one(conn, "SELECT * FROM work_orders WHERE id = %s FOR UPDATE", (order_id,))
        assert order is not None
        new = lifecycle.next_order_status(order["status"], action)
        sets = ["status = %(st)s", "version = version + 1"]
        if new in _STAMP:
            sets.append(f"{_STAMP[new]} = %(now)s")
        if new in lifecycle.FINAL_ORDER_STATUSES:
            sets.append("closed_at = %(now)s")
        if action == "assign_worker":
            sets.append("worker_name = %(worker)s")
        conn.execute(
            f"UPDATE work_orders SET {', '.join(sets)} WHERE id = %(id)s",
            {"st": new, "now": now, "worker": (worker_name or "").strip(), "id": order_id},
        )
        req_new = lifecycle.REQUEST_AFTER.get(new)
        if req_new is not None:
            conn.execute("UPDATE service_requests SET status = %s WHERE id = %s", (req_new, req["id"]))
        _log(
            conn,
            int(req["id"]),
            actor,
            action,
            now,
            order_id=order_id,
            from_status=order["status"],
            to_status=new,
            note=note,
            detail={"worker_name": worker_name} if worker_name else {},
        )
    return get_request(conn, int(req["id"]), now)


def cancel_request(
    conn: AnyConn, request_id: int, actor: Actor, now: datetime, note: str | None = None
) -> dict[str, Any]:
    if actor.role not in lifecycle.STAFF_ROLES:
        raise lifecycle.Forbidden(f"the {actor.role} role may not cancel requests")
    with conn.transaction():
        req = _lock_request(conn, request_id)
        lifecycle.can_cancel_request(req["status"])
        conn.execute(
            """UPDATE work_orders SET status = 'cancelled', closed_at = %s, version = version + 1
                WHERE request_id = %s AND status NOT IN ('declined', 'cancelled', 'completed')""",
            (now, request_id),
        )
        conn.execute("UPDATE service_requests SET status = 'cancelled' WHERE id = %s", (request_id,))
        _log(
            conn,
            request_id,
            actor,
            "cancelled",
            now,
            from_status=req["status"],
            to_status="cancelled",
            note=note,
        )
    return get_request(conn, request_id, now)


def order_resident(conn: AnyConn, order_id: int) -> int:
    row = fetch_one(
        conn,
        "SELECT s.resident_id FROM work_orders w JOIN service_requests s ON s.id = w.request_id "
        "WHERE w.id = %s",
        (order_id,),
    )
    if row is None:
        raise NotFound(f"work order {order_id} does not exist")
    return int(row["resident_id"])


def rate(
    conn: AnyConn, order_id: int, actor: Actor, now: datetime, *, rating: int, comment: str | None
) -> dict[str, Any]:
    """The resident's family (or staff on the resident's behalf) rate a completed order once."""
    with conn.transaction():
        order = fetch_one(conn, "SELECT * FROM work_orders WHERE id = %s FOR UPDATE", (order_id,))
        if order is None:
            raise NotFound(f"work order {order_id} does not exist")
        lifecycle.check_rating(order["status"], rating, order["rating"] is not None)
        conn.execute(
            "UPDATE work_orders SET rating = %s, rating_comment = %s, rated_at = %s, rated_by = %s, "
            "version = version + 1 WHERE id = %s",
            (rating, comment, now, actor.id, order_id),
        )
        _log(
            conn, int(order["request_id"]), actor, "rated", now, order_id=order_id, detail={"rating": rating}
        )
    row = fetch_one(
        conn,
        "SELECT id, request_id, status, rating, rating_comment, rated_at FROM work_orders WHERE id = %s",
        (order_id,),
    )
    assert row is not None
    return row


# --- visits -------------------------------------------------------------------------------------------

_RISK_SQL = """
SELECT r.id, r.name, r.district, r.lives_alone, r.dementia, r.care_notes,
       (SELECT count(*) FROM calls c WHERE c.resident_id = r.id AND c.priority = 1
           AND c.created_at > %(since)s AND c.created_at <= %(now)s) AS p1_calls,
       (SELECT count(*) FROM alerts a WHERE a.resident_id = r.id AND a.rule = 'inactivity'
           AND a.opened_at > %(since)s AND a.opened_at <= %(now)s) AS inactivity_alerts,
       (SELECT max(v.visited_at) FROM welfare_visits v WHERE v.resident_id = r.id AND v.status = 'done'
           AND v.visited_at <= %(now)s) AS last_visit,
       EXISTS (SELECT 1 FROM welfare_visits v WHERE v.resident_id = r.id AND v.status = 'due'
           AND v.kind = 'scheduled') AS has_pending
  FROM residents r WHERE r.active ORDER BY r.id
"""


def resident_tiers(conn: AnyConn, now: datetime) -> list[dict[str, Any]]:
    rows = fetch_all(conn, _RISK_SQL, {"since": now - visits.HISTORY, "now": now})
    for r in rows:
        r["tier"] = visits.tier(
            visits.RiskFacts(
                r["lives_alone"], r["dementia"], r["care_notes"] or {}, r["p1_calls"], r["inactivity_alerts"]
            )
        )
    return rows


def schedule_due(conn: AnyConn, now: datetime) -> int:
    """Create the due visit of every resident whose next visit falls due; idempotent."""
    created = 0
    with conn.transaction():
        for r in resident_tiers(conn, now):
            if not visits.should_schedule(r["tier"], r["last_visit"], r["has_pending"], now):
                continue
            cur = conn.execute(
                """INSERT INTO welfare_visits (resident_id, kind, tier, due_at, created_at)
                   VALUES (%s, 'scheduled', %s, %s, %s) ON CONFLICT DO NOTHING""",
                (r["id"], r["tier"], visits.next_due(r["tier"], r["last_visit"], now), now),
            )
            created += cur.rowcount
    return created


_VISITS_SQL = """
SELECT v.*, r.name AS resident_name, r.district
  FROM welfare_visits v JOIN residents r ON r.id = v.resident_id
"""


def _visit_flag(v: dict[str, Any], now: datetime) -> dict[str, Any]:
    v["overdue"] = visits.is_overdue(v["tier"], v["due_at"], v["status"], now)
    return v


def list_visits(
    conn: AnyConn, now: datetime, *, status: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Due visits by due date (``status='overdue'``: only the overdue ones; 'done': latest first)."""
    if status == "done":
        rows = fetch_all(
            conn, _VISITS_SQL + " WHERE v.status = 'done' ORDER BY v.visited_at DESC LIMIT %s", (limit,)
        )
    else:
        rows = fetch_all(
            conn, _VISITS_SQL + " WHERE v.status = 'due' ORDER BY v.due_at, v.id LIMIT %s", (limit,)
        )
    out = [_visit_flag(v, now) for v in rows]
    return [v for v in out if v["overdue"]] if status == "overdue" else out


def get_visit(conn: AnyConn, visit_id: int, now: datetime) -> dict[str, Any]:
    row = fetch_one(conn, _VISITS_SQL + " WHERE v.id = %s", (visit_id,))
    if row is None:
        raise NotFound(f"visit {visit_id} does not exist")
    return _visit_flag(row, now)


def record_visit(
    conn: AnyConn,
    visit_id: int,
    actor: Actor,
    now: datetime,
    *,
    visited_at: datetime,
    worker: str,
    findings: str,
    follow_ups: str,
) -> dict[str, Any]:
    if visited_at > now + timedelta(minutes=5):
        raise lifecycle.InvalidTransition("a visit cannot be recorded in the future")
    with conn.transaction():
        row = fetch_one(conn, "SELECT status FROM welfare_visits WHERE id = %s FOR UPDATE", (visit_id,))
        if row is None:
            raise NotFound(f"visit {visit_id} does not exist")
        if row["status"] != "due":
            raise lifecycle.InvalidTransition(f"cannot record a {row['status']} visit")
        conn.execute(
            """UPDATE welfare_visits SET status = 'done', visited_at = %s, worker = %s, findings = %s,
                      follow_ups = %s, recorded_by = %s WHERE id = %s""",
            (visited_at, worker, findings, follow_ups, actor.id, visit_id),
        )
    return get_visit(conn, visit_id, now)


def visit_from_alert(conn: AnyConn, alert_id: int, actor: Actor, now: datetime) -> dict[str, Any]:
    """An unscheduled visit, due now, for a welfare (inactivity) alert; once per alert."""
    with conn.transaction():
        alert = fetch_one(conn, "SELECT id, resident_id, rule FROM alerts WHERE id = %s", (alert_id,))
        if alert is None:
            raise NotFound(f"alert {alert_id} does not exist")
        if alert["rule"] != "inactivity":
            raise lifecycle.InvalidTransition(
                f"only a welfare (inactivity) alert makes a visit, not {alert['rule']}"
            )
        row = fetch_one(
            conn,
            """INSERT INTO welfare_visits (resident_id, kind, tier, due_at, alert_id, created_at, created_by)
               VALUES (%s, 'unscheduled', 'weekly', %s, %s, %s, %s)
               ON CONFLICT (alert_id) WHERE alert_id IS NOT NULL DO NOTHING RETURNING id""",
            (alert["resident_id"], now, alert_id, now, actor.id),
        )
        if row is None:
            row = fetch_one(conn, "SELECT id FROM welfare_visits WHERE alert_id = %s", (alert_id,))
            assert row is not None
    return get_visit(conn, int(row["id"]), now)


def visit_rates(conn: AnyConn, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Visit rate per tier and district: residents of each tier (as of ``end``) visited in [start, end)."""
    done = {
        int(r["resident_id"])
        for r in fetch_all(
            conn,
            "SELECT DISTINCT resident_id FROM welfare_visits WHERE status = 'done' "
            "AND visited_at >= %s AND visited_at < %s",
            (start, end),
        )
    }
    return visits.visit_rates(
        visits.Covered(r["district"], r["tier"], r["id"] in done)
        for r in resident_tiers(conn, end)
        if r["tier"]
    )


# --- rescue timeline ----------------------------------------------------------------------------------


def rescue_timeline(conn: AnyConn, call_id: int, *, family: bool) -> dict[str, Any]:
    call = fetch_one(
        conn,
        """SELECT c.*, u.username AS first_claimed_by_name FROM calls c
             LEFT JOIN users u ON u.id = c.first_claimed_by WHERE c.id = %s""",
        (call_id,),
    )
    if call is None:
        raise NotFound(f"call {call_id} does not exist")
    sent = fetch_all(
        conn,
        """SELECT d.*, u.username AS sent_by FROM dispatches d LEFT JOIN users u ON u.id = d.sent_by
            WHERE d.call_id = %s ORDER BY d.id""",
        (call_id,),
    )
    log = (
        [] if family else fetch_all(conn, "SELECT * FROM call_log WHERE call_id = %s ORDER BY id", (call_id,))
    )
    return timeline.build(call, sent, log, family=family)


# --- supervision --------------------------------------------------------------------------------------


def overdue(conn: AnyConn, now: datetime, rules: OverdueRules = OverdueRules()) -> dict[str, Any]:
    return {
        "requests": [r for r in list_requests(conn, now, rules=rules, limit=1000) if r["overdue"]],
        "visits": list_visits(conn, now, status="overdue", limit=1000),
    }


def supervision_figures(
    conn: AnyConn, *, start: datetime, end: datetime, now: datetime, targets: dict[int, int], tz: str
) -> dict[str, Any]:
    calls = fetch_all(
        conn,
        """SELECT c.created_at, r.district, c.priority, c.first_claimed_at FROM calls c
             JOIN residents r ON r.id = c.resident_id WHERE c.created_at >= %s AND c.created_at < %s""",
        (start, end),
    )
    orders = fetch_all(
        conn,
        """SELECT w.assigned_at, r.district, p.name AS org, w.status, s.wanted_at, w.checked_in_at, w.rating
             FROM work_orders w JOIN service_requests s ON s.id = w.request_id
             JOIN residents r ON r.id = s.resident_id JOIN provider_orgs p ON p.id = w.org_id
            WHERE w.assigned_at >= %s AND w.assigned_at < %s""",
        (start, end),
    )
    done = fetch_all(
        conn,
        """SELECT v.visited_at, r.district FROM welfare_visits v JOIN residents r ON r.id = v.resident_id
            WHERE v.status = 'done' AND v.visited_at >= %s AND v.visited_at < %s""",
        (start, end),
    )
    out = supervision.figures(
        (supervision.CallRow(**c) for c in calls),
        (supervision.OrderRow(**o) for o in orders),
        (supervision.VisitRow(**v) for v in done),
        targets=targets,
        tz=tz,
    )
    out["visit_rates"] = visit_rates(conn, start, end)
    out["overdue"] = overdue(conn, now)
    out["from"], out["to"], out["tz"] = start, end, tz
    return out
