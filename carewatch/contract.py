"""Device protocol v1: topics, payload models and the one pure function that turns bytes into a verdict.

Nothing here does I/O, so ingest, the alert engine, the simulator and the tests share exactly one contract
and the JSON Schemas in docs/ are generated from these same models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

PROTOCOL_VERSION = "v1"
TOPIC_ROOT = f"care/{PROTOCOL_VERSION}"
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOPIC_RE = re.compile(r"^care/v1/([A-Za-z0-9_-]{1,64})/(telemetry|event|status)$")
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_SAMPLES = 1000


class Kind(StrEnum):
    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"


class Reason(StrEnum):
    """Why a message was dead-lettered; stable strings, used as metric labels."""

    TOPIC = "bad_topic"
    OVERSIZE = "oversize"
    ENCODING = "not_utf8"
    JSON = "bad_json"
    NOT_OBJECT = "not_object"
    SCHEMA = "schema"
    RANGE = "out_of_range"
    FUTURE_TS = "future_timestamp"
    STALE_TS = "stale_timestamp"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_MISMATCH = "device_mismatch"
    DB_REJECTED = "db_rejected"


def topic(device_id: str, kind: Kind | str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/{kind}"


def cmd_topic(device_id: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/cmd"


def _to_datetime(value: Any) -> Any:
    """Accept RFC 3339 with an offset, or integer epoch milliseconds; refuse naive times."""
    if isinstance(value, bool):
        raise ValueError("ts must be an RFC 3339 string or integer epoch milliseconds")
    if isinstance(value, int):
        if not 0 <= value < 32503680000000:  # year 3000
            raise ValueError("ts epoch milliseconds out of range")
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str):
        if len(value) > 40:
            raise ValueError("ts too long")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("ts is not RFC 3339") from exc
        if parsed.tzinfo is None:
            raise ValueError("ts must carry a UTC offset (e.g. 'Z' or '+08:00')")
        return parsed.astimezone(UTC)
    raise ValueError("ts must be an RFC 3339 string or integer epoch milliseconds")


Timestamp = Annotated[
    datetime,
    BeforeValidator(_to_datetime),
    WithJsonSchema(
        {
            "description": "Event time: RFC 3339 with offset, or integer Unix epoch milliseconds.",
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer", "minimum": 0}],
        }
    ),
]
Seq = Annotated[int, Field(ge=0, le=2**53, description="Per-device message counter; may reset on reboot.")]
Room = Annotated[str, Field(min_length=1, max_length=64, description="Room name, e.g. 'bathroom'.")]
DeviceId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Optional echo of the sender's id; must match the topic.",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class Location(_Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    acc_m: float | None = Field(default=None, ge=0, le=100_000, description="Accuracy radius in metres.")


class Sample(_Strict):
    """One reading; every field besides ts and seq is optional and device-type specific."""

    ts: Timestamp
    seq: Seq
    device_id: DeviceId | None = None
    hr: int | None = Field(default=None, ge=20, le=250, description="Heart rate, beats per minute.")
    spo2: int | None = Field(default=None, ge=50, le=100, description="Blood oxygen saturation, %.")
    battery: int | None = Field(default=None, ge=0, le=100, description="Battery charge, %.")
    worn: bool | None = Field(default=None, description="Wristband on the wrist.")
    steps: int | None = Field(default=None, ge=0, le=1_000_000, description="Steps since midnight.")
    location: Location | None = None
    room: Room | None = None
    motion: bool | None = Field(default=None, description="Infrared sensor saw motion in this period.")
    presence: bool | None = Field(default=None, description="Presence sensor sees someone in the room.")


class TelemetryBatch(_Strict):
    """Store-and-forward: readings kept while offline, sent together; late and out of order is normal."""

    samples: list[Sample] = Field(min_length=1, max_length=MAX_SAMPLES)
    device_id: DeviceId | None = None


EventType = Literal["fall", "sos", "cancel", "removed", "worn", "test", "service"]
ServiceCategory = Literal[
    "meal_delivery", "cleaning", "bathing", "hospital_escort", "repairs", "shopping", "chat", "other"
]


class Event(_Strict):
    ts: Timestamp
    seq: Seq
    device_id: DeviceId | None = None
    type: EventType
    confidence: float | None = Field(default=None, ge=0, le=1, description="Detector confidence.")
    ref_seq: Seq | None = Field(default=None, description="For 'cancel': the seq of the fall/SOS it cancels.")
    location: Location | None = None
    room: Room | None = None
    category: ServiceCategory | None = Field(default=None, description="For 'service': what is asked for.")

    @model_validator(mode="after")
    def _cancel_names_event(self) -> Event:
        if self.type == "cancel" and self.ref_seq is None:
            raise ValueError("a cancel event must name the event it cancels in ref_seq")
        return self


class Status(_Strict):
    """Retained presence; ts/seq are optional because the Last Will is fixed at connect time."""

    online: bool
    device_id: DeviceId | None = None
    ts: Timestamp | None = None
    seq: Seq | None = None
    fw: str | None = Field(default=None, max_length=64, description="Firmware version.")
    battery: int | None = Field(default=None, ge=0, le=100)
    model: str | None = Field(default=None, max_length=64)


Telemetry = Sample | TelemetryBatch
_telemetry_adapter: TypeAdapter[Sample | TelemetryBatch] = TypeAdapter(Sample | TelemetryBatch)


@dataclass(frozen=True, slots=True)
class Accepted:
    device_id: str
    kind: Kind
    samples: tuple[Sample, ...] = ()
    event: Event | None = None
    status: Status | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str
    device_id: str | None = None


def _schema_reason(err: ValidationError) -> tuple[Reason, str]:
    first = err.errors(include_url=False, include_input=False)[0]
    where = ".".join(
        str(p) for p in first.get("loc", ()) if not str(p).startswith(("Sample", "TelemetryBatch"))
    )
    kind = first.get("type", "")
    msg = f"{where}: {first.get('msg', '')}" if where else str(first.get("msg", ""))
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return Reason.RANGE, msg[:300]
    return Reason.SCHEMA, msg[:300]


def parse(
    topic_name: str, payload: bytes, received_at: datetime, *, max_future_s: int = 300, max_age_days: int = 30
) -> Accepted | Rejected:
    """Classify one MQTT message. Never raises: every input yields Accepted or Rejected with a reason."""
    match = TOPIC_RE.match(topic_name) if len(topic_name) < 256 else None
    if match is None:
        return Rejected(Reason.TOPIC, f"topic {topic_name[:120]!r} is not care/v1/<device_id>/<kind>")
    device_id, kind = match.group(1), Kind(match.group(2))
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejected(Reason.OVERSIZE, f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}", device_id)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(Reason.ENCODING, "payload is not UTF-8", device_id)
    stripped = text.lstrip()
    if not stripped.startswith("{"):
        if not stripped:
            return Rejected(Reason.JSON, "empty payload", device_id)
        return Rejected(Reason.NOT_OBJECT, "payload must be a JSON object", device_id)
    try:
        if kind is Kind.TELEMETRY:
            parsed: Sample | TelemetryBatch | Event | Status = _telemetry_adapter.validate_json(text)
        elif kind is Kind.EVENT:
            parsed = Event.model_validate_json(text)
        else:
            parsed = Status.model_validate_json(text)
    except ValidationError as err:
        if any(e.get("type") == "json_invalid" for e in err.errors(include_url=False, include_input=False)):
            return Rejected(Reason.JSON, "payload is not valid JSON", device_id)
        reason, detail = _schema_reason(err)
        return Rejected(reason, detail, device_id)
    except (RecursionError, ValueError) as err:  # pathological nesting; pydantic limits depth but be sure
        return Rejected(Reason.JSON, f"payload could not be decoded: {type(err).__name__}", device_id)

    if isinstance(parsed, TelemetryBatch):
        claimed = {parsed.device_id} | {s.device_id for s in parsed.samples}
    else:
        claimed = {parsed.device_id}
    claimed.discard(None)
    if claimed and claimed != {device_id}:
        other = sorted(c for c in claimed if c is not None)[0]
        return Rejected(
            Reason.DEVICE_MISMATCH,
            f"payload names device {other!r} but was published on {device_id!r}'s topic",
            device_id,
        )

    latest = received_at + timedelta(seconds=max_future_s)
    earliest = received_at - timedelta(days=max_age_days)
    stamps: list[datetime] = []
    if isinstance(parsed, Sample):
        samples: tuple[Sample, ...] = (parsed,)
        stamps = [parsed.ts]
    elif isinstance(parsed, TelemetryBatch):
        samples = tuple(parsed.samples)
        stamps = [s.ts for s in samples]
    else:
        samples = ()
        if parsed.ts is not None:
            stamps = [parsed.ts]
    for ts in stamps:
        if ts > latest:
            return Rejected(
                Reason.FUTURE_TS,
                f"ts {ts.isoformat()} is ahead of server time by more than "
                f"{max_future_s}s (device clock wrong?)",
                device_id,
            )
        if ts < earliest:
            return Rejected(
                Reason.STALE_TS,
                f"ts {ts.isoformat()} is more than {max_age_days} days old (device clock wrong?)",
                device_id,
            )
    if kind is Kind.TELEMETRY:
        return Accepted(device_id, kind, samples=samples)
    if isinstance(parsed, Event):
        return Accepted(device_id, kind, event=parsed)
    assert isinstance(parsed, Status)
    return Accepted(device_id, kind, status=parsed)


def json_schemas() -> dict[str, dict[str, Any]]:
    """The published JSON Schemas, one per message (docs/schemas/*.json are generated from these)."""
    telemetry = _telemetry_adapter.json_schema()
    telemetry["title"] = "CareWatch v1 telemetry"
    return {
        "telemetry": telemetry,
        "event": Event.model_json_schema(),
        "status": Status.model_json_schema(),
    }
