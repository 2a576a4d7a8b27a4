"""Claiming chunks to work on together, so a GPU sees large batches.

A stage task works on its own chunk and, with it, further chunks whose messages wait on
the same queue (the ranking worker across the rank queue, a generator across its
gen.<model> queue). Their own messages arrive later and find the work stored.

Two replicas must not work on one chunk at once (the writes are idempotent, so it would
only waste the device): each chunk is claimed with a transaction-scoped advisory lock in
the stage's namespace, held while the work runs. A task waits for the lock of its own
chunk (so a message whose chunk another replica is working on finds the work done) and
only tries the others.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from sqlalchemy import Connection, TextClause, text
from sqlalchemy.exc import DBAPIError

from db.engine import get_engine

log = structlog.get_logger(__name__)

# How many waiting chunks to look at per chunk wanted: some are held by other replicas.
CANDIDATES_TO_LOOK_AT = 4


def namespace(name: str) -> int:
    """A 31-bit advisory-lock namespace for a stage (and model): ("gen", "tiny-a")."""
    return zlib.crc32(name.encode()) & 0x7FFF_FFFF


def _lock_key(chunk_id: int) -> int:
    # The two-key form takes 32-bit keys; a wrapped id can only make two claims wait.
    return chunk_id & 0x7FFF_FFFF


class Claim:
    """The chunks one task holds, on the connection whose transaction holds their locks."""

    def __init__(self, connection: Connection | None, lock_namespace: int,
                 chunks: list[int]) -> None:
        self.connection = connection
        self.lock_namespace = lock_namespace
        self.chunks = chunks

    def wait_for(self, chunk_id: int) -> None:
        """Block until ``chunk_id`` is free, then hold it too."""
        if self.connection is not None and chunk_id not in self.chunks:
            self.connection.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"),
                                    {"ns": self.lock_namespace, "key": _lock_key(chunk_id)})
        if chunk_id not in self.chunks:
            self.chunks.append(chunk_id)


@contextmanager
def claim_chunks(database_url: str, lock_namespace: int, own: int, waiting: TextClause,
                 params: dict[str, Any], limit: int, *,
                 wait_own: bool = True) -> Iterator[Claim]:
    """Claim ``own`` and up to ``limit`` of the chunks ``waiting`` lists (given ``params``,
    ``:own`` and ``:look``), skipping those another replica holds; yields the claim, its
    chunks ``own`` first.

    With ``wait_own`` the task waits for its own chunk first; without, a task whose chunk
    another replica holds takes other waiting chunks meanwhile (``own`` is then not among
    the claimed, and ``Claim.wait_for(own)`` waits for it later), so no replica idles
    behind another's lock. The claims are held until the block ends. Without PostgreSQL
    (the embedded run, where tasks run one after another in one process) only ``own`` is
    claimed.
    """
    engine = get_engine(database_url)
    if engine.dialect.name != "postgresql":
        yield Claim(None, lock_namespace, [own])
        return
    connection = engine.connect()
    transaction = connection.begin()
    try:
        if wait_own:
            connection.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"),
                               {"ns": lock_namespace, "key": _lock_key(own)})
            claimed = [own]
        else:
            claimed = [own] if _try_lock(connection, lock_namespace, own) else []
        if limit > 0:
            # One round trip: the waiting chunks in order, each claimed as the scan reaches
            # it, until ``limit`` are held (LIMIT stops the scan, so no lock is taken past
            # it; the locking function is volatile, so it is never pushed into the list).
            found = connection.execute(
                text(f"SELECT w.id FROM ({waiting.text}) AS w(id) "
                     "WHERE pg_try_advisory_xact_lock(:ns, CAST(w.id & 2147483647 AS int)) "
                     "LIMIT :want"),
                {**params, "own": own, "look": limit * CANDIDATES_TO_LOOK_AT,
                 "ns": lock_namespace, "want": limit}).scalars().all()
            claimed.extend(chunk_id for chunk_id in found if chunk_id != own)
        if len(claimed) > 1:
            log.info("chunks.gathered", chunks=claimed)
        yield Claim(connection, lock_namespace, claimed)
    finally:
        try:
            # Ending the transaction releases every claim.
            transaction.rollback()
            connection.close()
        except DBAPIError as exc:
            # A database restart took the claims with the connection; nothing to release.
            log.warning("chunks.claims_lost", error=str(exc).splitlines()[0])


def _try_lock(connection: Connection, lock_namespace: int, chunk_id: int) -> bool:
    got = connection.execute(text("SELECT pg_try_advisory_xact_lock(:ns, :key)"),
                             {"ns": lock_namespace, "key": _lock_key(chunk_id)})
    return bool(got.scalar())
