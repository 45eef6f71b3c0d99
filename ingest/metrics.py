"""Prometheus metrics for ingest: what came in, what was stored, what was refused and why, and how long
commits take (the number that bounds throughput when acks wait for the commit)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from ingest.store import Stored

RECEIVED = Counter("carewatch_ingest_received", "MQTT messages received")
ACKED = Counter("carewatch_ingest_acked", "MQTT messages acknowledged after commit")
STORED = Counter("carewatch_ingest_stored_rows", "Rows newly stored", ["kind"])
DUPLICATES = Counter("carewatch_ingest_duplicates", "Rows already stored (redelivery, resend)")
DEAD = Counter("carewatch_ingest_dead_lettered", "Messages dead-lettered", ["reason"])
DB_ERRORS = Counter("carewatch_ingest_db_errors", "Failed commits (database unavailable)")
BATCH = Histogram(
    "carewatch_ingest_batch_size",
    "Messages per committed batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
COMMIT = Histogram(
    "carewatch_ingest_commit_seconds",
    "Batch transaction time",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
QUEUE_DEPTH = Gauge("carewatch_ingest_queue_depth", "Messages received but not yet committed (consumer lag)")


def observe_commit(seconds: float, messages: int, stored: Stored, dead: Mapping[str, int]) -> None:
    COMMIT.observe(seconds)
    BATCH.observe(messages)
    STORED.labels(kind="telemetry").inc(stored.telemetry_inserted)
    STORED.labels(kind="event").inc(stored.events_inserted)
    STORED.labels(kind="status").inc(stored.statuses)
    DUPLICATES.inc(stored.duplicates)
    for reason, count in dead.items():
        DEAD.labels(reason=reason).inc(count)


def serve(port: int) -> None:
    start_http_server(port, addr="127.0.0.1")
