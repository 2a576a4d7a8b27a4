"""submit: job, chunks, requests and one outbox canvas per chunk in the caller's transaction;
invalid files and bad options store what they should and nothing more."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from typing import Any

import pytest
from celery import Celery
from celery.canvas import _chord
from sqlalchemy import create_engine, delete, func
from sqlmodel import Session, col, select

from db.models import Chunk, ChunkStatus, Job, JobStatus, Outbox, Request, RequestStatus
from orchestration import validation
from orchestration.canvas import from_payload
from orchestration.registry import Registry, load_registry, parse_registry
from orchestration.submission import (
    JobOptions,
    SubmissionError,
    chunk_bounds,
    resolve_options,
    submit,
)

MODELS = ["tiny-a", "tiny-b", "tiny-c"]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(None)


def native_lines(n: int, prefix: str = "r") -> list[bytes]:
    return [json.dumps({"custom_id": f"{prefix}{i}", "instruction": f"question {i}"}).encode()
            + b"\n" for i in range(n)]


def count(session: Session, model: Any, *where: Any) -> int:
    return session.exec(select(func.count()).select_from(model).where(*where)).one()


def rows_of(session: Session, job_id: str) -> tuple[int, int, int]:
    return (count(session, Request, Request.job_id == job_id),
            count(session, Chunk, Chunk.job_id == job_id),
            count(session, Outbox, Outbox.job_id == job_id))


def test_valid_file_stores_job_chunks_requests_and_outbox(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    options = JobOptions(models=MODELS, chunk_size=4, tenant="acme", idempotency_key="k-1",
                         metadata={"team": "qa"})
    result = submit(session, celery_app, native_lines(10), options, registry,
                    input_file="in.jsonl")
    assert result.created
    assert result.validation is not None and result.validation.ok
    job = session.get(Job, result.job.id)
    assert job is not None
    assert job.status == JobStatus.IN_PROGRESS
    assert job.in_progress_at is not None and job.failed_at is None
    assert job.expires_at is not None
    assert round((job.expires_at - job.created_at).total_seconds()) == 24 * 3600
    assert (job.total, job.completed, job.failed) == (10, 0, 0)
    assert (job.tenant, job.idempotency_key, job.input_file) == ("acme", "k-1", "in.jsonl")
    assert job.models == MODELS
    assert (job.ranker, job.fuser, job.top_k, job.chunk_size) == (
        "tiny-ranker", "tiny-fuser", 3, 4)
    assert job.meta == {"team": "qa"}
    assert job.errors is None

    chunks = session.exec(select(Chunk).where(Chunk.job_id == job.id)
                          .order_by(col(Chunk.index))).all()
    assert [(c.index, c.size, c.status) for c in chunks] == [
        (0, 4, ChunkStatus.PENDING), (1, 4, ChunkStatus.PENDING), (2, 2, ChunkStatus.PENDING)]

    requests = session.exec(select(Request).where(Request.job_id == job.id)
                            .order_by(col(Request.line_no))).all()
    assert [r.line_no for r in requests] == list(range(1, 11))
    assert [r.custom_id for r in requests] == [f"r{i}" for i in range(10)]
    assert [r.instruction for r in requests][:2] == ["question 0", "question 1"]
    assert all(r.status == RequestStatus.PENDING for r in requests)
    chunk_ids = [c.id for c in chunks]
    assert [r.chunk_id for r in requests] == [chunk_ids[0]] * 4 + [chunk_ids[1]] * 4 + [
        chunk_ids[2]] * 2

    outbox = session.exec(select(Outbox).where(Outbox.job_id == job.id)
                          .order_by(col(Outbox.id))).all()
    assert [(o.kind, o.chunk_id, o.dedup_key, o.status, o.attempts) for o in outbox] == [
        ("canvas", cid, f"chunk:{cid}", "pending", 0) for cid in chunk_ids]
    for row in outbox:
        canvas = from_payload(celery_app, row.payload)
        assert isinstance(canvas, _chord)
        header = list(canvas.tasks)
        assert [s.task for s in header] == ["blendq.generate"] * 3
        assert [s.options["queue"] for s in header] == [f"gen.{m}" for m in MODELS]
        assert [dict(s.kwargs) for s in header] == [
            {"job_id": job.id, "chunk_id": row.chunk_id, "model": m} for m in MODELS]
        # The body is rank alone: the rank task writes the hop to fuse to the outbox.
        body = canvas.body
        assert (body.task, body.options["queue"], dict(body.kwargs)) == (
            "blendq.rank", "rank", {"job_id": job.id, "chunk_id": row.chunk_id})
    assert job.chunks_left == len(chunk_ids)


def test_openai_lines_keep_messages_and_params(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    messages = [{"role": "system", "content": "Be terse."},
                {"role": "user", "content": "What is 2+2?"}]
    line = json.dumps({"custom_id": "o1", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": messages, "max_tokens": 12}}).encode()
    job = submit(session, celery_app, [b"\n", line], JobOptions(models=["tiny-a"], top_k=1),
                 registry).job
    [req] = session.exec(select(Request).where(Request.job_id == job.id)).all()
    # The last user turn is the instruction; the turns before it are the input, so the
    # ranker and fuser see what the generators saw (db/prompts.py).
    assert (req.line_no, req.custom_id, req.instruction, req.input) == (
        2, "o1", "What is 2+2?", "System: Be terse.")
    assert req.messages == messages
    assert req.params == {"max_new_tokens": 12}
    assert rows_of(session, job.id) == (1, 1, 1)


def test_chunk_size_larger_than_file_makes_one_chunk(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    job = submit(session, celery_app, native_lines(3), JobOptions(models=MODELS, chunk_size=8),
                 registry).job
    assert [c.size for c in session.exec(select(Chunk).where(Chunk.job_id == job.id))] == [3]
    assert rows_of(session, job.id) == (3, 1, 1)


def test_invalid_file_stores_a_failed_job_and_nothing_else(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    dup = json.dumps({"custom_id": "r0", "instruction": "dup"}).encode()
    lines = [*native_lines(3), b"not json\n", b"\n", dup]
    result = submit(session, celery_app, lines, JobOptions(models=MODELS), registry)
    assert result.created
    job = session.get(Job, result.job.id)
    assert job is not None
    assert job.status == JobStatus.FAILED
    assert job.failed_at is not None and job.in_progress_at is None
    assert job.total == 0
    assert [(e["line"], e["field"]) for e in job.errors or []] == [
        (4, "(line)"), (6, "custom_id")]
    assert "already used on line 1" in (job.errors or [])[1]["message"]
    assert rows_of(session, job.id) == (0, 0, 0)


def test_errors_beyond_the_kept_ones_are_summarised(
        session: Session, celery_app: Celery, registry: Registry,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "MAX_ERRORS_KEPT", 2)
    job = submit(session, celery_app, [b"x\n"] * 5, JobOptions(models=MODELS), registry).job
    assert job.errors is not None
    assert [(e["line"], e["field"]) for e in job.errors] == [
        (1, "(line)"), (2, "(line)"), (0, "(file)")]
    assert job.errors[-1]["message"] == "3 more errors"


def test_empty_file_fails_the_job(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    job = submit(session, celery_app, [], JobOptions(models=MODELS), registry).job
    assert job.status == JobStatus.FAILED
    assert [(e["line"], e["field"]) for e in job.errors or []] == [(0, "(file)")]


def test_same_idempotency_key_returns_the_same_job(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    options = JobOptions(models=MODELS, chunk_size=2, idempotency_key="same", tenant="t1")
    first = submit(session, celery_app, native_lines(5), options, registry)
    assert first.created
    before = rows_of(session, first.job.id)
    assert before == (5, 3, 3)
    jobs_before = count(session, Job)

    # Whatever the second file holds, even an invalid one, the key wins.
    again = submit(session, celery_app, [b"garbage\n"], options, registry)
    assert not again.created
    assert again.job.id == first.job.id
    assert again.validation is None
    assert again.job.status == JobStatus.IN_PROGRESS
    assert count(session, Job) == jobs_before
    assert rows_of(session, first.job.id) == before


def test_existing_key_wins_even_over_bad_options(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    submit(session, celery_app, native_lines(1),
           JobOptions(models=MODELS, idempotency_key="k"), registry)
    again = submit(session, celery_app, native_lines(1),
                   JobOptions(models=["unknown"], idempotency_key="k"), registry)
    assert not again.created


def test_same_key_in_another_tenant_is_a_new_job(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    one = submit(session, celery_app, native_lines(2),
                 JobOptions(models=MODELS, idempotency_key="shared", tenant="a"), registry)
    two = submit(session, celery_app, native_lines(2),
                 JobOptions(models=MODELS, idempotency_key="shared", tenant="b"), registry)
    assert one.created and two.created
    assert one.job.id != two.job.id
    assert rows_of(session, one.job.id) == rows_of(session, two.job.id) == (2, 1, 1)


def test_no_idempotency_key_always_makes_a_new_job(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    one = submit(session, celery_app, native_lines(1), JobOptions(models=MODELS), registry)
    two = submit(session, celery_app, native_lines(1), JobOptions(models=MODELS), registry)
    assert one.created and two.created and one.job.id != two.job.id


def test_fuser_none_keeps_the_top_candidate(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    job = submit(session, celery_app, native_lines(1),
                 JobOptions(models=MODELS, fuser="none", ranker="tiny-ranker"), registry).job
    assert job.fuser is None and job.ranker == "tiny-ranker"


# -- options --------------------------------------------------------------------------------

def test_resolve_options_fills_defaults(registry: Registry) -> None:
    resolved = resolve_options(JobOptions(models=["tiny-b"], top_k=1), registry)
    assert (resolved.ranker, resolved.fuser, resolved.models) == (
        "tiny-ranker", "tiny-fuser", ["tiny-b"])


BAD_OPTIONS: list[tuple[str, JobOptions, list[str]]] = [
    ("no models", JobOptions(models=[]), ["--models"]),
    ("unknown model", JobOptions(models=["tiny-a", "nope"], top_k=1), ["unknown model 'nope'"]),
    ("duplicate model", JobOptions(models=["tiny-a", "tiny-b", "tiny-a"]),
     ["--models", "twice"]),
    ("ranker is a generator", JobOptions(models=MODELS, ranker="tiny-a"),
     ["'tiny-a' is a generator, not a ranker"]),
    ("unknown ranker", JobOptions(models=MODELS, ranker="pairrm"), ["unknown model 'pairrm'"]),
    ("fuser is a ranker", JobOptions(models=MODELS, fuser="tiny-ranker"),
     ["'tiny-ranker' is a ranker, not a fuser"]),
    ("generator used as model is a fuser", JobOptions(models=["tiny-fuser"], top_k=1),
     ["'tiny-fuser' is a fuser, not a generator"]),
    ("top_k 0", JobOptions(models=MODELS, top_k=0), ["--top-k", "got 0"]),
    ("top_k above models", JobOptions(models=MODELS, top_k=4), ["--top-k", "(3)", "got 4"]),
    ("chunk_size 0", JobOptions(models=MODELS, chunk_size=0), ["--chunk-size", "got 0"]),
    ("chunk_size negative", JobOptions(models=MODELS, chunk_size=-3), ["--chunk-size"]),
    ("strategy", JobOptions(models=MODELS, strategy="random"), ["--strategy"]),
    ("aggregation", JobOptions(models=MODELS, aggregation="borda"), ["--aggregation"]),
]


@pytest.mark.parametrize(("options", "expected"), [c[1:] for c in BAD_OPTIONS],
                         ids=[c[0] for c in BAD_OPTIONS])
def test_bad_options_raise_and_store_nothing(
        session: Session, celery_app: Celery, registry: Registry, options: JobOptions,
        expected: list[str]) -> None:
    with pytest.raises(SubmissionError) as info:
        resolve_options(options, registry)
    for text in expected:
        assert text in str(info.value)

    options = dataclasses.replace(options, idempotency_key="bad-options")
    counts = (count(session, Job), count(session, Request), count(session, Chunk),
              count(session, Outbox))
    with pytest.raises(SubmissionError, match=expected[0].replace("(", r"\(").replace(
            ")", r"\)")):
        submit(session, celery_app, native_lines(3), options, registry)
    assert (count(session, Job), count(session, Request), count(session, Chunk),
            count(session, Outbox)) == counts
    # The key was not taken: a corrected submission with it creates the job.
    fixed = submit(session, celery_app, native_lines(3),
                   JobOptions(models=MODELS, idempotency_key="bad-options"), registry)
    assert fixed.created


@pytest.mark.parametrize(("options", "flag"), [
    (JobOptions(models=["nope"], top_k=1), "--models"),
    (JobOptions(models=MODELS, ranker="tiny-a"), "--ranker"),
    (JobOptions(models=MODELS, fuser="tiny-a"), "--fuser"),
])
def test_registry_errors_name_the_option(registry: Registry, options: JobOptions,
                                         flag: str) -> None:
    with pytest.raises(SubmissionError) as info:
        resolve_options(options, registry)
    assert flag in str(info.value)


def test_no_default_ranker_asks_for_one() -> None:
    two_rankers = parse_registry(
        "".join(f'[[models]]\nname = "{n}"\nrole = "{r}"\nbackend = "{b}"\npath = "/p"\n'
                for n, r, b in [("g", "generator", "transformers"), ("r1", "ranker", "pairranker"),
                                ("r2", "ranker", "pairranker")]), "two-rankers")
    with pytest.raises(SubmissionError, match="--ranker: the registry names no default ranker"):
        resolve_options(JobOptions(models=["g"], top_k=1), two_rankers)
    # No fuser in the registry at all: the job keeps the top candidate.
    resolved = resolve_options(JobOptions(models=["g"], top_k=1, ranker="r2"), two_rankers)
    assert (resolved.ranker, resolved.fuser) == ("r2", "none")


# -- chunk_bounds ---------------------------------------------------------------------------

@pytest.mark.parametrize(("total", "size", "bounds"), [
    (0, 4, []),
    (1, 4, [(0, 1)]),
    (4, 4, [(0, 4)]),
    (5, 4, [(0, 4), (4, 5)]),
    (10, 4, [(0, 4), (4, 8), (8, 10)]),
    (3, 1, [(0, 1), (1, 2), (2, 3)]),
    (3, 100, [(0, 3)]),
])
def test_chunk_bounds(total: int, size: int, bounds: list[tuple[int, int]]) -> None:
    assert chunk_bounds(total, size) == bounds


@pytest.mark.parametrize("total", [1, 7, 64, 65, 1000])
@pytest.mark.parametrize("size", [1, 8, 64])
def test_chunk_bounds_cover_every_request_once(total: int, size: int) -> None:
    bounds = chunk_bounds(total, size)
    covered = [i for start, end in bounds for i in range(start, end)]
    assert covered == list(range(total))
    assert all(0 < end - start <= size for start, end in bounds)
    assert all(end - start == size for start, end in bounds[:-1])


def test_chunk_bounds_refuses_size_zero() -> None:
    with pytest.raises(ValueError):
        chunk_bounds(5, 0)


def test_text_postgres_cannot_store_fails_the_job_instead_of_the_insert(
        session: Session, celery_app: Celery, registry: Registry) -> None:
    lines = [b'{"custom_id": "a", "instruction": "x\\u0000y"}\n',
             b'{"custom_id": "b", "instruction": "x\\ud800"}\n',
             *native_lines(1, prefix="ok")]
    job = submit(session, celery_app, lines, JobOptions(models=MODELS), registry).job
    session.flush()
    assert job.status == JobStatus.FAILED
    assert [(e["line"], e["field"]) for e in job.errors or []] == [
        (1, "instruction"), (2, "instruction")]
    assert rows_of(session, job.id) == (0, 0, 0)


def test_concurrent_submissions_with_one_key_make_one_job(
        pg_url: str, celery_app: Celery, registry: Registry) -> None:
    """The second submission cannot see the first's uncommitted job, so it inserts, waits on
    the unique key, and must then return the first's job. Two real transactions: this test
    commits (to this run's own database) and removes its rows afterwards."""
    engine = create_engine(pg_url)
    key = f"race-{uuid.uuid4()}"
    options = JobOptions(models=MODELS, chunk_size=2, tenant="race", idempotency_key=key)
    first = Session(engine, expire_on_commit=False)
    results: dict[str, Any] = {}
    thread: threading.Thread | None = None

    def second_submit() -> None:
        with Session(engine, expire_on_commit=False) as second:
            results["second"] = submit(second, celery_app, native_lines(3), options, registry)
            second.commit()

    try:
        one = submit(first, celery_app, native_lines(3), options, registry)
        assert one.created
        thread = threading.Thread(target=second_submit)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "the second insert did not wait on the idempotency key"
        first.commit()
        thread.join(timeout=10)
        assert not thread.is_alive()
        two = results["second"]
        assert not two.created and two.job.id == one.job.id
        with Session(engine) as check:
            assert count(check, Job, Job.tenant == "race", Job.idempotency_key == key) == 1
            assert rows_of(check, one.job.id) == (3, 2, 2)
    finally:
        first.close()
        if thread is not None:
            thread.join(timeout=10)
        with Session(engine) as cleanup:
            ids = cleanup.exec(select(Job.id).where(Job.idempotency_key == key)).all()
            cleanup.execute(delete(Outbox).where(col(Outbox.job_id).in_(ids)))
            cleanup.execute(delete(Job).where(col(Job.id).in_(ids)))  # cascades
            cleanup.commit()
        engine.dispose()
