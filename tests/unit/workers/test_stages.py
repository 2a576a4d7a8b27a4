"""The stage functions on a real database: idempotent, and a broken model fails only its
own candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
from celery import Celery
from sqlalchemy import func
from sqlmodel import col, select

from db.engine import session_scope
from db.models import Candidate, Chunk, Comparison, Fusion, Job, Ranking, Request
from orchestration.registry import get_registry
from orchestration.settings import Settings
from orchestration.submission import JobOptions, submit
from workers.fusion.tasks import fuse_chunk
from workers.generation.tasks import generate, generate_chunk
from workers.ranking.tasks import rank_chunk

REGISTRY = """
[[models]]
name = "tiny-a"
role = "generator"
backend = "transformers"
path = "builtin:tiny-a"
params = { max_new_tokens = 8 }

[[models]]
name = "tiny-b"
role = "generator"
backend = "transformers"
path = "builtin:tiny-b"
params = { max_new_tokens = 8 }

[[models]]
name = "broken"
role = "generator"
backend = "transformers"
path = "/nonexistent/models/broken"

[[models]]
name = "tiny-ranker"
role = "ranker"
backend = "pairranker"
path = "builtin:tiny-ranker"

[[models]]
name = "tiny-fuser"
role = "fuser"
backend = "genfuser"
path = "builtin:tiny-fuser"
params = { num_beams = 1, max_new_tokens = 8 }
"""


@pytest.fixture
def stage_settings(settings: Settings, tmp_path: Path, celery_app: Celery) -> Settings:
    path = tmp_path / "registry.toml"
    path.write_text(REGISTRY)
    return settings.model_copy(update={"registry_path": path})


def _submit(settings: Settings, celery_app: Celery, n: int,
            models: list[str]) -> tuple[str, int]:
    lines = [json.dumps({"custom_id": f"c{i}", "instruction": f"Say {i}."}).encode()
             for i in range(n)]
    with session_scope(settings.database_url) as session:
        submitted = submit(session, celery_app, lines,
                           JobOptions(models=models, top_k=min(2, len(models)), chunk_size=n),
                           get_registry(settings.registry_path))
        job_id = submitted.job.id
    with session_scope(settings.database_url) as session:
        chunk = session.exec(select(Chunk).where(Chunk.job_id == job_id)).one()
    assert chunk.id is not None
    return job_id, chunk.id


def _counts(settings: Settings, job_id: str) -> dict[str, int]:
    with session_scope(settings.database_url) as session:
        ids = select(Request.id).where(Request.job_id == job_id)
        return {model.__name__: session.exec(
            select(func.count()).select_from(model).where(model.request_id.in_(ids))
        ).one() for model in (Candidate, Comparison, Ranking, Fusion)}


def _run(settings: Settings, job_id: str, chunk_id: int, models: list[str]) -> None:
    for model in models:
        generate_chunk(settings, job_id, chunk_id, model)
    rank_chunk(settings, job_id, chunk_id)
    fuse_chunk(settings, job_id, chunk_id)


def test_every_stage_run_twice_stores_everything_once(stage_settings: Settings,
                                                      celery_app: Celery) -> None:
    models = ["tiny-a", "tiny-b"]
    job_id, chunk_id = _submit(stage_settings, celery_app, 3, models)
    _run(stage_settings, job_id, chunk_id, models)
    first = _counts(stage_settings, job_id)
    assert first == {"Candidate": 6, "Comparison": 6, "Ranking": 3, "Fusion": 3}
    # A redelivery of every stage after the chunk finished.
    _run(stage_settings, job_id, chunk_id, models)
    assert _counts(stage_settings, job_id) == first
    with session_scope(stage_settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.completed, job.failed) == ("completed", 3, 0)


def test_generation_redelivered_mid_chunk_fills_only_the_gaps(stage_settings: Settings,
                                                             celery_app: Celery) -> None:
    job_id, chunk_id = _submit(stage_settings, celery_app, 2, ["tiny-a", "tiny-b"])
    assert generate_chunk(stage_settings, job_id, chunk_id, "tiny-a")["generated"] == 2
    assert generate_chunk(stage_settings, job_id, chunk_id, "tiny-a")["generated"] == 0


def test_a_model_with_a_wrong_path_fails_its_candidates_and_the_job_goes_on(
        stage_settings: Settings, celery_app: Celery) -> None:
    models = ["tiny-a", "tiny-b", "broken"]
    job_id, chunk_id = _submit(stage_settings, celery_app, 2, models)
    _run(stage_settings, job_id, chunk_id, models)
    with session_scope(stage_settings.database_url) as session:
        broken = session.exec(select(Candidate).where(Candidate.model == "broken")
                              .where(Candidate.request_id.in_(
                                  select(Request.id).where(Request.job_id == job_id)))).all()
        assert len(broken) == 2
        assert all(not c.ok and "/nonexistent/models/broken" in (c.error or "") for c in broken)
        rankings = session.exec(select(Ranking).where(Ranking.request_id.in_(
            select(Request.id).where(Request.job_id == job_id)))).all()
        assert all(len(r.entries) == 2 for r in rankings)
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.completed, job.failed) == ("completed", 2, 0)


def test_a_request_without_any_candidate_fails_with_the_reasons(stage_settings: Settings,
                                                                celery_app: Celery) -> None:
    job_id, chunk_id = _submit(stage_settings, celery_app, 1, ["broken"])
    _run(stage_settings, job_id, chunk_id, ["broken"])
    with session_scope(stage_settings.database_url) as session:
        request = session.exec(select(Request).where(Request.job_id == job_id)).one()
        assert request.status == "failed"
        assert request.error is not None and "broken" in request.error
        assert "/nonexistent/models/broken" in request.error
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.completed, job.failed) == ("completed", 0, 1)


def test_task_logs_carry_job_chunk_and_task_ids(stage_settings: Settings,
                                                celery_app: Celery) -> None:
    capture = structlog.testing.LogCapture()
    previous = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture],
                        wrapper_class=structlog.make_filtering_bound_logger(0))
    try:
        # A chunk that does not exist: the task runs, logs that nothing is left, ends.
        generate.apply(kwargs={"job_id": "job_missing", "chunk_id": 987654321,
                               "model": "tiny-a"}, task_id="task-under-test")
    finally:
        structlog.configure(**previous)
    skipped = [e for e in capture.entries if e["event"] == "generate.nothing_left"]
    assert skipped, capture.entries
    assert skipped[0]["job_id"] == "job_missing"
    assert skipped[0]["chunk_id"] == 987654321
    assert skipped[0]["task_id"] == "task-under-test"
    assert skipped[0]["task"] == "blendq.generate"
    assert structlog.contextvars.get_contextvars() == {}


def test_an_expired_job_starts_no_new_chunk_and_keeps_finished_ones(
        stage_settings: Settings, celery_app: Celery) -> None:
    from datetime import timedelta

    from orchestration.lifecycle import expire_due_jobs

    lines = [json.dumps({"custom_id": f"e{i}", "instruction": "Hi."}).encode() for i in range(4)]
    with session_scope(stage_settings.database_url) as session:
        job_id = submit(session, celery_app, lines,
                        JobOptions(models=["tiny-a"], top_k=1, chunk_size=2),
                        get_registry(stage_settings.registry_path)).job.id
    with session_scope(stage_settings.database_url) as session:
        first, second = session.exec(select(Chunk).where(Chunk.job_id == job_id)
                                     .order_by(Chunk.index)).all()
    _run(stage_settings, job_id, first.id or 0, ["tiny-a"])
    with session_scope(stage_settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.expires_at is not None
        assert job_id not in expire_due_jobs(session, job.expires_at - timedelta(seconds=1))
        assert job_id in expire_due_jobs(session, job.expires_at + timedelta(seconds=1))
    # The second chunk's canvas, delivered late, does nothing.
    _run(stage_settings, job_id, second.id or 0, ["tiny-a"])
    with session_scope(stage_settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.total, job.completed, job.failed) == ("expired", 4, 2, 0)
        assert job.expired_at is not None
        statuses = sorted(r.status for r in session.exec(
            select(Request).where(Request.job_id == job_id)).all())
        assert statuses == ["cancelled", "cancelled", "completed", "completed"]


def test_a_rank_task_that_fails_for_good_closes_its_chunk(stage_settings: Settings,
                                                          celery_app: Celery) -> None:
    from workers.generation.tasks import generate
    from workers.ranking.tasks import rank

    job_id, chunk_id = _submit(stage_settings, celery_app, 2, ["tiny-a"])
    generate_chunk(stage_settings, job_id, chunk_id, "tiny-a")
    # What Celery calls once retries are spent; generation never closes a chunk itself.
    generate.on_failure(RuntimeError("x"), "t0", (), {"job_id": job_id, "chunk_id": chunk_id},
                        None)
    with session_scope(stage_settings.database_url) as session:
        chunk = session.get(Chunk, chunk_id)
        assert chunk is not None and chunk.status == "running"
    rank.on_failure(RuntimeError("ranker exploded"), "t1", (),
                    {"job_id": job_id, "chunk_id": chunk_id}, None)
    with session_scope(stage_settings.database_url) as session:
        requests = session.exec(select(Request).where(Request.job_id == job_id)).all()
        assert {r.status for r in requests} == {"failed"}
        assert all("blendq.rank failed: RuntimeError: ranker exploded" in (r.error or "")
                   for r in requests)
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.completed, job.failed) == ("completed", 0, 2)


def test_entries_that_share_weights_share_one_loaded_model(tmp_path: Path,
                                                            settings: Settings) -> None:
    from orchestration.registry import parse_registry
    from workers.model_store import get_model

    registry = parse_registry("""
