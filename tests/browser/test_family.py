"""The family page on a phone-sized screen: their relative at a glance, and nobody else's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}


def test_family_sees_their_relative_only(
    browser: Any, world: Any, sign_in: Any, shots: Any, api_url: str
) -> None:
    mine = world.resident("Huang Lili")
    world.history(mine, hours=7 * 24, step_min=60)
    world.open_call(mine, priority=2, rule="high_hr", title="Heart rate high", target_s=180)
    stranger = world.resident("Sun Dawei")
    user = world.user("family", "daughter", "Huang Xin")
    world.link(user, mine)

    ctx = browser.new_context(
        viewport=PHONE, locale="en-US", is_mobile=True, has_touch=True, device_scale_factor=1
    )
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(page, "/family/", user)
        rel = page.get_by_test_id("relative")
        expect(rel).to_have_count(1)
        expect(rel.get_by_test_id("relative-name")).to_have_text("Huang Lili")
        # An open P2 call makes the status anything but a plain OK.
        expect(rel.get_by_test_id("relative-status")).not_to_have_attribute("data-level", "ok")
        expect(rel.locator('[data-testid="family-hr-chart"] path.series')).to_have_count(1)
        expect(rel.locator('[data-testid="family-activity"] rect.bar').first).to_be_visible()
        expect(rel.get_by_test_id("family-call")).to_contain_text("Heart rate high")
        # Nothing overflows sideways at phone width.
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(path=str(shots / "family.png"), full_page=True)

        # Another resident is out of reach: the page shows nothing of them and the API answers 404.
        page.goto(f"{api_url}/family/#resident={stranger}")
        expect(page.get_by_test_id("not-available")).to_be_visible()
        expect(page.locator("body")).not_to_contain_text("Sun Dawei")
        token = page.evaluate("JSON.parse(sessionStorage.getItem('carewatch.session')).access_token")
        for path in ("", "/status", "/vitals", "/calls"):
            res = page.request.get(
                f"{api_url}/api/v1/residents/{stranger}{path}", headers={"Authorization": f"Bearer {token}"}
            )
            assert res.status == 404, (path, res.status)
        # The queue, asked by a family user, holds their relative's calls and nobody else's.
        auth = {"Authorization": f"Bearer {token}"}
        res = page.request.get(f"{api_url}/api/v1/calls?resident_id={stranger}", headers=auth)
        assert res.status == 404
        res = page.request.get(f"{api_url}/api/v1/calls", headers=auth)
        assert res.ok and {c["resident_id"] for c in res.json()} == {mine}
        assert errors == []
    finally:
        ctx.close()


def family_phone(signed_in: Any, user: str) -> Any:
    """A phone-sized page signed in to /family/ as `user`."""
    return signed_in(user, "/family/", viewport=PHONE, is_mobile=True, has_touch=True)


def operator(world: Any, name: str, display: str) -> Any:
    """A hotline operator, as the hotline's service functions take one."""
    from hotline.service import Actor

    username = world.user("operator", name, display)
    with world.connect() as c:
        row = c.execute("SELECT id FROM users WHERE username = %s", (username,)).fetchone()
    return Actor(int(row["id"]), username, "operator")


def opened(page: Any, call_id: int, status: str) -> Any:
    """The call's item on the family page, in `status`, opened on its timeline."""
    call = page.locator(f'[data-testid="family-call"][data-call-id="{call_id}"]')
    expect(call).to_have_attribute("data-status", status)
    call.locator("summary").click()
    return call


def test_family_reads_what_the_hotline_did(world: Any, signed_in: Any, shots: Any) -> None:
    """A resolved fall opens on its rescue timeline: the steps in order with their times, no operator
    names and no internal notes; it stays open through the page's periodic refresh."""
    from hotline import service as hotline

    mine = world.resident("Zhao Min")
    user = world.user("family", "son", "Zhao Lei")
    world.link(user, mine)
    op = operator(world, "op", "Operator Wu")
    cid = world.open_call(mine, priority=1, rule="fall", title="Fall detected", age_s=900)
    began = datetime.now(UTC) - timedelta(seconds=900)
    with world.connect() as c:
        hotline.claim(c, cid, op, began + timedelta(seconds=20))
        hotline.add_note(c, cid, op, began + timedelta(seconds=30), "key safe 4711", internal=True)
        sent = hotline.dispatch(
            c, cid, op, began + timedelta(seconds=60), responder_kind="ambulance", responder_name="Unit 12"
        )
        hotline.arrived(c, cid, sent, op, began + timedelta(seconds=600), handover="hospital")
        hotline.resolve(c, cid, op, began + timedelta(seconds=700), outcome="genuine_emergency", note="ok")

    with family_phone(signed_in, user) as page:
        call = opened(page, cid, "resolved")
        steps = call.get_by_test_id("timeline-step")
        kinds = ["alarm", "opened", "claimed", "dispatched", "arrived", "handover", "resolved"]
        expect(steps).to_have_count(len(kinds))
        assert [steps.nth(i).get_attribute("data-kind") for i in range(len(kinds))] == kinds
        expect(call.locator('[data-kind="dispatched"]')).to_contain_text("Help sent (ambulance)")
        expect(call.locator('[data-kind="arrived"]')).to_contain_text("+10:00")
        expect(call.locator('[data-kind="handover"]')).to_contain_text("Handed over to hospital")
        for secret in ("Operator Wu", op.username, "Unit 12", "key safe"):
            expect(call).not_to_contain_text(secret)
        page.screenshot(path=str(shots / "family-timeline.png"), full_page=True)

        # The page re-renders every minute (and on navigation): what the reader opened stays open.
        page.evaluate("window.dispatchEvent(new HashChangeEvent('hashchange'))")
        expect(call).to_have_attribute("open", "")
        expect(call.get_by_test_id("timeline-step")).to_have_count(len(kinds))


def test_family_page_follows_the_call_live(world: Any, signed_in: Any) -> None:
    """While the relative's call is worked, the open timeline gains each step within seconds (the live
    feed), not at the page's next minutely refresh."""
    from hotline import service as hotline

    mine = world.resident("Qian Fang")
    user = world.user("family", "niece", "Qian Yu")
    world.link(user, mine)
    op = operator(world, "op2", "Operator Lin")
    cid = world.open_call(mine, priority=1, rule="sos", title="SOS button pressed")
    with family_phone(signed_in, user) as page:
        call = opened(page, cid, "queued")
        expect(call.get_by_test_id("timeline-step")).to_have_count(2)  # alarm, call opened
        page.wait_for_timeout(500)  # the live feed is connected by now
        with world.connect() as c:
            now = datetime.now(UTC)
            hotline.claim(c, cid, op, now)
            hotline.dispatch(c, cid, op, now, responder_kind="care_worker", responder_name="Team 3")
        call = page.locator(f'[data-testid="family-call"][data-call-id="{cid}"]')
        expect(call.locator('[data-kind="dispatched"]')).to_contain_text(
            "Help sent (care worker)", timeout=5_000
        )
        expect(call).not_to_have_attribute("data-status", "queued")
