"""End to end in headless Chromium: a fall reaches two operators' consoles live and is handled to the end.

Operator A claims, starts, contacts family, dispatches an ambulance, records its arrival and resolves;
operator B's page (a second browser context, its own session) shows every step without a reload.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1440, "height": 900}
LIVE_MS = 8_000  # a change must reach the other page this fast (SSE; the 30 s poll would be too slow)


def row(page: Any, call_id: int) -> Any:
    return page.locator(f'[data-testid="call-row"][data-call-id="{call_id}"]')


def test_fall_flows_live_through_two_consoles(browser: Any, world: Any, sign_in: Any, shots: Any) -> None:
    alice = world.user("operator", "alice", "Alice Zhang")
    bob = world.user("operator", "bob", "Bob Li")
    rid = world.resident(
        "Chen Mei",
        dementia=True,
        care_notes={
            "conditions": "type 2 diabetes; hypertension",
            "medication": "metformin 500 mg twice daily",
            "mobility": "walks with a frame",
            "language": "Shanghainese",
        },
        access="key safe 4711 left of the door",
        contacts=(("Chen Jun", "son", "+86 138 0000 0001"), ("Wu Lan", "neighbour", "+86 138 0000 0002")),
    )
    world.history(rid, wander=True)
    # Other work already waiting, so the queue has an order to get right.
    other = world.resident("Zhou Ping")
    other_call = world.open_call(
        other, priority=3, rule="low_battery", title="Battery low", target_s=900, age_s=120
    )

    ctx_a = browser.new_context(viewport=DESKTOP, locale="en-US")
    ctx_b = browser.new_context(viewport=DESKTOP, locale="en-US")
    try:
        a, b = ctx_a.new_page(), ctx_b.new_page()
        errors: list[str] = []
        for p in (a, b):
            p.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(a, "/console/", alice)
        sign_in(b, "/console/", bob)
        for p in (a, b):
            expect(p.get_by_test_id("live-state")).to_have_attribute("data-state", "open", timeout=10_000)
            p.evaluate("window.__noReload = true")

        # A fall arrives: both queues show it without a reload, at the top, with the P1 cue.
        call_id = world.open_call(rid, priority=1, title="Fall detected", target_s=60)
        for p in (a, b):
            expect(row(p, call_id)).to_be_visible(timeout=LIVE_MS)
            # the new P1 is above the older P3 (other tests' calls may share the queue)
            order = p.locator('[data-testid="call-row"]').evaluate_all(
                "rows => rows.map(r => r.dataset.callId)"
            )
            assert order.index(str(call_id)) < order.index(str(other_call)), order
            expect(p.get_by_test_id("p1-banner")).to_be_visible()
            assert int(p.evaluate("document.body.dataset.beeps || '0'")) >= 1
            assert p.evaluate("window.__noReload") is True
        expect(row(a, call_id).get_by_test_id("countdown")).to_have_text(re.compile(r"^-?\d+:\d\d$"))

        # B watches the call too; A opens it and sees the resident card, with access codes hidden.
        row(b, call_id).click()
        row(a, call_id).click()
        expect(a.get_by_test_id("resident-name")).to_have_text("Chen Mei")
        expect(a.get_by_test_id("resident-conditions")).to_contain_text("diabetes")
        expect(a.get_by_test_id("resident-medication")).to_contain_text("metformin")
        expect(a.get_by_test_id("resident-flags")).to_contain_text("dementia")
        expect(a.get_by_test_id("access-notes")).not_to_contain_text("4711")
        contacts = a.get_by_test_id("contact")
        expect(contacts).to_have_count(2)
        expect(contacts.first).to_contain_text("Chen Jun")
        expect(a.get_by_test_id("call-alerts")).to_contain_text("Fall detected")
        expect(a.locator('[data-testid="vitals-chart"] path.series')).to_have_count(2, timeout=10_000)
        expect(a.locator('[data-testid="presence-timeline"] rect.span').first).to_be_visible()
        expect(a.get_by_test_id("geofence")).to_be_visible()
        assert a.get_by_test_id("trail-point").count() == 12

        # Claim with the keyboard shortcut: B sees who holds it and can no longer claim it.
        a.keyboard.press("c")
        expect(a.get_by_test_id("call-status")).to_have_attribute("data-status", "claimed")
        expect(row(b, call_id)).to_have_attribute("data-status", "claimed", timeout=LIVE_MS)
        expect(row(b, call_id).get_by_test_id("row-claimed-by")).to_contain_text(alice)
        expect(b.get_by_test_id("claim")).to_be_disabled(timeout=LIVE_MS)

        # Holding the call, A may reveal the access codes.
        a.get_by_test_id("reveal-access").click()
        expect(a.get_by_test_id("access-notes")).to_have_text("key safe 4711 left of the door")

        a.keyboard.press("s")
        expect(row(b, call_id)).to_have_attribute("data-status", "in_progress", timeout=LIVE_MS)

        # A half-typed note survives the refresh that recording an attempt (and its live event) brings.
        a.get_by_test_id("note-input").fill("draft: called the son")
        first = a.get_by_test_id("contact").first
        first.get_by_test_id("attempt-result").select_option("no_answer")
        first.get_by_test_id("record-attempt").click()
        expect(a.get_by_test_id("contact").first.get_by_test_id("attempts")).to_contain_text("no answer")
        expect(a.get_by_test_id("note-input")).to_have_value("draft: called the son")
        expect(b.get_by_test_id("contact").first.get_by_test_id("attempts")).to_contain_text(
            "no answer", timeout=LIVE_MS
        )

        a.get_by_test_id("note-input").fill("Resident not answering; son unreachable")
        a.get_by_test_id("note-submit").click()
        expect(a.get_by_test_id("note-input")).to_have_value("")
        expect(b.get_by_test_id("call-log")).to_contain_text("son unreachable", timeout=LIVE_MS)

        a.get_by_test_id("dispatch-kind").select_option("ambulance")
        a.get_by_test_id("dispatch-name").fill("120 Xuhui unit 7")
        a.get_by_test_id("dispatch-submit").click()
        expect(b.get_by_test_id("dispatch")).to_contain_text("120 Xuhui unit 7", timeout=LIVE_MS)
        a.get_by_test_id("dispatch-arrived").click()
        expect(b.get_by_test_id("dispatch")).to_have_attribute("data-arrived", "yes", timeout=LIVE_MS)
        a.set_viewport_size({"width": 1440, "height": 1200})  # tall enough for the charts
        a.screenshot(path=str(shots / "console-call.png"))
        a.set_viewport_size(DESKTOP)

        a.get_by_test_id("resolve-outcome").select_option("genuine_emergency")
        a.get_by_test_id("resolve-note").fill("taken to Xuhui Central Hospital")
        a.get_by_test_id("resolve-submit").click()
        for p in (a, b):
            expect(row(p, call_id)).to_have_count(0, timeout=LIVE_MS)
        expect(b.get_by_test_id("call-status")).to_have_attribute("data-status", "resolved", timeout=LIVE_MS)
        assert b.evaluate("window.__noReload") is True
        assert errors == []
    finally:
        ctx_a.close()
        ctx_b.close()


def test_supervisor_view_shows_queue_health(browser: Any, world: Any, sign_in: Any, shots: Any) -> None:
    sup = world.user("supervisor", "sue", "Sue Wang")
    op = world.user("operator", "olga", "Olga Sun")
    late = world.resident("Lin Hua")
    late_id = world.open_call(
        late, priority=2, rule="no_motion", title="No movement for 12 h", target_s=1, age_s=300
    )
    held = world.resident("Gao Feng")
    held_id = world.open_call(held, priority=1, rule="sos", title="SOS button", target_s=60)

    ctx = browser.new_context(viewport=DESKTOP, locale="en-US")
    ctx_op = browser.new_context(viewport=DESKTOP, locale="en-US")
    try:
        o = ctx_op.new_page()
        sign_in(o, "/console/", op)
        row(o, held_id).click()
        o.get_by_test_id("claim").click()
        expect(o.get_by_test_id("call-status")).to_have_attribute("data-status", "claimed")

        page = ctx.new_page()
        sign_in(page, "/console/", sup)
        expect(row(page, late_id).get_by_test_id("countdown")).to_have_class("clock overdue")
        expect(page.locator('[data-testid="call-row"]').first).to_have_attribute("data-priority", "1")
        page.screenshot(path=str(shots / "console-queue.png"))
        page.get_by_test_id("tab-supervisor").click()
        view = page.get_by_test_id("supervisor")
        expect(view).to_be_visible()
        expect(page.get_by_test_id("sv-past")).to_contain_text("Lin Hua")
        expect(page.get_by_test_id("sv-operators")).to_contain_text(op)
        expect(page.get_by_test_id("sv-operators")).to_contain_text("Gao Feng")
        assert int(page.get_by_test_id("sv-past-target").inner_text()) >= 1
        expect(page.get_by_test_id("sv-answer-times")).not_to_contain_text("Error")
        page.screenshot(path=str(shots / "console-supervisor.png"))
    finally:
        ctx.close()
        ctx_op.close()


def test_console_follows_browser_language_and_switches(browser: Any, api_url: str) -> None:
    ctx = browser.new_context(viewport=DESKTOP, locale="zh-CN")
    try:
        page = ctx.new_page()
        page.goto(f"{api_url}/console/")
        expect(page.get_by_test_id("login-submit")).to_have_text("登录")
        assert page.evaluate("document.documentElement.lang") == "zh-CN"
        page.get_by_test_id("lang-switch").click()
        expect(page.get_by_test_id("login-submit")).to_have_text("Sign in")
        page.reload()  # the choice is remembered
        expect(page.get_by_test_id("login-submit")).to_have_text("Sign in")
    finally:
        ctx.close()
