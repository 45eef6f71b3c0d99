"""Protocol v1 validation as plain values: each bad input gets its own reason, good input passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from carewatch.contract import Accepted, Kind, Reason, Rejected, parse

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MS = int(NOW.timestamp() * 1000)


def test_single_sample_with_epoch_ms() -> None:
    result = parse("care/v1/wb-1/telemetry", b'{"ts": %d, "seq": 7, "hr": 72, "worn": true}' % MS, NOW)
    assert isinstance(result, Accepted) and result.kind is Kind.TELEMETRY
    assert result.samples[0].hr == 72 and result.samples[0].ts == NOW


def test_store_and_forward_batch() -> None:
    body = (
        b'{"samples": [{"ts": "2026-12-03T19:00:00+08:00", "seq": 1, "spo2": 97}, {"ts": %d, "seq": 2}]}' % MS
    )
    result = parse("care/v1/wb-1/telemetry", body, NOW)
    assert isinstance(result, Accepted) and len(result.samples) == 2
    assert result.samples[0].ts == datetime(2026, 12, 3, 11, 0, tzinfo=UTC)


def test_status_last_will_without_ts() -> None:
    result = parse("care/v1/wb-1/status", b'{"online": false}', NOW)
    assert isinstance(result, Accepted) and result.status is not None and result.status.online is False


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("care/v1/wb 1/telemetry", b"{}", Reason.TOPIC),
        ("care/v2/wb-1/telemetry", b"{}", Reason.TOPIC),
        ("care/v1/wb-1/telemetry", b"{" + b" " * 17000 + b"}", Reason.OVERSIZE),
        ("care/v1/wb-1/telemetry", b"\xff\xfe", Reason.ENCODING),
        ("care/v1/wb-1/telemetry", b"{nope", Reason.JSON),
        ("care/v1/wb-1/telemetry", b"[1,2]", Reason.NOT_OBJECT),
        ("care/v1/wb-1/telemetry", b'{"ts": %d, "seq": 1, "hr": 900}' % MS, Reason.RANGE),
        ("care/v1/wb-1/telemetry", b'{"ts": %d, "seq": -1}' % MS, Reason.RANGE),
        ("care/v1/wb-1/telemetry", b'{"ts": %d, "seq": 1, "hr": "fast"}' % MS, Reason.SCHEMA),
        ("care/v1/wb-1/telemetry", b'{"ts": "2026-12-03T12:00:00", "seq": 1}', Reason.SCHEMA),
        ("care/v1/wb-1/event", b'{"ts": %d, "seq": 1, "type": "explode"}' % MS, Reason.SCHEMA),
        ("care/v1/wb-1/event", b'{"ts": %d, "seq": 1, "type": "cancel"}' % MS, Reason.SCHEMA),
        ("care/v1/wb-1/event", b'{"ts": %d, "seq": 1, "type": "fall"}' % (MS + 3_600_000), Reason.FUTURE_TS),
        ("care/v1/wb-1/event", b'{"ts": "2016-12-03T12:00:00Z", "seq": 1, "type": "fall"}', Reason.STALE_TS),
    ],
)
def test_rejections_name_the_reason(topic: str, payload: bytes, reason: Reason) -> None:
    result = parse(topic, payload, NOW)
    assert isinstance(result, Rejected), result
    assert result.reason is reason, result.detail
    assert result.detail


def test_two_hour_late_fall_is_accepted() -> None:
    late = NOW - timedelta(hours=2)
    body = b'{"ts": "%s", "seq": 3, "type": "fall", "confidence": 0.93}' % late.isoformat().encode()
    result = parse("care/v1/wb-1/event", body, NOW)
    assert isinstance(result, Accepted) and result.event is not None and result.event.ts == late


def test_payload_naming_another_device_is_refused() -> None:
    body = b'{"ts": %d, "seq": 1, "type": "sos", "device_id": "wb-2"}' % MS
    result = parse("care/v1/wb-1/event", body, NOW)
    assert isinstance(result, Rejected) and result.reason is Reason.DEVICE_MISMATCH
    same = parse("care/v1/wb-1/event", body.replace(b"wb-2", b"wb-1"), NOW)
    assert isinstance(same, Accepted)
