"""Escalation, claim timeouts and notification delivery, each in a database of its own (the sweeps scan
every call) and with explicit `now` values."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from carewatch.settings import Settings
from hotline import service
from hotline.intake import open_or_attach
from hotline.notify import Message, WebhookNotifier
from hotline.scheduled import deliver_notifications, escalate_due, release_stale_claims
from hotline.service import Actor
from tests.hotline.conftest import add_alert, add_user, at
from tests.support import add_resident, scalar

SETTINGS = Settings(database_url="unused", escalation_repeat_s=60, claim_timeout_s=300)


@pytest.fixture
def fdb(fresh_database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def open_call(conn, name: str, priority: int = 1, now_s: float = 0, target_s: int = 60) -> int:
    rid = add_resident(conn, name)
    ref = open_or_attach(
        conn,
        resident_id=rid,
        alert_id=add_alert(conn, rid, "fall", priority),
        priority=priority,
        rule="fall",
        title="Fall",
        event_at=at(now_s),
        late=False,
        now=at(now_s),
        answer_target_s=target_s,
    )
    return ref.call_id


def test_unclaimed_p1_escalates_repeats_and_stops_once_claimed(fdb):
    sups = [add_user(fdb, f"sup{i}", "supervisor") for i in range(2)]
    op = Actor(add_user(fdb, "op", "operator"), "op", "operator")
    call = open_call(fdb, "Gao", priority=1)
    assert escalate_due(fdb, at(59), SETTINGS) == 0
    assert escalate_due(fdb, at(60), SETTINGS) == 1
    assert escalate_due(fdb, at(61), SETTINGS) == 0  # not again before escalation_repeat_s
    row = fdb.execute("SELECT * FROM calls WHERE id = %s", (call,)).fetchone()
    assert (
        row["escalation_level"] == 1
        and row["escalated_at"] == at(60)
        and row["next_escalation_at"] == at(120)
    )
    notes = fdb.execute(
        "SELECT recipient, kind, state FROM notifications WHERE call_id = %s ORDER BY id", (call,)
    ).fetchall()
    assert sorted(n["recipient"] for n in notes) == sorted(f"user:{s}" for s in sups)
    assert {n["kind"] for n in notes} == {"escalation"}
    fdb.execute("UPDATE notifications SET state = 'sent' WHERE call_id = %s", (call,))
    assert escalate_due(fdb, at(120), SETTINGS) == 1  # repeat: supervisors notified again
    assert (
        scalar(fdb, "SELECT count(*) FROM notifications WHERE call_id = %s AND state = 'pending'", (call,))
        == 2
    )
    service.claim(fdb, call, op, at(130))
    assert escalate_due(fdb, at(500), SETTINGS) == 0
    row = fdb.execute("SELECT * FROM calls WHERE id = %s", (call,)).fetchone()
    assert row["escalation_level"] == 2 and row["next_escalation_at"] is None
    kinds = [
        r["kind"] for r in fdb.execute("SELECT kind FROM live_events WHERE call_id = %s ORDER BY id", (call,))
    ]
    assert kinds == ["call.created", "call.escalated", "call.escalated", "call.updated"]
    assert (
        scalar(fdb, "SELECT count(*) FROM call_log WHERE call_id = %s AND action = 'escalated'", (call,)) == 2
    )


def test_escalated_call_moves_up_within_its_priority(fdb):
    older = open_call(fdb, "A", priority=2, now_s=0, target_s=300)
    newer = open_call(fdb, "B", priority=2, now_s=10, target_s=30)  # e.g. raised from P3: shorter clock
    p1 = open_call(fdb, "C", priority=1, now_s=20, target_s=600)
    escalate_due(fdb, at(45), SETTINGS)
    assert [c["id"] for c in service.list_calls(fdb)] == [p1, newer, older]


def test_claim_timeout_returns_call_to_queue(fdb):
    op = Actor(add_user(fdb, "op", "operator"), "op", "operator")
    idle = open_call(fdb, "Idle", priority=2, target_s=180)
    busy = open_call(fdb, "Busy", priority=2, target_s=180)
    started = open_call(fdb, "Started", priority=2, target_s=180)
    for c in (idle, busy, started):
        service.claim(fdb, c, op, at(10))
    service.start(fdb, started, op, at(11))
    service.add_note(fdb, busy, op, at(200), "still talking")
    assert release_stale_claims(fdb, at(309), SETTINGS) == 0
    assert release_stale_claims(fdb, at(310), SETTINGS) == 1
    row = fdb.execute("SELECT * FROM calls WHERE id = %s", (idle,)).fetchone()
    assert row["status"] == "queued" and row["claimed_by"] is None and row["next_escalation_at"] == at(310)
    assert fdb.execute("SELECT status FROM calls WHERE id = %s", (busy,)).fetchone()["status"] == "claimed"
    log = fdb.execute(
        "SELECT * FROM call_log WHERE call_id = %s ORDER BY id DESC LIMIT 1", (idle,)
    ).fetchone()
    assert log["action"] == "claim_timeout" and log["detail"]["held_by"] == op.id
    assert release_stale_claims(fdb, at(1000), SETTINGS) == 1  # busy, idle since 200; in_progress stays
    assert (
        fdb.execute("SELECT status FROM calls WHERE id = %s", (started,)).fetchone()["status"]
        == "in_progress"
    )
    assert escalate_due(fdb, at(1000), SETTINGS) == 2  # both overdue calls escalate once back in the queue


class Recorder:
    def __init__(self, fail_for: str | None = None) -> None:
        self.sent: list[Message] = []
        self.fail_for = fail_for

    def send(self, message: Message) -> None:
        if message.recipient == self.fail_for:
            raise RuntimeError("recipient offline")
        self.sent.append(message)


def test_family_notifications_delivered_once_and_failures_retry(fdb):
    rid = add_resident(fdb, "Lin")
    son = scalar(
        fdb, "INSERT INTO contacts (resident_id, name, notify) VALUES (%s, 'Son', true) RETURNING id", (rid,)
    )
    fam = add_user(fdb, "fam", "family")
    fdb.execute("INSERT INTO family_links (user_id, resident_id) VALUES (%s, %s)", (fam, rid))
    ref = None
    for i in range(4):  # alerts keep re-triggering on the same call
        ref = open_or_attach(
            fdb,
            resident_id=rid,
            alert_id=add_alert(fdb, rid, f"r{i}", 1),
            priority=1,
            rule=f"r{i}",
            title="Fall",
            event_at=at(i),
            late=False,
            now=at(i),
            answer_target_s=60,
        )
    assert ref is not None
    op = Actor(add_user(fdb, "op", "operator"), "op", "operator")
    service.claim(fdb, ref.call_id, op, at(5))
    service.add_note(fdb, ref.call_id, op, at(6), "SECRET internal remark")
    notifier = Recorder(fail_for=f"user:{fam}")
    assert deliver_notifications(fdb, notifier) == 1
    assert [m.recipient for m in notifier.sent] == [f"contact:{son}"]
    body = notifier.sent[0].payload
    assert body["type"] == "call.family" and body["call"]["status"] == "claimed"
    assert "SECRET" not in json.dumps(body)
    failed = fdb.execute("SELECT * FROM notifications WHERE recipient = %s", (f"user:{fam}",)).fetchone()
    assert failed["state"] == "pending" and failed["attempts"] == 1 and "offline" in failed["last_error"]
    assert deliver_notifications(fdb, Recorder()) == 0  # backing off
    fdb.execute("UPDATE notifications SET next_attempt_at = now() - interval '1 s'")
    assert deliver_notifications(fdb, Recorder()) == 1
    assert scalar(fdb, "SELECT count(*) FROM notifications WHERE state = 'sent'") == 2


def test_webhook_notifier_posts_json(fdb, caplog):
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        rid = add_resident(fdb, "Xu")
        fdb.execute(
            "INSERT INTO contacts (resident_id, name, notify, webhook_url) VALUES (%s, 'D', true, %s)",
            (rid, url),
        )
        fdb.execute("INSERT INTO contacts (resident_id, name, notify) VALUES (%s, 'E', true)", (rid,))
        open_or_attach(
            fdb,
            resident_id=rid,
            alert_id=add_alert(fdb, rid, "sos", 2),
            priority=2,
            rule="sos",
            title="SOS",
            event_at=at(0),
            late=False,
            now=at(0),
            answer_target_s=180,
        )
        # D has its own webhook; E falls back to the default one (here: unset -> delivery fails, and an
        # unset webhook is a setting, not an outage: noted, without a warning per attempt).
        with caplog.at_level(logging.INFO, logger="hotline.scheduled"):
            assert deliver_notifications(fdb, WebhookNotifier(None, timeout_s=5)) == 1
        assert [r.levelno for r in caplog.records if "not delivered" in r.message] == [logging.INFO]
        assert len(received) == 1 and received[0]["call"]["priority"] == 2
        assert deliver_notifications(fdb, WebhookNotifier(url, timeout_s=5)) == 0  # E is backing off
        fdb.execute("UPDATE notifications SET next_attempt_at = NULL WHERE state = 'pending'")
        assert deliver_notifications(fdb, WebhookNotifier(url, timeout_s=5)) == 1
        assert len(received) == 2
    finally:
        server.shutdown()
        server.server_close()
