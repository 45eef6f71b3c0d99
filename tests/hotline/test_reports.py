"""Report figures against a hand-computed fixture (percentiles interpolate like percentile_cont)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from hotline.reports import CallTimes, DispatchTimes, answer_times, percentile, to_csv
from tests.hotline.conftest import T0

DAY2 = T0 + timedelta(days=1)
NOW = DAY2 + timedelta(seconds=10_000)
TARGETS = {1: 60, 2: 180, 3: 900, 4: 3600}


def s(base, seconds):
    return base + timedelta(seconds=seconds)


CALLS = [
    CallTimes(1, 1, T0, s(T0, 30), "alice", s(T0, 600)),
    CallTimes(2, 1, T0, s(T0, 90), "bob", s(T0, 1200)),
    CallTimes(3, 1, T0, s(T0, 50), "alice", None),
    CallTimes(4, 2, DAY2, s(DAY2, 200), "bob", s(DAY2, 400)),
    CallTimes(5, 2, DAY2, None, None, None),  # never claimed, target long past: a miss
    CallTimes(6, 1, s(NOW, -30), None, None, None),  # still inside its target: not judged yet
]
DISPATCHES = [
    DispatchTimes("ambulance", T0, s(T0, 1200)),
    DispatchTimes("care_worker", T0, s(T0, 3000)),
    DispatchTimes("family", T0, None),
]


def test_percentile():
    assert percentile([], 0.5) is None
    assert percentile([7], 0.9) == 7
    assert percentile([30, 50, 90], 0.9) == pytest.approx(82)
    assert percentile([4, 1, 3, 2], 0.5) == pytest.approx(2.5)


def test_answer_time_figures_by_hand():
    r = answer_times(CALLS, DISPATCHES, TARGETS, NOW)
    p1, p2 = r["by_priority"]
    assert p1["priority"] == 1 and p1["calls"] == 4 and p1["claimed"] == 3 and p1["resolved"] == 2
    assert p1["claim_p50_s"] == 50 and p1["claim_p90_s"] == pytest.approx(82)
    assert p1["within_target_share"] == pytest.approx(2 / 3)
    assert p1["resolve_p50_s"] == 900 and p1["resolve_p90_s"] == pytest.approx(1140)
    assert p2["claim_p50_s"] == 200 and p2["within_target_share"] == 0.0
    alice, bob = r["by_operator"]
    assert (
        alice["operator"] == "alice"
        and alice["claim_p50_s"] == 40
        and alice["claim_p90_s"] == pytest.approx(48)
    )
    assert alice["within_target_share"] == 1.0
    assert bob["claim_p50_s"] == 145 and bob["claim_p90_s"] == pytest.approx(189)
    assert bob["within_target_share"] == 0.0
    assert r["overall"]["calls"] == 6 and r["overall"]["within_target_share"] == pytest.approx(2 / 5)
    assert r["overall"]["claim_p50_s"] == 70 and r["overall"]["claim_p90_s"] == pytest.approx(167)
    assert [d["day"] for d in r["by_day"]] == ["2026-03-01", "2026-03-02"]
    assert r["by_day"][0]["calls"] == 3 and r["by_day"][1]["within_target_share"] == 0.0
    d = r["dispatch"]
    assert d["dispatches"] == 3 and d["arrived"] == 2
    assert d["arrival_p50_s"] == 2100 and d["arrival_p90_s"] == pytest.approx(2820)
    assert d["on_site_within_45min_share"] == pytest.approx(1 / 3)


def test_csv_matches_json():
    r = answer_times(CALLS, DISPATCHES, TARGETS, NOW)
    rows = list(csv.reader(io.StringIO(to_csv(r))))
    assert rows[0][:3] == ["group", "key", "calls"]
    by_key = {(row[0], row[1]): row for row in rows[1:] if row and row[0] != "dispatch"}
    assert by_key[("priority", "1")][2] == "4" and float(by_key[("priority", "1")][6]) == pytest.approx(82)
    assert by_key[("operator", "bob")][5] == "145.0"
    assert by_key[("day", "2026-03-02")][7] == "0.0"
    assert rows[-1][:3] == ["dispatch", "3", "2"]
