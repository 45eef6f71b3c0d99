"""The welfare pages in headless Chromium against the real API: from the console's navigation to a
completed work order, a recorded visit, a rescue timeline, and the supervisor's figures and CSV."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from hotline import service as hotline
from hotline.service import Actor

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1440, "height": 900}


def _request_row(page: Any, request_id: int) -> Any:
    return page.locator(f'[data-testid="request-row"][data-request-id="{request_id}"]')


def test_operator_runs_a_request_a_visit_and_reads_a_timeline(browser: Any, world: Any, sign_in: Any) -> None:
    op = world.user("operator", "wf_op")
    rid = world.resident(f"Gu Lan {world.uid}", dementia=True)
    with world.connect() as c:
        org = f"Meals on Wheels {world.uid}"
        c.execute("INSERT INTO provider_orgs (name, district) VALUES (%s, 'Xuhui')", (org,))
        op_id = c.execute("SELECT id FROM users WHERE username = %s", (op,)).fetchone()["id"]  # type: ignore[index]
    # A rescued fall for the timeline, handled through the real hotline actions.
    call_id = world.open_call(rid, age_s=900)
    actor = Actor(int(op_id), op, "operator")
    t0 = datetime.now(UTC) - timedelta(seconds=880)
    with world.connect() as c:
        hotline.claim(c, call_id, actor, t0)
        hotline.add_note(c, call_id, actor, t0 + timedelta(seconds=5), "door code given", internal=True)
        sent = hotline.dispatch(c, call_id, actor, t0 + timedelta(seconds=30), responder_kind="ambulance")
        hotline.arrived(c, call_id, sent, actor, t0 + timedelta(seconds=600), handover="hospital")
        hotline.resolve(
            c, call_id, actor, t0 + timedelta(seconds=700), outcome="genuine_emergency", note="ok"
        )

    ctx = browser.new_context(viewport=DESKTOP, locale="en-US", accept_downloads=True)
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(page, "/console/", op)
        page.get_by_test_id("nav-welfare").click()
        expect(page).to_have_url(re.compile(r"/welfare/$"))
        expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=10_000)
        expect(page.get_by_test_id("tab-supervision")).to_be_hidden()  # operators do not supervise

        # A phone request: open, assign, accept, name a worker, check in, check out.
        page.get_by_test_id("req-resident").select_option(str(rid))
        page.get_by_test_id("req-category").select_option("meal_delivery")
        page.get_by_test_id("req-notes").fill("low salt")
        page.get_by_test_id("req-submit").click()
        expect(page.get_by_test_id("flash")).to_contain_text("opened")
        request_id = int(re.findall(r"Request (\d+) opened", page.get_by_test_id("flash").inner_text())[0])
        row = _request_row(page, request_id)
        expect(row.get_by_test_id("request-status")).to_have_text("open")
        row.get_by_test_id("assign-org").select_option(label=org)
        row.get_by_test_id("assign").click()
        expect(row.get_by_test_id("order-status")).to_have_text("assigned")
        row.get_by_test_id("act-accept").click()
        expect(row.get_by_test_id("order-status")).to_have_text("accepted")
        row.get_by_test_id("worker-name").fill("Wang Fang")
        row.get_by_test_id("act-assign_worker").click()
        expect(row.get_by_test_id("order-status")).to_have_text("worker assigned")
        expect(row).to_contain_text("Wang Fang")
        row.get_by_test_id("act-check_in").click()
        expect(row.get_by_test_id("order-status")).to_have_text("checked in")
        expect(row.get_by_test_id("act-cancel")).to_have_count(0)  # not allowed once on site
        row.get_by_test_id("act-check_out").click()
        expect(row.get_by_test_id("request-status")).to_have_text("done")
        with world.connect() as c:
            got = c.execute(
                "SELECT status, checked_in_at, checked_out_at FROM work_orders WHERE request_id = %s",
                (request_id,),
            ).fetchone()
        assert got is not None and got["status"] == "completed"
        assert got["checked_in_at"] <= got["checked_out_at"]

        # Visits: the dementia resident is due weekly; record the visit.
        page.get_by_test_id("tab-visits").click()
        page.get_by_test_id("schedule").click()
        expect(page.get_by_test_id("schedule-result")).to_contain_text("scheduled")
        visit = page.locator(f'[data-testid="visit-row"][data-resident-id="{rid}"]')
        expect(visit).to_have_count(1)
        expect(visit).to_contain_text("weekly")
        visit.get_by_test_id("visit-worker").fill("Li Na")
        visit.get_by_test_id("visit-findings").fill("well; fridge stocked")
        visit.get_by_test_id("visit-record").click()
        expect(visit).to_have_count(0)
        with world.connect() as c:
            done = c.execute(
                "SELECT worker, findings FROM welfare_visits WHERE resident_id = %s AND status = 'done'",
                (rid,),
            ).fetchall()
        assert [(v["worker"], v["findings"]) for v in done] == [("Li Na", "well; fridge stocked")]

        # The rescue timeline of the fall, from alarm to hand-over.
        page.get_by_test_id("tab-timeline").click()
        page.get_by_test_id("timeline-call").fill(str(call_id))
        page.get_by_test_id("timeline-show").click()
        steps = page.get_by_test_id("timeline-step")
        expect(steps).to_have_count(8)
        kinds = [s.get_attribute("data-kind") for s in steps.all()]
        assert kinds == [
            "alarm",
            "opened",
            "claimed",
            "note",
            "dispatched",
            "arrived",
            "handover",
            "resolved",
        ]
        expect(page.get_by_test_id("timeline-summary")).to_contain_text("hospital")
        assert errors == []
    finally:
        ctx.close()


def test_supervisor_adds_a_provider_and_exports_figures(world: Any, signed_in: Any) -> None:
    sup = world.user("supervisor", "wf_sup")
    with signed_in(sup, "/welfare/", viewport=DESKTOP, accept_downloads=True) as page:
        expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=10_000)
        page.get_by_test_id("provider-name").fill(f"Clean Homes {world.uid}")
        page.get_by_test_id("provider-add").click()
        expect(page.get_by_test_id("flash")).to_contain_text(f"Clean Homes {world.uid} added")

        page.get_by_test_id("tab-supervision").click()
        expect(page.get_by_test_id("sup-daily")).to_be_visible()
        expect(page.get_by_test_id("sup-providers")).to_be_visible()
        expect(page.get_by_test_id("sup-overdue")).to_contain_text("overdue")
        with page.expect_download() as info:
            page.get_by_test_id("csv-daily").click()
        download = info.value
        assert download.suggested_filename == "welfare-daily.csv"
        text = Path(download.path()).read_text(encoding="utf-8")
        assert text.splitlines()[0] == "day,district,calls,calls_in_target,service_orders,visits"


def test_welfare_pages_speak_chinese_to_a_chinese_browser(world: Any, signed_in: Any) -> None:
    """A 12349 centre's staff read the welfare pages in Chinese: static labels, API words and messages."""
    sup = world.user("supervisor", "wf_zh")
    rid = world.resident(f"Lu Ping {world.uid}")
    with signed_in(sup, "/welfare/", viewport=DESKTOP, locale="zh-CN") as page:
        expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=10_000)
        expect(page.get_by_test_id("tab-requests")).to_have_text("服务申请")
        expect(page.get_by_test_id("req-submit")).to_have_text("提交申请")
        page.get_by_test_id("req-resident").select_option(str(rid))
        page.get_by_test_id("req-category").select_option("meal_delivery")
        expect(page.get_by_test_id("req-category")).to_contain_text("送餐")
        page.get_by_test_id("req-submit").click()
        expect(page.get_by_test_id("flash")).to_contain_text("已提交")
        request_id = int(re.findall(r"申请 (\d+) 已提交", page.get_by_test_id("flash").inner_text())[0])
        row = _request_row(page, request_id)
        expect(row.get_by_test_id("request-status")).to_have_text("待派单")
        expect(row.get_by_test_id("assign")).to_have_text("派单")

        page.get_by_test_id("tab-supervision").click()
        expect(page.get_by_test_id("sup-overdue")).to_contain_text("逾期")
        expect(page.get_by_test_id("sup-daily").locator("th").first).to_have_text("日期")
        body = page.locator("body").inner_text()
        for english in ("Service requests", "Open request", "Supervision", "Per day and district"):
            assert english not in body, english
