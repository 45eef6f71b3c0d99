"""Write docs/schemas/{telemetry,event,status}.json from carewatch.contract.json_schemas().

The schemas are generated, never edited: the pydantic models in carewatch/contract.py are the single
source of truth, and tests/deploy/test_docs.py fails when the committed files drift from them.
Usage: python scripts/gen_schemas.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from carewatch.contract import json_schemas  # noqa: E402

SCHEMA_DIR = ROOT / "docs" / "schemas"


def render() -> dict[str, str]:
    """File name -> exact file text, so writing and checking compare the same bytes."""
    return {
        f"{kind}.json": json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        for kind, schema in json_schemas().items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/schemas/ is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = SCHEMA_DIR / name
        if path.exists() and path.read_text("utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/gen_schemas.py", file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'wrote'} {len(render())} schemas in {SCHEMA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
