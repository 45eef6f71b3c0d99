"""The pure rules behind the status card and chart resolution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.deps import Principal
from api.history import decode_cursor, encode_cursor
from api.live import public_event, visible
from api.status_logic import choose_bucket, distance_m, overall, whereabouts

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOME = (22.28, 114.17)


def test_bucket_follows_the_range() -> None:
    assert choose_bucket(NOW - timedelta(hours=2), NOW) == "raw"
    assert choose_bucket(NOW - timedelta(hours=2, seconds=1), NOW) == "1m"
    assert choose_bucket(NOW - timedelta(days=2), NOW) == "1m"
    assert choose_bucket(NOW - timedelta(days=2, seconds=1), NOW) == "1h"


def test_distance() -> None:
    assert distance_m(*HOME, *HOME) == 0
    assert 1100 < distance_m(22.28, 114.17, 22.29, 114.17) < 1125  # 0.01° of latitude ≈ 1.11 km


def test_whereabouts_prefers_the_fresher_signal() -> None:
    near = (NOW - timedelta(minutes=1), 22.2801, 114.17)
    far = (NOW - timedelta(minutes=1), 22.30, 114.17)
    room = (NOW - timedelta(minutes=5), "kitchen")
    assert whereabouts(home=HOME, geofence_m=200, fix=near, room=None, now=NOW).place == "home"
    assert whereabouts(home=HOME, geofence_m=200, fix=far, room=room, now=NOW).place == "away"
    newer_room = (NOW, "kitchen")
    w = whereabouts(home=HOME, geofence_m=200, fix=far, room=newer_room, now=NOW)
    assert (w.place, w.how, w.room) == ("home", "room", "kitchen")
    old = (NOW - timedelta(hours=2), 22.30, 114.17)
    assert whereabouts(home=HOME, geofence_m=200, fix=old, room=None, now=NOW).place == "unknown"
    assert whereabouts(home=None, geofence_m=200, fix=far, room=None, now=NOW).place == "unknown"


def test_overall_state() -> None:
    base = {
        "open_alerts": 0,
        "last_seen": NOW,
        "now": NOW,
        "stale_after": timedelta(minutes=3),
        "worn": True,
        "battery": 90,
    }
    assert overall(open_call_priorities=[], **base) == ("ok", [])  # type: ignore[arg-type]
    assert overall(open_call_priorities=[1], **base)[0] == "emergency"  # type: ignore[arg-type]
    assert overall(open_call_priorities=[3], **base)[0] == "attention"  # type: ignore[arg-type]
    stale = {**base, "last_seen": NOW - timedelta(minutes=10)}
    assert overall(open_call_priorities=[], **stale) == ("attention", ["no recent readings"])  # type: ignore[arg-type]
    low = {**base, "battery": 10, "worn": False}
    assert overall(open_call_priorities=[], **low)[1] == ["wristband not worn", "battery low"]  # type: ignore[arg-type]


def test_cursor_round_trip() -> None:
    values = [NOW, "wb-1", 42]
    assert decode_cursor(encode_cursor(values), (datetime, str, int)) == values


def test_family_sees_public_fields_of_their_residents_only() -> None:
    row = {
        "id": 7,
        "kind": "call.updated",
        "at": NOW,
        "call_id": 3,
        "resident_id": 5,
        "payload": {"status": "claimed", "note": "key under mat", "operator": "li", "priority": 2},
    }
    fam = Principal(1, "f", "family", frozenset({5}))
    assert public_event(row, family=True)["payload"] == {"status": "claimed", "priority": 2}
    assert public_event(row, family=False)["payload"]["note"] == "key under mat"
    assert visible(row, fam) and not visible({**row, "resident_id": 6}, fam)
    assert not visible({**row, "resident_id": None}, fam)
    assert visible(row, Principal(2, "o", "operator", None))
