"""Which chunks a ranking task ranks: its own, and further ones waiting on the rank queue.

A chunk waits on the rank queue once its generation is done: its chord body (the rank
message) is in the outbox, pending or published. Ranking several such chunks in one go
packs their comparisons into full batches; their own messages arrive later, find every
comparison and ranking stored and pass straight on to fusion.

Two ranking workers must not rank one chunk at once (the writes are idempotent, so it
would only waste the GPU): each chunk is claimed with a transaction-scoped advisory lock
held while it is ranked. A task waits for the lock of its own chunk (so a message whose
chunk another worker is ranking finds the work done) and only tries the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from db.engine import get_engine
from db.models import ChunkStatus, OutboxStatus, RequestStatus
from orchestration.outbox import KIND_SIGNATURE

log = structlog.get_logger(__name__)

# Namespace of blendq's rank claims among advisory locks (two-key form: namespace, chunk).
LOCK_NAMESPACE = 0x626C_7271 & 0x7FFF_FFFF
CANDIDATES_TO_LOOK_AT = 4

WAITING = text(f"""
SELECT c.id FROM chunk c JOIN job j ON j.id = c.job_id
WHERE c.status = '{ChunkStatus.RUNNING}' AND c.id <> :own AND j.ranker = :ranker
  AND EXISTS (SELECT 1 FROM outbox o WHERE o.chunk_id = c.id AND o.kind = '{KIND_SIGNATURE}'
              AND o.status IN ('{OutboxStatus.PENDING}', '{OutboxStatus.SENT}'))
  AND EXISTS (SELECT 1 FROM request r WHERE r.chunk_id = c.id
              AND r.status = '{RequestStatus.PENDING}'
              AND NOT EXISTS (SELECT 1 FROM ranking k WHERE k.request_id = r.id))
ORDER BY c.id
LIMIT :look
""")


def _lock_key(chunk_id: int) -> int:
    # The two-key form takes 32-bit keys; a wrapped id can only make two claims wait.
    return chunk_id & 0x7FFF_FFFF


@contextmanager
def claim_chunks(database_url: str, own: int, ranker: str, limit: int) -> Iterator[list[int]]:
    """Claim ``own`` (waiting for it) and up to ``limit`` waiting chunks of the same ranker
    (skipping those another worker holds); yields the claimed chunk ids, ``own`` first.

    The claims are held until the block ends. Without PostgreSQL (the embedded run, where
    tasks run one after another in one process) only ``own`` is yielded.
    """
    engine = get_engine(database_url)
    if engine.dialect.name != "postgresql":
        yield [own]
        return
    connection = engine.connect()
    transaction = connection.begin()
    try:
        connection.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"),
                           {"ns": LOCK_NAMESPACE, "key": _lock_key(own)})
        claimed = [own]
        if limit > 0:
            waiting = connection.execute(WAITING, {
                "own": own, "ranker": ranker, "look": limit * CANDIDATES_TO_LOOK_AT,
            }).scalars().all()
            for chunk_id in waiting:
                if len(claimed) > limit:
                    break
                got = connection.execute(text("SELECT pg_try_advisory_xact_lock(:ns, :key)"),
                                         {"ns": LOCK_NAMESPACE, "key": _lock_key(chunk_id)})
                if got.scalar():
                    claimed.append(chunk_id)
        if len(claimed) > 1:
            log.info("rank.gathered", chunks=claimed)
        yield claimed
    finally:
        try:
            # Ending the transaction releases every claim.
            transaction.rollback()
            connection.close()
        except DBAPIError as exc:
            # A database restart took the claims with the connection; nothing to release.
            log.warning("rank.claims_lost", error=str(exc).splitlines()[0])
