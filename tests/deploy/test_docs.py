"""docs/protocol.md and docs/schemas/ are the public device contract: they must say what the code does.

Every ```json example in protocol.md is parsed by carewatch.contract.parse (the server's one validator)
on the topic named in the line before it, and checked against the published JSON Schema; the committed
schemas must equal the ones generated from the models.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jsonschema_rs
import pytest

from carewatch import contract

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "docs" / "protocol.md"
SCHEMAS = ROOT / "docs" / "schemas"
# The receive time the document states for its examples (section 13).
RECEIVED_AT = datetime(2026, 3, 1, 0, 5, tzinfo=UTC)

_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)
_TOPIC = re.compile(r"`(care/v1/[A-Za-z0-9_-]+/(telemetry|event|status|cmd))`")
_REJECTED = re.compile(r"rejected `([a-z_]+)`")


@dataclass(frozen=True)
class Example:
    line: int
    topic: str
    kind: str
    payload: dict[str, typing.Any]
    raw: bytes
    rejected: str | None


def _examples() -> list[Example]:
    text = PROTOCOL.read_text("utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text[: match.start()].count("\n") + 1
        topic = _TOPIC.search(before)
        assert topic, f"protocol.md line {line}: the line before a json block must name its topic: {before!r}"
        raw = match.group(1).encode()
        rejected = _REJECTED.search(before)
        found.append(
            Example(
                line,
                topic.group(1),
                topic.group(2),
                json.loads(raw),
                raw,
                rejected.group(1) if rejected else None,
            )
        )
    return found


EXAMPLES = _examples()
DEVICE_EXAMPLES = [e for e in EXAMPLES if e.kind != "cmd"]


def _id(example: Example) -> str:
    return f"L{example.line}-{example.kind}{'-' + example.rejected if example.rejected else ''}"


def test_committed_schemas_equal_generated() -> None:
    generated = contract.json_schemas()
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(f"{k}.json" for k in generated)
    for kind, schema in generated.items():
        committed = json.loads((SCHEMAS / f"{kind}.json").read_text("utf-8"))
        assert committed == schema, f"docs/schemas/{kind}.json is stale: run python scripts/gen_schemas.py"


def test_gen_schemas_check_mode_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_schemas.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_document_has_an_example_of_every_message() -> None:
    accepted = [e for e in DEVICE_EXAMPLES if e.rejected is None]
    assert {e.kind for e in accepted} == {"telemetry", "event", "status"}
    event_types = {e.payload["type"] for e in accepted if e.kind == "event"}
    assert event_types == set(typing.get_args(contract.EventType))
    assert any("samples" in e.payload for e in accepted), "no store-and-forward batch example"
    assert any(isinstance(e.payload.get("ts"), int) for e in accepted), "no epoch-milliseconds example"
    assert any(e.kind == "cmd" for e in EXAMPLES)


@pytest.mark.parametrize("example", DEVICE_EXAMPLES, ids=_id)
def test_example_gets_the_documented_verdict(example: Example) -> None:
    verdict = contract.parse(example.topic, example.raw, RECEIVED_AT)
    if example.rejected is None:
        assert isinstance(verdict, contract.Accepted), f"line {example.line}: {verdict}"
        assert verdict.kind == example.kind
    else:
        assert isinstance(verdict, contract.Rejected), f"line {example.line} was accepted"
        assert verdict.reason == contract.Reason(example.rejected), verdict.detail


def _schema_errors(example: Example) -> list[str]:
    schema = json.loads((SCHEMAS / f"{example.kind}.json").read_text("utf-8"))
    validator = jsonschema_rs.validator_for(schema, validate_formats=True)
    return [str(err) for err in validator.iter_errors(example.payload)]


def _has_int_ts(payload: dict[str, typing.Any]) -> bool:
    samples = payload.get("samples", [payload])
    return any(isinstance(s.get("ts"), int) for s in samples)


STRUCTURAL = {"schema", "out_of_range"}  # what a JSON Schema can see; clocks and ids are server rules


@pytest.mark.parametrize("example", [e for e in DEVICE_EXAMPLES if not _has_int_ts(e.payload)], ids=_id)
def test_example_against_published_schema(example: Example) -> None:
    errors = _schema_errors(example)
    if example.payload.get("type") == "cancel" and "ref_seq" not in example.payload:
        # cross-field rule, documented in protocol.md section 12 as checked by the server only
        assert not errors
    elif example.rejected in STRUCTURAL:
        assert errors, f"line {example.line}: the schema accepts what the server refuses"
    else:
        assert not errors, f"line {example.line}: {errors}"


def test_epoch_millisecond_examples_against_published_schema() -> None:
    examples = [e for e in DEVICE_EXAMPLES if e.rejected is None and _has_int_ts(e.payload)]
    assert examples
    assert all(not _schema_errors(e) for e in examples)


def test_cmd_examples_are_help_coming() -> None:
    for example in (e for e in EXAMPLES if e.kind == "cmd"):
        assert example.payload["type"] == "help_coming"
        assert isinstance(example.payload["call_id"], int)
        assert datetime.fromisoformat(example.payload["ts"]).tzinfo is not None


def test_document_names_every_reason_field_and_limit() -> None:
    text = PROTOCOL.read_text("utf-8")
    for reason in contract.Reason:
        assert f"`{reason.value}`" in text, f"dead-letter reason {reason.value} undocumented"
    for model in (contract.Sample, contract.Event, contract.Status, contract.Location):
        for name in model.model_fields:
            assert f"`{name}`" in text or f'"{name}"' in text, f"{model.__name__}.{name} undocumented"
    for category in typing.get_args(contract.ServiceCategory):
        assert f"`{category}`" in text
    assert f"{contract.MAX_PAYLOAD_BYTES:,}" in text
    assert f"**{contract.MAX_SAMPLES}**" in text
    assert contract.DEVICE_ID_RE.pattern in text
