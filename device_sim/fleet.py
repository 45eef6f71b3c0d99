"""Simulated residents and their devices: made from a seed, saved as JSON, enrolled in the registry.

A fleet is plain data so that the pure routine generator, the publisher processes and the tests all see the
same residents; enrolment is the only part that touches the database or the API.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from carewatch.broker import hash_password

ROOMS = ("bedroom", "kitchen", "bathroom", "living_room")
ROOM_CODES = {"bedroom": "bed", "kitchen": "kit", "bathroom": "bath", "living_room": "liv"}
WRISTBAND_INTERVAL_S = 60
SENSOR_INTERVAL_S = 300
FIRMWARE = {"wristband": "wb-2.4.1", "ir_sensor": "ir-1.9.0", "presence_sensor": "pr-1.2.3"}

_SURNAMES = [
    "Wang",
    "Li",
    "Zhang",
    "Liu",
    "Chen",
    "Yang",
    "Huang",
    "Zhao",
    "Wu",
    "Zhou",
    "Xu",
    "Sun",
    "Ma",
    "Zhu",
    "Hu",
    "Guo",
    "He",
    "Lin",
    "Gao",
    "Luo",
]
_GIVEN = [
    "Guiying",
    "Xiuying",
    "Yulan",
    "Shufen",
    "Jianguo",
    "Guoqiang",
    "Weimin",
    "Lihua",
    "Deming",
    "Fengying",
    "Zhiqiang",
    "Huilan",
]
_DISTRICTS = ("Gulou", "Xuanwu", "Qinhuai", "Jianye", "Qixia", "Yuhuatai")
# Most residents live in one city; a few elsewhere so that per-resident local time is exercised.
_ZONES = (
    ("Asia/Shanghai", 32.06, 118.79),
    ("Asia/Shanghai", 32.06, 118.79),
    ("Asia/Shanghai", 32.06, 118.79),
    ("Asia/Shanghai", 32.06, 118.79),
    ("Asia/Shanghai", 32.06, 118.79),
    ("Asia/Shanghai", 32.06, 118.79),
    ("Asia/Shanghai", 32.06, 118.79),
    ("Asia/Hong_Kong", 22.32, 114.17),
    ("Europe/London", 51.51, -0.13),
    ("America/Vancouver", 49.28, -123.12),
)


@dataclass(frozen=True)
class Device:
    id: str
    kind: str  # wristband | ir_sensor | presence_sensor
    room: str | None = None
    report_interval_s: int = WRISTBAND_INTERVAL_S
    fw: str = FIRMWARE["wristband"]


@dataclass(frozen=True)
class Resident:
    """One person; ``key`` is stable across runs, ``db_id`` is filled in by enrolment."""

    key: str
    name: str
    timezone: str
    home_lat: float
    home_lon: float
    geofence_m: float = 200.0
    lives_alone: bool = True
    dementia: bool = False
    goes_out: bool = True
    date_of_birth: str = "1940-01-01"
    district: str = ""
    devices: tuple[Device, ...] = ()
    db_id: int | None = None

    @property
    def wristband(self) -> Device:
        return next(d for d in self.devices if d.kind == "wristband")

    def sensor(self, room: str) -> Device | None:
        return next((d for d in self.devices if d.kind != "wristband" and d.room == room), None)


@dataclass
class Fleet:
    seed: int
    residents: list[Resident]
    prefix: str = "sim"
    # device id -> MQTT secret; only present after enrolment (the fleet file is then 0600)
    secrets: dict[str, str] = field(default_factory=dict)

    def devices(self) -> list[tuple[Resident, Device]]:
        return [(r, d) for r in self.residents for d in r.devices]

    def resident(self, ref: str | int) -> Resident:
        """Look a resident up by key ('r003'), by index in the fleet, or by database id ('#17')."""
        if isinstance(ref, int):
            return self.residents[ref]
        if ref.startswith("#"):
            return next(r for r in self.residents if r.db_id == int(ref[1:]))
        if ref.isdigit():
            return self.residents[int(ref)]
        return next(r for r in self.residents if r.key == ref)

    def device(self, device_id: str) -> tuple[Resident, Device]:
        return next((r, d) for r, d in self.devices() if d.id == device_id)


def make_fleet(n: int, seed: int, *, prefix: str = "sim") -> Fleet:
    """``n`` residents with a wristband and one infrared sensor per room (presence sensor in the bathroom)."""
    rng = random.Random(f"fleet:{seed}")
    residents = []
    for i in range(n):
        key = f"r{i:03d}"
        zone, lat, lon = _ZONES[i % len(_ZONES)] if i < 7 else rng.choice(_ZONES)
        devices = [
            Device(f"{prefix}-{key}-wb", "wristband", None, WRISTBAND_INTERVAL_S, FIRMWARE["wristband"])
        ]
        for room in ROOMS:
            kind = "presence_sensor" if room == "bathroom" else "ir_sensor"
            devices.append(
                Device(f"{prefix}-{key}-{ROOM_CODES[room]}", kind, room, SENSOR_INTERVAL_S, FIRMWARE[kind])
            )
        residents.append(
            Resident(
                key=key,
                name=f"{rng.choice(_SURNAMES)} {rng.choice(_GIVEN)}",
                timezone=zone,
                home_lat=round(lat + rng.uniform(-0.05, 0.05), 6),
                home_lon=round(lon + rng.uniform(-0.05, 0.05), 6),
                geofence_m=200.0,
                lives_alone=rng.random() < 0.7,
                dementia=rng.random() < 0.2,
                goes_out=rng.random() < 0.8,
                date_of_birth=f"{rng.randint(1928, 1952)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                district=rng.choice(_DISTRICTS),
                devices=tuple(devices),
            )
        )
    return Fleet(seed=seed, residents=residents, prefix=prefix)


def fleet_to_dict(fleet: Fleet) -> dict[str, Any]:
    return {
        "seed": fleet.seed,
        "prefix": fleet.prefix,
        "residents": [asdict(r) for r in fleet.residents],
        "secrets": dict(fleet.secrets),
    }


def fleet_from_dict(data: dict[str, Any]) -> Fleet:
    residents = []
    for raw in data["residents"]:
        devices = tuple(Device(**d) for d in raw.get("devices", ()))
        residents.append(Resident(**{**raw, "devices": devices}))
    return Fleet(
        seed=int(data["seed"]),
        residents=residents,
        prefix=str(data.get("prefix", "sim")),
        secrets=dict(data.get("secrets", {})),
    )


def save_fleet(fleet: Fleet, path: Path) -> None:
    """Write the fleet; readable by the owner only, because it holds the devices' MQTT secrets."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(fleet_to_dict(fleet), fh, indent=1)
    os.replace(tmp, path)


