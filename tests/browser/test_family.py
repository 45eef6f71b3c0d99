"""The family page on a phone-sized screen: their relative at a glance, and nobody else's."""

from __future__ import annotations

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
