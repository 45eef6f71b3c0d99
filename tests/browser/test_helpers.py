"""The pages' pure helpers (countdown, presence spans, status levels, trail geometry), run in Chromium."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser

CHECKS = """async () => {
  const i18n = await import('/common/i18n.js');
  const charts = await import('/common/charts.js');
  const family = await import('/family/family.js');
  const consoleJs = await import('/console/console.js');
  const off = charts.offsetMetres(31.0, 121.0, 31.001, 121.0);
  const spans = consoleJs.presenceSpans([
    {ts: '2026-01-01T00:10:00Z', room: 'kitchen'},
    {ts: '2026-01-01T00:00:00Z', room: 'bedroom'},
    {ts: '2026-01-01T01:00:00Z', room: 'bedroom', presence: false},
  ]);
  return {
    fmt: [i18n.fmtSeconds(75), i18n.fmtSeconds(-12), i18n.fmtSeconds(3725), i18n.fmtSeconds(0)],
    north: Math.round(off.n), east: Math.round(off.e),
    spans: spans.map((s) => [s.room, (s.to - s.from) / 60000]),
    levels: [family.level({state: 'ok'}), family.level({state: 'attention'}),
             family.level({state: 'emergency'}), family.level({})],
  };
}"""


def test_pure_helpers(browser: Any, api_url: str) -> None:
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(f"{api_url}/console/")
        got = page.evaluate(CHECKS)
    finally:
        ctx.close()
    assert got["fmt"] == ["1:15", "-0:12", "1:02:05", "0:00"]
    assert got["north"] == 111 and got["east"] == 0  # 0.001° of latitude ≈ 111 m
    # a sample holds until the next one; the last lasts a minute; "not present" samples are dropped
    assert got["spans"] == [["bedroom", 10], ["kitchen", 1]]
    assert got["levels"] == ["ok", "attention", "emergency", "ok"]
