"""Plain values shared by the rules and the engine: thresholds, registry facts, and the actions rules emit.

`Thresholds` field names are the keys of ``residents.thresholds`` (jsonb); the API validates overrides
against this model, so an unknown key or a nonsense value is refused at the door instead of being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Thresholds(BaseModel):
    """Every rule threshold with its default; a resident's jsonb overrides any subset of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # vital signs (only while the wristband is worn and talking)
    hr_high: int = Field(default=130, ge=60, le=250, description="Raise above this heart rate, bpm.")
    hr_low: int = Field(default=40, ge=20, le=100, description="Raise below this heart rate, bpm.")
    hr_hold_s: int = Field(default=60, ge=0, le=3600, description="Breach must hold this long (event time).")
    hr_clear_high: int = Field(default=120, ge=40, le=250, description="Recovered only below this.")
    hr_clear_low: int = Field(default=45, ge=20, le=150, description="Recovered only above this.")
    hr_clear_s: int = Field(default=120, ge=0, le=7200, description="Recovery must hold this long.")
    spo2_low: int = Field(default=90, ge=50, le=100, description="Raise below this SpO2, %.")
    spo2_hold_s: int = Field(default=60, ge=0, le=3600)
    spo2_clear: int = Field(default=93, ge=50, le=100, description="Recovered only at or above this.")
    spo2_clear_s: int = Field(default=120, ge=0, le=7200)
    stale_vitals_s: int = Field(
        default=600, ge=10, le=86400, description="Older readings never raise a 'current' vital alert."
    )
    # activity
    inactivity_s: int = Field(default=4 * 3600, ge=1, le=48 * 3600, description="No motion this long.")
    waking_start_h: int = Field(default=7, ge=0, le=24, description="Waking hours start, resident local.")
    waking_end_h: int = Field(default=22, ge=0, le=24, description="Waking hours end, resident local.")
    bathroom_s: int = Field(default=45 * 60, ge=1, le=24 * 3600, description="Bathroom occupied this long.")
    # geofence (radius itself is residents.geofence_m)
    geofence_hold_s: int = Field(default=60, ge=0, le=3600, description="Outside this long before raising.")
    geofence_clear_s: int = Field(default=120, ge=0, le=7200, description="Back inside this long to re-arm.")
    geofence_night_factor: float = Field(default=0.5, gt=0, le=1, description="Radius multiplier at night.")
    geofence_dementia_factor: float = Field(
        default=0.75, gt=0, le=1, description="Radius multiplier, dementia."
    )
    night_start_h: int = Field(default=22, ge=0, le=24)
    night_end_h: int = Field(default=6, ge=0, le=24)
    # devices
    removed_s: int = Field(default=3600, ge=1, le=48 * 3600, description="Wristband off this long.")
    silence_factor: float = Field(default=3.0, ge=1, le=100, description="Silent after N report intervals.")
    battery_low: int = Field(default=15, ge=0, le=100, description="Raise below this charge, %.")
    battery_clear: int = Field(default=20, ge=0, le=100, description="Cleared at or above this charge, %.")
    # events
    cancel_window_s: int = Field(
        default=60, ge=0, le=3600, description="Wearer may cancel a fall/SOS within."
    )
    late_after_s: int = Field(default=120, ge=1, le=86400, description="Events older than this are 'late'.")

    @model_validator(mode="after")
    def _hysteresis(self) -> Thresholds:
        # Recovery bands must sit inside the raise bands, or an alert would flap on the threshold.
        if not self.hr_low < self.hr_clear_low <= self.hr_clear_high < self.hr_high:
            raise ValueError("need hr_low < hr_clear_low <= hr_clear_high < hr_high")
        if not self.spo2_low < self.spo2_clear:
            raise ValueError("need spo2_low < spo2_clear")
        if not self.battery_low < self.battery_clear:
            raise ValueError("need battery_low < battery_clear")
        return self


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    kind: str  # wristband | ir_sensor | presence_sensor
    resident_id: int
    room: str | None = None
    report_interval_s: int = 60


@dataclass(frozen=True, slots=True)
class ResidentInfo:
    """What the rules need to know about a resident; loaded from residents/devices by the engine."""

    resident_id: int
    timezone: str = "Asia/Shanghai"
    home_lat: float | None = None
    home_lon: float | None = None
    geofence_m: float = 200.0
    dementia: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    devices: tuple[DeviceInfo, ...] = ()

    def device(self, device_id: str) -> DeviceInfo | None:
        for d in self.devices:
            if d.device_id == device_id:
                return d
        return None


@dataclass(frozen=True, slots=True)
class Raise:
    """Open (or, if one is open, repeat) the resident's alert for `rule`."""

    rule: str
    priority: int
    title: str
    event_at: datetime
    late: bool = False
    device_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Clear:
    """The condition recovered: technical alerts clear; emergencies only note it (an operator closes them)."""

    rule: str
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """A wearer's cancel of a fall/SOS: honoured (call drops to a courtesy call-back) or only recorded."""

    rule: str | None  # the cancelled event's rule, None when the cancel names no known event
    device_id: str
    ref_seq: int
    event_at: datetime
    honoured: bool
    reason: str


Action = Raise | Clear | Cancel
