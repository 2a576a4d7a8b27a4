"""One engine per process, one session per unit of work."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_pre_ping = True


def skip_pre_ping() -> None:
    """Engines created from now on in this process check out pooled connections without
    a test round trip first (a stage worker calls this at start-up).

    Only where every use retries a connection that died with the server: stage tasks
    retry on OperationalError, chord counting and lease renewals retry on their own, and
    SQLAlchemy drops the whole pool at the first disconnect error. The ping was one round
    trip per checkout, and a stage task checks out five to ten times.
    """
    global _pre_ping
    _pre_ping = False


def get_engine(url: str) -> Engine:
    """The process's engine for ``url``, created on first use."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create(url)
            _engines[url] = engine
        return engine


def _create(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=_pre_ping, pool_size=5, max_overflow=5)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def dispose_engines() -> None:
    """Drop pooled connections; a forked child or a test that restarts services calls this."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(url: str, *, flush_wal: bool = True) -> Iterator[Session]:
    """A session that commits on success, rolls back on error and is always closed.

    ``flush_wal=False`` commits without waiting for the WAL to reach disk
    (``synchronous_commit = off`` for this transaction alone). Only for writes that a later
    transaction of the same process hands on: PostgreSQL writes WAL in order, so that
    later commit, which waits, makes them durable before anything is published or acked;
    a database crash in between loses them, and the redelivered task writes them again.
    Stage workers spent most of their time waiting on fsync without it.
    """
    session = Session(get_engine(url), expire_on_commit=False)
    try:
        if not flush_wal:
            skip_flush_wait(session)
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def skip_flush_wait(session: Session) -> None:
    """This transaction of ``session`` commits without waiting for the WAL to reach disk
    (see :func:`session_scope`); may be called at any point before the commit."""
    if is_postgres(session):
        # On the connection: a session.execute of its own cost as much as a query.
        session.connection().exec_driver_sql("SET LOCAL synchronous_commit = off")


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as a plain libpq connection string (for LISTEN and COPY)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
