"""Which chunks a ranking task ranks: its own, and further ones waiting on the rank queue.

A chunk waits on the rank queue once its generation is done: its chord completed, which
moved its stage to rank (and put the rank message in the outbox). Ranking several such
chunks in one go packs their comparisons into full batches (workers/claims.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from db.models import ChunkStage, ChunkStatus, RequestStatus
from workers import claims

# Namespace of blendq's rank claims among advisory locks (two-key form: namespace, chunk).
LOCK_NAMESPACE = 0x626C_7271 & 0x7FFF_FFFF

WAITING = text(f"""
SELECT c.id FROM chunk c JOIN job j ON j.id = c.job_id
WHERE c.status = '{ChunkStatus.RUNNING}' AND c.stage = '{ChunkStage.RANK}'
  AND c.id <> :own AND j.ranker = :ranker
  AND EXISTS (SELECT 1 FROM (SELECT r.id FROM request r
                             WHERE r.chunk_id = c.id AND r.status = '{RequestStatus.PENDING}'
                             ORDER BY r.id LIMIT 1) AS first
              WHERE NOT EXISTS (SELECT 1 FROM ranking k WHERE k.request_id = first.id))
ORDER BY c.id
LIMIT :look
""")
"""Chunks waiting to be ranked: a chunk's rankings are written in one statement, so its
first open request tells for all of them (two index probes a chunk)."""


@contextmanager
def claim_chunks(database_url: str, own: int, ranker: str, limit: int) -> Iterator[list[int]]:
    """Claim ``own`` and up to ``limit`` chunks of the same ranker waiting to be ranked."""
    with claims.claim_chunks(database_url, LOCK_NAMESPACE, own, WAITING, {"ranker": ranker},
                             limit) as claim:
        yield claim.chunks
