"""Admin logic on real rows: retrying failed requests, job stage counts, listing jobs,
the registry sync behind pause, and reading a chunk id out of a task message."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import click
import pytest
from celery import Celery
from sqlmodel import Session, col, select

from db.models import (
    Candidate,
    Chunk,
    ChunkStatus,
    Comparison,
    Fusion,
    Job,
    JobStatus,
    Outbox,
    Ranking,
    RegisteredModel,
    Request,
    RequestStatus,
)
from db.queries_admin import job_stages, list_jobs
from ops.cli_jobs_admin import parse_since
from orchestration.queue_admin import QueueError, chunk_of, is_paused, paused_models, set_paused
from orchestration.registry import parse_registry
from orchestration.retry import RetryError, retry_failed


def finished_job(session: Session, tenant: str = "default") -> tuple[Job, list[Request]]:
    """A completed job: chunk 0 all good, chunk 1 with one failed request (m-b failed)."""
    job = Job(status=JobStatus.COMPLETED, models=["m-a", "m-b"], ranker="rk", tenant=tenant,
              completed_at=datetime.now(UTC))
    session.add(job)
    session.flush()
    requests = []
    for index, statuses in enumerate([["completed", "completed"], ["completed", "failed"]]):
        chunk = Chunk(job_id=job.id, index=index, size=2, status=ChunkStatus.DONE)
        session.add(chunk)
        session.flush()
        for status in statuses:
            request = Request(job_id=job.id, chunk_id=chunk.id, line_no=len(requests) + 1,
                              custom_id=f"c{len(requests)}", instruction="q", status=status,
                              error="fusion failed: x" if status == "failed" else None)
            session.add(request)
            session.flush()
            requests.append(request)
            session.add(Candidate(request_id=request.id, model="m-a", text="a"))
            session.add(Candidate(request_id=request.id, model="m-b",
                                  ok=status != "failed", error="oom" if status == "failed"
                                  else None))
            session.add(Ranking(request_id=request.id, ranker="rk", ranker_revision="r",
                                strategy="full", aggregation="max_logits", entries=[]))
            if status == "completed":
                session.add(Fusion(request_id=request.id, fuser="f", fuser_revision="r",
                                   output="x"))
    job.total, job.completed, job.failed = 4, 3, 1
    session.add(job)
    session.flush()
    return job, requests


def test_retry_requeues_only_failed_requests(session: Session, celery_app: Celery) -> None:
    job, requests = finished_job(session)
    failed = requests[3]
    # Comparisons name candidates without a foreign key: the failed candidate's must go
    # with it, a completed request's stay.
    for request in (failed, requests[2]):
        a, b = session.exec(select(Candidate.id).where(Candidate.request_id == request.id)
                            .order_by(col(Candidate.model))).all()
        session.add(Comparison(request_id=request.id or 0, candidate_a_id=a or 0,
                               candidate_b_id=b or 0, logit=1.0, ranker_revision="r"))
    session.flush()
    done = retry_failed(session, celery_app, job.id)
    assert (done["requests"], done["chunks"], done["status"]) == (1, 1, "in_progress")
    session.refresh(job)
    assert (job.status, job.completed, job.failed) == ("in_progress", 3, 0)
    assert job.completed_at is None and job.expires_at is not None
    assert job.meta and job.meta["retries"][0]["requests"] == 1
    statuses = {r.id: session.get(Request, r.id).status for r in requests}  # type: ignore
    assert statuses[failed.id] == RequestStatus.PENDING
    assert list(statuses.values()).count("completed") == 3
    # The failed candidate is gone so the model runs again; the good one stays.
    left = session.exec(select(Candidate.model).where(Candidate.request_id == failed.id)).all()
    assert left == ["m-a"]
    assert session.exec(select(Ranking).where(Ranking.request_id == failed.id)).all() == []
    kept = session.exec(select(Comparison.request_id).where(
        col(Comparison.request_id).in_([failed.id, requests[2].id]))).all()
    assert kept == [requests[2].id]
    # Completed requests keep every row.
    assert len(session.exec(select(Ranking).where(Ranking.request_id == requests[2].id))
               .all()) == 1
    chunks = session.exec(select(Chunk).where(Chunk.job_id == job.id)
                          .order_by(Chunk.index)).all()
    assert [c.status for c in chunks] == ["done", "pending"]
    [row] = session.exec(select(Outbox).where(Outbox.job_id == job.id)).all()
    assert (row.chunk_id, row.kind, row.dedup_key) == (
        chunks[1].id, "canvas", f"chunk:{chunks[1].id}:retry:1")


def test_retry_refuses_a_running_job_and_skips_a_clean_one(session: Session,
                                                           celery_app: Celery) -> None:
    job, _ = finished_job(session)
    job.status = JobStatus.IN_PROGRESS
    session.add(job)
    session.flush()
    with pytest.raises(RetryError, match="in_progress"):
        retry_failed(session, celery_app, job.id)
    with pytest.raises(RetryError, match="no job"):
        retry_failed(session, celery_app, "job_missing")
    clean = Job(status=JobStatus.COMPLETED, models=["m-a"])
    session.add(clean)
    session.flush()
    assert retry_failed(session, celery_app, clean.id)["requests"] == 0
    assert session.get(Job, clean.id).status == "completed"  # type: ignore[union-attr]


def test_job_stages_counts_and_groups_errors(session: Session) -> None:
    job, _ = finished_job(session)
    stages = job_stages(session, job)
    assert stages["requests"] == {"total": 4, "completed": 3, "failed": 1}
    assert (stages["candidates"]["ok"], stages["candidates"]["failed"]) == (7, 1)
    assert stages["candidates"]["by_model"]["m-b"]["failed"] == 1
    assert (stages["rankings"], stages["fusions"], stages["comparisons"]) == (4, 3, 0)
    assert stages["errors"]["requests"] == [{"reason": "fusion failed: x", "count": 1}]
    assert stages["errors"]["candidates"] == [{"model": "m-b", "reason": "oom", "count": 1}]
    assert stages["chunks"] == {"done": 2}


def test_list_jobs_filters(session: Session) -> None:
    mine, _ = finished_job(session, tenant="acme")
    old = Job(status=JobStatus.FAILED, tenant="acme",
              created_at=datetime.now(UTC) - timedelta(days=3))
    session.add(old)
    session.flush()
    ids = [j["id"] for j in list_jobs(session, tenant="acme")]
    assert ids == [mine.id, old.id]  # newest first
    assert [j["id"] for j in list_jobs(session, tenant="acme", status="failed")] == [old.id]
    recent = list_jobs(session, tenant="acme", since=datetime.now(UTC) - timedelta(days=1))
    assert [j["id"] for j in recent] == [mine.id]


def test_parse_since() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == datetime(2026, 1, 2, 10, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2025, 12, 26, 12, 0, tzinfo=UTC)
    assert parse_since("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since(None) is None
    with pytest.raises(click.BadParameter):
        parse_since("yesterday")


REGISTRY = parse_registry("""
[[models]]
name = "g1"
role = "generator"
backend = "transformers"
path = "/m/g1"

[[models]]
name = "rk"
role = "ranker"
backend = "pairranker"
path = "/m/rk"
""", "test")


def test_pause_is_stored_and_survives_a_registry_sync(session: Session) -> None:
    assert not is_paused(session, "g1")
    assert set_paused(session, REGISTRY, "g1", True) == "gen.g1"
    assert is_paused(session, "g1") and "g1" in paused_models(session)
    row = session.get(RegisteredModel, "rk")
    assert row is not None and row.queue == "rank" and not row.paused
    set_paused(session, REGISTRY, "g1", True)  # syncing again keeps the flag
    assert is_paused(session, "g1")
    set_paused(session, REGISTRY, "g1", False)
    assert not is_paused(session, "g1")
    with pytest.raises(QueueError, match="'rk' is not a generator"):
        set_paused(session, REGISTRY, "rk", True)  # only generators have their own queue


def test_chunk_of_reads_protocol_2_bodies() -> None:
    assert chunk_of(json.dumps([[], {"job_id": "j", "chunk_id": 7}, {}])) == 7
    assert chunk_of(json.dumps([[], {"x": 1}, {}])) is None
    assert chunk_of(b"not json") is None
