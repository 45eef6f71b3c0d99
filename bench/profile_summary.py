"""Summarise py-spy's collapsed stacks (--format raw): where the ingest process spends its time.

`python -m bench.profile_summary var/bench/<run>/ingest-profile.txt`
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']} ({Path(m['file']).name})"


def summarise(path: Path, top: int = 25) -> str:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        if any(f.startswith("process ") or "MainThread" in f for f in frames[:1]):
            frames = frames[1:]
        total += n
        for f in set(frames):
            inclusive[f] += n
        if frames:
            self_time[frames[-1]] += n
    out = [f"{total} samples", "", "inclusive (share of samples with the frame on the stack):"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "self (leaf frames):"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in self_time.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
