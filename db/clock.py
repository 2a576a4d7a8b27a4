"""The database server's clock, as every host reads it.

Chunk leases are written by workers and read by the sweeper of any dispatcher, each on its
own host. A host whose clock runs minutes slow would write leases already lapsed (its
chunks re-published while it works on them); a fast one, leases that outlive it. So every
lease is on the database's clock: this host's clock plus its offset to the server, measured
once per database and again every few minutes (one SELECT in the caller's transaction), so
no lease statement pays a round trip of its own. SQLite (the embedded run) is one host:
its clock is the host's.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from sqlmodel import Session

REMEASURE_SECONDS = 300.0

_offsets: dict[Engine, tuple[float, timedelta]] = {}  # -> (measured at, offset)
_lock = threading.Lock()
_SERVER_NOW = text("SELECT clock_timestamp()")


def host_now() -> datetime:
    return datetime.now(UTC)


def database_now(session: Session) -> datetime:
    """Now on the database server's clock (to a few milliseconds)."""
    engine = session.get_bind().engine
    if engine.dialect.name != "postgresql":
        return host_now()
    with _lock:
        measured = _offsets.get(engine)
    if measured is not None and time.monotonic() - measured[0] < REMEASURE_SECONDS:
        return host_now() + measured[1]
    before = host_now()
    server: datetime = session.execute(_SERVER_NOW).scalar_one()
    after = host_now()
    with _lock:
        _offsets[engine] = (time.monotonic(), server - (before + (after - before) / 2))
    return server


def forget_offsets() -> None:
    """Measure again on next use (tests that move this host's clock)."""
    with _lock:
        _offsets.clear()
