"""A ranking task also ranks the chunks waiting on the rank queue, claimed so that two
workers never rank one chunk at once; their own messages then find the work stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, update
from sqlmodel import col, select

from db.engine import session_scope
from db.models import Chunk, ChunkStatus, Comparison, Outbox, OutboxStatus, Ranking, Request
from orchestration.chord_backend import record_part
from orchestration.registry import get_registry
from orchestration.settings import Settings
from orchestration.submission import JobOptions, submit
from workers.generation.tasks import generate_chunk
from workers.ranking.gathering import claim_chunks
from workers.ranking.tasks import rank_chunk

MODELS = ["tiny-a", "tiny-b"]
REGISTRY = """
[[models]]
name = "tiny-a"
role = "generator"
backend = "transformers"
path = "builtin:tiny-a"
params = { max_new_tokens = 6 }

[[models]]
name = "tiny-b"
role = "generator"
backend = "transformers"
path = "builtin:tiny-b"
params = { max_new_tokens = 6 }

[[models]]
name = "tiny-ranker"
role = "ranker"
backend = "pairranker"
path = "builtin:tiny-ranker"

[[models]]
name = "other-ranker"
role = "ranker"
backend = "pairranker"
path = "builtin:tiny-ranker"
"""


@pytest.fixture
def gather_settings(settings: Settings, tmp_path: Path, celery_app: Celery,
                    ) -> Iterator[Settings]:
    path = tmp_path / "registry.toml"
    path.write_text(REGISTRY)
    yield settings.model_copy(update={"registry_path": path, "rank_gather_chunks": 8})
    # Leave no chunk waiting for the ranking tasks of later tests to gather.
    with session_scope(settings.database_url) as session:
        session.execute(update(Chunk).where(col(Chunk.status) == ChunkStatus.RUNNING)
                        .values(status=ChunkStatus.DONE))


def _generated_job(settings: Settings, app: Celery, chunks: int, ranker: str = "tiny-ranker",
                   ) -> list[int]:
    """A job of ``chunks`` chunks of 3 requests, every chunk generated (so running)."""
    lines = [json.dumps({"custom_id": f"g{i}", "instruction": f"Count to {i}."}).encode()
             for i in range(3 * chunks)]
    with session_scope(settings.database_url) as session:
        job = submit(session, app, lines, JobOptions(models=MODELS, ranker=ranker, fuser="none",
                                                     top_k=1, chunk_size=3),
                     get_registry(settings.registry_path)).job
        job_id = job.id
        # The canvases are not relayed in-process; keep other tests' relays off them.
        session.execute(update(Outbox).where(col(Outbox.job_id) == job_id)
                        .values(status=OutboxStatus.DROPPED))
    with session_scope(settings.database_url) as session:
        ids = [c.id or 0 for c in session.exec(
            select(Chunk).where(Chunk.job_id == job_id).order_by(col(Chunk.index)))]
    for chunk_id in ids:
        for model in MODELS:
            generate_chunk(settings, job_id, chunk_id, model)
    return ids


def _rank_message_waits(settings: Settings, chunk_id: int) -> None:
    """What the last generator of a chunk does: its chord body goes into the outbox."""
    with session_scope(settings.database_url) as session:
        job_id = session.get(Chunk, chunk_id).job_id  # type: ignore[union-attr]
        record_part(session, f"group-{chunk_id}", f"task-{chunk_id}", "SUCCESS",
                    {"task": "blendq.rank", "kwargs": {"chunk_id": chunk_id}}, job_id=job_id,
                    size_hint=1, chunk_id=chunk_id)
        session.execute(update(Outbox).where(col(Outbox.chunk_id) == chunk_id)
                        .values(status=OutboxStatus.SENT))


def _counts(settings: Settings, chunk_id: int) -> tuple[int, int]:
    with session_scope(settings.database_url) as session:
        ids = select(Request.id).where(Request.chunk_id == chunk_id)
        return tuple(session.exec(select(func.count()).select_from(model)  # type: ignore[return-value]
                                  .where(col(model.request_id).in_(ids))).one()
                     for model in (Comparison, Ranking))


def test_a_rank_task_ranks_the_chunks_waiting_on_the_queue(gather_settings: Settings,
                                                           celery_app: Celery) -> None:
    first, waiting, still_generating = _generated_job(gather_settings, celery_app, 3)
    _rank_message_waits(gather_settings, waiting)
    job_id = _job_of(gather_settings, first)
    done = rank_chunk(gather_settings, job_id, first)
    assert done == {"ranked": 6, "comparisons": 12, "chunks": 2}
    assert _counts(gather_settings, first) == (6, 3)
    assert _counts(gather_settings, waiting) == (6, 3)
    assert _counts(gather_settings, still_generating) == (0, 0)
    # The waiting chunk's own message: everything is stored, nothing is run again.
    again = rank_chunk(gather_settings, job_id, waiting)
    assert again["comparisons"] == 0 and _counts(gather_settings, waiting) == (6, 3)


def test_only_chunks_of_the_same_ranker_are_gathered(gather_settings: Settings,
                                                     celery_app: Celery) -> None:
    (own,) = _generated_job(gather_settings, celery_app, 1)
    (other,) = _generated_job(gather_settings, celery_app, 1, ranker="other-ranker")
    _rank_message_waits(gather_settings, other)
    assert rank_chunk(gather_settings, _job_of(gather_settings, own), own)["chunks"] == 1
    assert _counts(gather_settings, other) == (0, 0)


def test_gathering_can_be_turned_off(gather_settings: Settings, celery_app: Celery) -> None:
    own, waiting = _generated_job(gather_settings, celery_app, 2)
    _rank_message_waits(gather_settings, waiting)
    off = gather_settings.model_copy(update={"rank_gather_chunks": 0})
    assert rank_chunk(off, _job_of(off, own), own)["chunks"] == 1
    assert _counts(off, waiting) == (0, 0)


def test_a_chunk_claimed_by_one_worker_is_skipped_by_another(gather_settings: Settings,
                                                             celery_app: Celery) -> None:
    a, b, c = _generated_job(gather_settings, celery_app, 3)
    for chunk_id in (b, c):
        _rank_message_waits(gather_settings, chunk_id)
    url = gather_settings.database_url
    with claim_chunks(url, a, "tiny-ranker", limit=1) as first:
        assert first[0] == a and len(first) == 2
        taken = first[1]
        free = c if taken == b else b
        # A second worker (another connection) whose own chunk is the free one cannot
        # take the claimed chunk, nor wait for it.
        with claim_chunks(url, free, "tiny-ranker", limit=8) as second:
            assert second == [free]
    # Released at the end of the block.
    with claim_chunks(url, a, "tiny-ranker", limit=8) as again:
        assert set(again) == {a, b, c}


def _job_of(settings: Settings, chunk_id: int) -> str:
    with session_scope(settings.database_url) as session:
        chunk = session.get(Chunk, chunk_id)
        assert chunk is not None
        return chunk.job_id
