"""Container health probe for the CareWatch image (Dockerfile HEALTHCHECK; compose reuses it).

One image runs every service, so the probe picks what to ask from the service's own settings: the
API's /readyz (database reachable) when CAREWATCH_METRICS_PORT is unset, else the worker's /metrics
endpoint (ingest, alerts). Standard library only; exits 0 when healthy, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def probe_url(env: dict[str, str]) -> str:
    metrics_port = env.get("CAREWATCH_METRICS_PORT")
    if metrics_port:
        return f"http://127.0.0.1:{int(metrics_port)}/metrics"
    return f"http://127.0.0.1:{int(env.get('CAREWATCH_API_PORT', '8000'))}/readyz"


def main() -> int:
    url = probe_url(dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