def load_fleet(path: Path) -> Fleet:
    return fleet_from_dict(json.loads(path.read_text()))


def new_secret() -> str:
    return secrets.token_urlsafe(32)


_INSERT_RESIDENT = """
INSERT INTO residents (name, date_of_birth, district, timezone, home_lat, home_lon, geofence_m,
                       lives_alone, dementia, care_notes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)
RETURNING id
"""
_INSERT_DEVICE = """
INSERT INTO devices (id, kind, resident_id, room, report_interval_s, secret_hash)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, resident_id = EXCLUDED.resident_id,
    room = EXCLUDED.room, report_interval_s = EXCLUDED.report_interval_s, secret_hash = EXCLUDED.secret_hash,
    enabled = true
"""


def enrol_via_db(conn: Any, fleet: Fleet) -> dict[str, str]:
    """Insert residents and devices straight into the registry (tests, demo); returns device id -> secret.

    Secrets are generated here, stored only as mosquitto hashes, and also kept on ``fleet`` so the
    publisher can connect; ``fleet`` residents get their database ids.
    """
    issued: dict[str, str] = {}
    enrolled = []
    with conn.transaction():
        for res in fleet.residents:
            notes = json.dumps({"simulated": True, "key": res.key})
            row = conn.execute(
                _INSERT_RESIDENT,
                (
                    res.name,
                    res.date_of_birth,
                    res.district,
                    res.timezone,
                    res.home_lat,
                    res.home_lon,
                    res.geofence_m,
                    res.lives_alone,
                    res.dementia,
                    notes,
                ),
            ).fetchone()
            rid = int(row["id"] if isinstance(row, dict) else row[0])
            for dev in res.devices:
                secret = new_secret()
                conn.execute(
                    _INSERT_DEVICE,
                    (dev.id, dev.kind, rid, dev.room, dev.report_interval_s, hash_password(secret)),
                )
                issued[dev.id] = secret
            enrolled.append(replace(res, db_id=rid))
    fleet.residents = enrolled
    fleet.secrets.update(issued)
    return issued


def _post(url: str, token: str, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def enrol_via_api(base_url: str, token: str, fleet: Fleet) -> dict[str, str]:
    """Enrol through the API (POST /api/v1/residents, POST /api/v1/devices; an admin's bearer token), which
    also updates the broker's password file; the secret is returned once by the API and kept on ``fleet``."""
    base = base_url.rstrip("/")
    issued: dict[str, str] = {}
    enrolled = []
    for res in fleet.residents:
        created = _post(
            f"{base}/api/v1/residents",
            token,
            {
                "name": res.name,
                "date_of_birth": res.date_of_birth,
                "district": res.district,
                "timezone": res.timezone,
                "home_lat": res.home_lat,
                "home_lon": res.home_lon,
                "geofence_m": res.geofence_m,
                "lives_alone": res.lives_alone,
                "dementia": res.dementia,
            },
        )
        rid = int(created["id"])
        for dev in res.devices:
            out = _post(
                f"{base}/api/v1/devices",
                token,
                {
                    "id": dev.id,
                    "kind": dev.kind,
                    "resident_id": rid,
                    "room": dev.room,
                    "report_interval_s": dev.report_interval_s,
                },
            )
            # the API answers DeviceCredentials: the secret is its mqtt_password, shown this once
            issued[dev.id] = str(out.get("mqtt_password") or out["secret"])
        enrolled.append(replace(res, db_id=rid))
    fleet.residents = enrolled
    fleet.secrets.update(issued)
    return issued
