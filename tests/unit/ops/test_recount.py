"""``jobs recount``: counts recomputed from the rows, as a repair, from the command line."""

from __future__ import annotations

import json

from db.engine import session_scope
from db.models import Chunk, ChunkStatus, Job, JobStatus, Request, RequestStatus
from tests.unit.ops.test_cli import manage


def test_recount_repairs_counts_and_closes_a_job_with_nothing_left(pg_url: str) -> None:
    with session_scope(pg_url) as session:
        # Counts that drifted: one chunk done (a completed and a failed request) while the
        # job still says nothing happened and a chunk is left.
        job = Job(status=JobStatus.IN_PROGRESS, models=["tiny-a"], total=0, chunks_left=1)
        session.add(job)
        session.flush()
        chunk = Chunk(job_id=job.id, index=0, size=2, status=ChunkStatus.DONE)
        session.add(chunk)
        session.flush()
        session.add_all([
            Request(job_id=job.id, chunk_id=chunk.id, line_no=1, custom_id="a",
                    instruction="q", status=RequestStatus.COMPLETED),
            Request(job_id=job.id, chunk_id=chunk.id, line_no=2, custom_id="b",
                    instruction="q", status=RequestStatus.FAILED, error="x")])
        job_id = job.id
    result = manage("jobs", "recount", job_id, "--json", env={"BLENDQ_DATABASE_URL": pg_url})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["before"] == {"total": 0, "completed": 0, "failed": 0, "chunks_left": 1}
    assert (out["total"], out["completed"], out["failed"], out["chunks_left"]) == (2, 1, 1, 0)
    assert out["status"] == "completed"
    with session_scope(pg_url) as session:
        stored = session.get(Job, job_id)
        assert stored is not None
        assert (stored.status, stored.completed, stored.failed) == ("completed", 1, 1)
    again = manage("jobs", "recount", job_id, env={"BLENDQ_DATABASE_URL": pg_url})
    assert again.stdout.strip() == f"{job_id} completed: counts were right"
    missing = manage("jobs", "recount", "job_nope", env={"BLENDQ_DATABASE_URL": pg_url})
    assert missing.returncode == 1 and "no job job_nope" in missing.stderr