[[models]]
name = "same-greedy"
role = "generator"
backend = "transformers"
path = "builtin:tiny-a"
params = { temperature = 0.0 }

[[models]]
name = "same-hot"
role = "generator"
backend = "transformers"
path = "builtin:tiny-a"
params = { temperature = 1.0, seed = 3 }

[[models]]
name = "other"
role = "generator"
backend = "transformers"
path = "builtin:tiny-b"
""", "test")
    greedy = get_model(registry.get("same-greedy"), settings)
    assert get_model(registry.get("same-hot"), settings) is greedy
    assert get_model(registry.get("other"), settings) is not greedy


def test_generation_reads_chat_messages_and_params_as_stored(stage_settings: Settings,
                                                             celery_app: Celery) -> None:
    """The work query is SQL text: its JSON columns must still come back as Python
    values, the chat messages of an OpenAI Batch line and the line's decoding params."""
    from workers.generation.tasks import _gather_work

    line = {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "any", "max_tokens": 7,
                     "messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Name a colour."}]}}
    with session_scope(stage_settings.database_url) as session:
        job_id = submit(session, celery_app, [json.dumps(line).encode()],
                        JobOptions(models=["tiny-a"], top_k=1, chunk_size=1),
                        get_registry(stage_settings.registry_path)).job.id
    with session_scope(stage_settings.database_url) as session:
        chunk_id = session.exec(select(Chunk.id).where(Chunk.job_id == job_id)).one()
    assert chunk_id is not None
    [(read_chunk, [prompted])] = _gather_work(stage_settings, "tiny-a", [chunk_id], [])
    assert read_chunk == chunk_id
    assert prompted.messages == line["body"]["messages"]  # type: ignore[index]
    assert prompted.params["max_new_tokens"] == 7


