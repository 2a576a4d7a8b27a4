"""A job through real PostgreSQL, RabbitMQ, dispatcher and worker processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, create_engine, select

from db.models import (
    Candidate,
    ChordPart,
    Chunk,
    Comparison,
    Fusion,
    Job,
    Outbox,
    Ranking,
    Request,
)
from tests.integration.conftest import GENERATORS, Stack, queue_exists
from workers.ranking.aggregation import max_logits

pytestmark = pytest.mark.integration
TERMINAL = {"completed", "failed", "cancelled", "expired"}


def write_prompts(path: Path, n: int, params: dict[str, int] | None = None) -> Path:
    with path.open("w") as handle:
        for i in range(n):
            line = {"custom_id": f"req-{i:03d}", "instruction": f"Question {i}: name a colour.",
                    "input": "" if i % 2 else f"context {i}"}
            if params:
                line["params"] = params
            handle.write(json.dumps(line) + "\n")
    return path


def wait_for(url: str, job_id: str, timeout: float = 120) -> Job:
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with Session(engine) as session:
                job = session.get(Job, job_id)
                assert job is not None
                if job.status in TERMINAL:
                    return job
            time.sleep(0.3)
    finally:
        engine.dispose()
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def count(session: Session, model: type, job_id: str) -> int:
    ids = select(Request.id).where(Request.job_id == job_id)
    return session.exec(select(func.count()).select_from(model)
                        .where(col(model.request_id).in_(ids))).one()


def test_24_prompts_through_three_generators(stack: Stack, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "in.jsonl", 24)
    submitted = stack.manage("jobs", "submit", str(prompts), "--models", ",".join(GENERATORS),
                             "--chunk-size", "8")
    job_id = submitted.stdout.strip()
    job = wait_for(stack.settings.database_url, job_id)
    assert (job.status, job.total, job.completed, job.failed) == ("completed", 24, 24, 0)
    assert job.in_progress_at and job.finalizing_at and job.completed_at

    out = tmp_path / "out.jsonl"
    stack.manage("jobs", "results", job_id, "-o", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]

    engine = create_engine(stack.settings.database_url)
    with Session(engine) as session:
        assert count(session, Candidate, job_id) == 72
        assert count(session, Comparison, job_id) == 144
        assert count(session, Ranking, job_id) == 24
        assert count(session, Fusion, job_id) == 24
        chunks = session.exec(select(Chunk).where(Chunk.job_id == job_id)).all()
        assert sorted(c.status for c in chunks) == ["done"] * 3
        # One counted part per generate task, one queued rank body (chord:) and one fuse
        # hop (fuse:, written by the rank task) per chunk: no double fire.
        hops = session.exec(select(Outbox).where(Outbox.job_id == job_id,
                                                 Outbox.kind == "signature")).all()
        assert sorted((h.dedup_key or "").split(":")[0] for h in hops) == [
            "chord"] * 3 + ["fuse"] * 3
        assert all(h.status == "sent" for h in hops)
        assert sorted(h.dedup_key for h in hops if h.dedup_key.startswith("fuse")) == sorted(
            f"fuse:{c.id}:0" for c in chunks)
        parts = session.exec(select(func.count()).select_from(ChordPart)).one()
        assert parts >= 9
        requests = {r.custom_id: r for r in session.exec(
            select(Request).where(Request.job_id == job_id)).all()}
        assert [line["custom_id"] for line in lines] == sorted(requests)
        for line in lines:
            request = requests[line["custom_id"]]
            fusion = session.exec(select(Fusion).where(Fusion.request_id == request.id)).one()
            ranking = session.exec(select(Ranking).where(Ranking.request_id == request.id)).one()
            comparisons = session.exec(
                select(Comparison).where(Comparison.request_id == request.id)).all()
            assert line["status"] == "completed"
            assert line["fused_output"] == fusion.output == request.fused_output
            assert line["chosen"]["candidate_id"] == ranking.entries[0]["candidate_id"]
            assert line["chosen"]["candidate_id"] == request.chosen_candidate_id
            assert sorted(c["model"] for c in line["candidates"]) == sorted(GENERATORS)
            assert fusion.candidate_ids == [e["candidate_id"] for e in ranking.entries][:3]
            # The stored ranking is what the stored comparisons say.
            ids = sorted(e["candidate_id"] for e in ranking.entries)
            index = {cid: i for i, cid in enumerate(ids)}
            matrix = {(index[c.candidate_a_id], index[c.candidate_b_id]): c.logit
                      for c in comparisons}
            expected = max_logits(len(ids), matrix)
            for entry in ranking.entries:
                assert entry["score"] == pytest.approx(expected[index[entry["candidate_id"]]])
            assert [e["rank"] for e in ranking.entries] == [1, 2, 3]
            scores = [e["score"] for e in ranking.entries]
            assert scores == sorted(scores, reverse=True)
    engine.dispose()
    for model in GENERATORS:
        assert queue_exists(stack.settings.broker_url, f"gen.{model}")


def test_invalid_file_fails_the_job_and_dispatches_nothing(stack: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"custom_id": "a", "instruction": "fine"}) + "\n"
        + "{not json\n"
        + json.dumps({"custom_id": "c", "instruction": ""}) + "\n"
        + json.dumps({"custom_id": "a", "instruction": "again"}) + "\n"
    )
    result = stack.manage("jobs", "submit", str(bad), check=False)
    assert result.returncode == 1
    job_id = result.stdout.strip()
    assert "line 2: (line): not valid JSON" in result.stderr
    assert "line 3: instruction: is empty" in result.stderr
    assert "line 4: custom_id: 'a' already used on line 1" in result.stderr
    status = json.loads(stack.manage("jobs", "status", job_id, "--json").stdout)
    assert status["status"] == "failed"
    assert [(e["line"], e["field"]) for e in status["errors"]] == [
        (2, "(line)"), (3, "instruction"), (4, "custom_id")]
    engine = create_engine(stack.settings.database_url)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Request)
                            .where(Request.job_id == job_id)).one() == 0
        assert session.exec(select(func.count()).select_from(Outbox)
                            .where(Outbox.job_id == job_id)).one() == 0
    engine.dispose()


def test_same_idempotency_key_returns_the_same_job(stack: Stack, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "in.jsonl", 4)
    first = stack.manage("jobs", "submit", str(prompts), "--idempotency-key", "nightly-42")
    second = stack.manage("jobs", "submit", str(prompts), "--idempotency-key", "nightly-42")
    job_id = first.stdout.strip()
    assert second.stdout.strip() == job_id
    assert "existing job" in second.stderr
    job = wait_for(stack.settings.database_url, job_id)
    assert (job.status, job.total, job.completed) == ("completed", 4, 4)
    engine = create_engine(stack.settings.database_url)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Job)
                            .where(Job.idempotency_key == "nightly-42")).one() == 1
        assert count(session, Candidate, job_id) == 12
    engine.dispose()


def test_cancel_keeps_finished_chunks_and_starts_no_new_one(stack: Stack,
                                                            tmp_path: Path) -> None:
    # Long generations and one request per chunk, so cancelling lands mid-job. Generators
    # start up to 17 chunks a task (gathering): enough chunks that most are still waiting
    # when the first one is done.
    prompts = write_prompts(tmp_path / "in.jsonl", 120, params={"max_new_tokens": 120})
    job_id = stack.manage("jobs", "submit", str(prompts), "--chunk-size", "1").stdout.strip()
    engine = create_engine(stack.settings.database_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with Session(engine) as session:
            done = session.exec(select(func.count()).select_from(Chunk).where(
                Chunk.job_id == job_id, Chunk.status == "done")).one()
        if done:
            break
        time.sleep(0.05)
    assert "cancel" in stack.manage("jobs", "cancel", job_id).stdout
    job = wait_for(stack.settings.database_url, job_id)
    assert job.status == "cancelled" and job.cancelling_at and job.cancelled_at
    with Session(engine) as session:
        requests = session.exec(select(Request).where(Request.job_id == job_id)).all()
        statuses = [r.status for r in requests]
        assert "pending" not in statuses
        assert 1 <= statuses.count("completed") < 120
        assert statuses.count("cancelled") >= 1
        assert job.completed == statuses.count("completed")
        assert count(session, Fusion, job_id) == statuses.count("completed")
    engine.dispose()
    out = tmp_path / "partial.jsonl"
    stack.manage("jobs", "results", job_id, "-o", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 120
    assert sum(1 for line in lines if line["fused_output"] is not None) == job.completed
