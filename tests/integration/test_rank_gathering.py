"""With a backlog on the rank queue, the ranking worker ranks the waiting chunks together
and the job still ends with exact counts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, create_engine, select

from db.models import Candidate, Chunk, Comparison, Fusion, Outbox, OutboxStatus, Ranking
from tests.integration.conftest import GENERATORS, Stack
from tests.integration.test_pipeline import count, wait_for, write_prompts

pytestmark = pytest.mark.integration


def _rank_messages_sent(url: str, job_id: str) -> int:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            chunks = select(Chunk.id).where(Chunk.job_id == job_id)
            return session.exec(select(func.count()).select_from(Outbox).where(
                col(Outbox.chunk_id).in_(chunks), Outbox.kind == "signature",
                col(Outbox.dedup_key).startswith("chord:"),
                Outbox.status == OutboxStatus.SENT)).one()
    finally:
        engine.dispose()


def test_a_backlog_on_the_rank_queue_is_ranked_together(stack: Stack, tmp_path: Path) -> None:
    stack.stop("rank")
    try:
        prompts = write_prompts(tmp_path / "in.jsonl", 12)
        job_id = stack.manage("jobs", "submit", str(prompts), "--models", ",".join(GENERATORS),
                              "--chunk-size", "2").stdout.strip()
        deadline = time.monotonic() + 120
        # Every chunk generated: all six rank messages wait on the queue.
        while _rank_messages_sent(stack.settings.database_url, job_id) < 6:
            assert time.monotonic() < deadline, "generation did not finish"
            time.sleep(0.3)
    finally:
        stack.start("rank", "worker", "rank", ready=" ready.")
    job = wait_for(stack.settings.database_url, job_id)
    assert (job.status, job.completed, job.failed) == ("completed", 12, 0)
    engine = create_engine(stack.settings.database_url)
    with Session(engine) as session:
        assert count(session, Candidate, job_id) == 36
        assert count(session, Comparison, job_id) == 72
        assert count(session, Ranking, job_id) == 12
        assert count(session, Fusion, job_id) == 12
    engine.dispose()
    log = (stack.logs / "rank.log").read_text()
    gathered = [line for line in log.splitlines() if "chunks.gathered" in line]
    # The first task took its own chunk and the five waiting ones (limit 8).
    assert gathered and gathered[0].count(",") == 5, gathered