@pytest.mark.parametrize("ending", ["fuse fails for good", "sweeper abandons the chunk"])
def test_requests_failing_after_their_ranking_keep_the_rankers_choice(
        stage_settings: Settings, celery_app: Celery, ending: str) -> None:
    from orchestration import lifecycle
    from workers.fusion.tasks import fuse

    models = ["tiny-a", "tiny-b"]
    job_id, chunk_id = _submit(stage_settings, celery_app, 2, models)
    for model in models:
        generate_chunk(stage_settings, job_id, chunk_id, model)
    rank_chunk(stage_settings, job_id, chunk_id)
    if ending == "fuse fails for good":
        fuse.on_failure(RuntimeError("fuser host gone"), "t2", (),
                        {"job_id": job_id, "chunk_id": chunk_id}, None)
    else:
        with session_scope(stage_settings.database_url) as session:
            lifecycle.abandon_chunk(session, chunk_id, "swept: the fuse message was lost")
    with session_scope(stage_settings.database_url) as session:
        requests = session.exec(select(Request).where(Request.job_id == job_id)).all()
        best = {k.request_id: k.entries[0]["candidate_id"] for k in session.exec(
            select(Ranking).where(col(Ranking.request_id).in_([r.id for r in requests])))}
        assert len(best) == 2
        assert {r.status for r in requests} == {"failed"}
        assert {r.id: r.chosen_candidate_id for r in requests} == best
