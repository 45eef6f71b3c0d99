"""Database access shared by every process: connections, pools, and which storage path is in use."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import psycopg
from psycopg.pq import PipelineStatus, TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

Storage = Literal["timescaledb", "postgresql"]

# Services fail fast on a dead database rather than hang: the caller retries with back-off.
CONNECT_KWARGS = {"connect_timeout": 5, "application_name": "carewatch"}


def connect(url: str, *, autocommit: bool = False, application_name: str = "carewatch") -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=5, application_name=application_name)


def make_pool(url: str, *, min_size: int = 1, max_size: int = 8, name: str = "carewatch") -> ConnectionPool:
    """A pool whose connections are checked on borrow, so a database restart heals without a restart."""
    pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"connect_timeout": 5, "application_name": name, "row_factory": dict_row},
        check=ConnectionPool.check_connection,
        open=False,
        name=name,
        timeout=10,
        reconnect_timeout=0,  # keep trying forever in the background
    )
    pool.open(wait=False)
    return pool


def storage(conn: psycopg.Connection) -> Storage:
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return "timescaledb" if row else "postgresql"


@contextmanager
def transaction(url: str) -> Iterator[psycopg.Connection]:
    with connect(url) as conn, conn.transaction():
        yield conn


@contextmanager
def atomic(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction of its own when called outside one; inside the caller's, just the caller's.

    A savepoint would make a nested failure recoverable, which nobody here wants (the whole batch is
    retried), and in pipeline mode every SAVEPOINT and RELEASE is a round trip of its own. Pipeline mode
    is only used inside :func:`pipelined_transaction`, so a pipeline means a transaction is open."""
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    if idle and conn.pgconn.pipeline_status == PipelineStatus.OFF:  # a pipeline's status is not current
        with conn.transaction():
            yield
    else:
        yield


@contextmanager
def pipelined_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """BEGIN ... COMMIT in pipeline mode on an autocommit connection, with BEGIN and COMMIT travelling
    with the statements around them: only statements whose results are read cost a round trip.
    (psycopg's own transaction() waits for BEGIN and for COMMIT separately.)"""
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            yield
            conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        raise
