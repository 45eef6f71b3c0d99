"""Turn a batch of raw MQTT messages into rows: pure apart from the registry lookup passed in."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from carewatch.contract import Accepted, Kind, Reason, Rejected, parse

DEAD_PAYLOAD_MAX = 2048  # keep enough to diagnose, not enough to fill the disk


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    resident_id: int | None
    kind: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class Raw:
    topic: str
    payload: bytes
    received_at: datetime


TELEMETRY_COLUMNS = (
    "device_id",
    "ts",
    "seq",
    "resident_id",
    "received_at",
    "hr",
    "spo2",
    "battery",
    "worn",
    "steps",
    "lat",
    "lon",
    "acc_m",
    "room",
    "motion",
    "presence",
)
EVENT_COLUMNS = (
    "device_id",
    "ts",
    "seq",
    "resident_id",
    "received_at",
    "type",
    "confidence",
    "ref_seq",
    "room",
    "lat",
    "lon",
    "category",
)
STATUS_COLUMNS = ("device_id", "received_at", "ts", "online", "fw", "battery")
DEAD_COLUMNS = ("received_at", "topic", "device_id", "reason", "detail", "payload", "payload_bytes")


@dataclass
class Rows:
    telemetry: list[tuple[object, ...]] = field(default_factory=list)
    events: list[tuple[object, ...]] = field(default_factory=list)
    statuses: list[tuple[object, ...]] = field(default_factory=list)
    dead: list[tuple[object, ...]] = field(default_factory=list)
    # index of each input message -> rows it produced, so a poison message can be isolated
    dead_reasons: dict[str, int] = field(default_factory=dict)


def dead_row(raw: Raw, reason: Reason | str, detail: str, device_id: str | None) -> tuple[object, ...]:
    return (
        raw.received_at,
        raw.topic[:256],
        device_id,
        str(reason),
        detail[:500],
        raw.payload[:DEAD_PAYLOAD_MAX],
        len(raw.payload),
    )


def device_ids(raws: Iterable[Raw]) -> set[str]:
    """Device ids named by well-formed topics (cheap pre-pass so the registry is asked once per batch)."""
    ids = set()
    for raw in raws:
        parts = raw.topic.split("/")
        if len(parts) == 4 and parts[0] == "care" and parts[1] == "v1":
            ids.add(parts[2])
    return ids


def classify(
    raws: Iterable[Raw],
    registry: Mapping[str, Device],
    *,
    max_future_s: int,
    max_age_days: int,
    on_reject: Callable[[str], None] | None = None,
) -> Rows:
    rows = Rows()
    for raw in raws:
        result = parse(
            raw.topic, raw.payload, raw.received_at, max_future_s=max_future_s, max_age_days=max_age_days
        )
        if isinstance(result, Accepted):
            device = registry.get(result.device_id)
            if device is None or not device.enabled or device.resident_id is None:
                why = (
                    "not registered" if device is None else ("disabled" if not device.enabled else "unbound")
                )
                result = Rejected(
                    Reason.UNKNOWN_DEVICE, f"device {result.device_id!r} is {why}", result.device_id
                )
        if isinstance(result, Rejected):
            rows.dead.append(dead_row(raw, result.reason, result.detail, result.device_id))
            rows.dead_reasons[result.reason] = rows.dead_reasons.get(result.reason, 0) + 1
            if on_reject:
                on_reject(result.reason)
            continue
        assert device is not None and device.resident_id is not None
        did, rid, at = result.device_id, device.resident_id, raw.received_at
        if result.kind is Kind.TELEMETRY:
            for s in result.samples:
                loc = s.location
                rows.telemetry.append(
                    (
                        did,
                        s.ts,
                        s.seq,
                        rid,
                        at,
                        s.hr,
                        s.spo2,
                        s.battery,
                        s.worn,
                        s.steps,
                        loc.lat if loc else None,
                        loc.lon if loc else None,
                        loc.acc_m if loc else None,
                        s.room,
                        s.motion,
                        s.presence,
                    )
                )
        elif result.kind is Kind.EVENT:
            e = result.event
            assert e is not None
            loc = e.location
            rows.events.append(
                (
                    did,
                    e.ts,
                    e.seq,
                    rid,
                    at,
                    e.type,
                    e.confidence,
                    e.ref_seq,
                    e.room,
                    loc.lat if loc else None,
                    loc.lon if loc else None,
                    e.category,
                )
            )
        else:
            st = result.status
            assert st is not None
            rows.statuses.append((did, at, st.ts, st.online, st.fw, st.battery))
    return rows
