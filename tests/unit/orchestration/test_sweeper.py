"""The sweeper on committed rows and the real broker: a lapsed chunk whose queue is empty
is re-published (only what is missing), one whose queue still holds messages waits, and
one past its bound fails with the reason so its job ends."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery import Celery
from kombu import Connection
from sqlmodel import select

from db.engine import session_scope
from db.models import (
    Candidate,
    Chunk,
    ChunkStage,
    ChunkStatus,
    Job,
    JobStatus,
    Outbox,
    Request,
    RequestStatus,
    utcnow,
)
from ops.bench.stack import private_vhost
from orchestration import sweeper
from orchestration.canvas import from_payload
from orchestration.celery_app import FUSE_TASK, GENERATE_TASK, RANK_TASK
from orchestration.settings import Settings


@pytest.fixture(scope="module")
def sweep_settings(settings: Settings) -> Iterator[Settings]:
    # A vhost of its own: the queues the sweeper reads hold only this module's messages.
    with private_vhost() as broker_url:
        yield settings.model_copy(update={"chunk_start_timeout": 30, "chunk_max_sweeps": 2,
                                          "broker_url": broker_url})


@pytest.fixture
def models() -> list[str]:
    # Models no other test uses: their queues exist only where a test declares them.
    tag = uuid.uuid4().hex[:8]
    return [f"sweep-a-{tag}", f"sweep-b-{tag}"]


def make_chunk(settings: Settings, models: list[str], *, stage: ChunkStage,
               status: ChunkStatus = ChunkStatus.RUNNING, lapsed: bool = True,
               sweeps: int = 0, requests: int = 2, candidates: dict[str, int] | None = None,
               ) -> tuple[str, int]:
    """A job of one chunk whose lease lapsed (or not), with candidates for the first
    ``candidates[model]`` requests of each model."""
    with session_scope(settings.database_url) as session:
        # A ranker of its own: no other test's ranking task may gather these chunks.
        job = Job(status=JobStatus.IN_PROGRESS, models=models, ranker="sweep-test-ranker",
                  total=requests, chunks_left=1)
        session.add(job)
        session.flush()
        lease = utcnow() + timedelta(seconds=-5 if lapsed else 300)
        chunk = Chunk(job_id=job.id, index=0, size=requests, status=status, stage=stage,
                      lease_until=lease, sweeps=sweeps)
        session.add(chunk)
        session.flush()
        rows = [Request(job_id=job.id, chunk_id=chunk.id, line_no=i, custom_id=f"c{i}",
                        instruction="q") for i in range(requests)]
        session.add_all(rows)
        session.flush()
        for model, n in (candidates or {}).items():
            session.add_all(Candidate(request_id=r.id, model=model, text="x")
                            for r in rows[:n])
        assert chunk.id is not None
        return job.id, chunk.id


def outbox_of(settings: Settings, chunk_id: int) -> list[Outbox]:
    with session_scope(settings.database_url) as session:
        return list(session.exec(select(Outbox).where(Outbox.chunk_id == chunk_id)).all())


def chunk_row(settings: Settings, chunk_id: int) -> Chunk:
    with session_scope(settings.database_url) as session:
        chunk = session.get(Chunk, chunk_id)
        assert chunk is not None
        session.expunge(chunk)
        return chunk


def sweep(settings: Settings, app: Celery) -> sweeper.SweepReport:
    return sweeper.sweep(settings, app, sweeper.broker_depths(settings.broker_url))


@pytest.fixture
def waiting_message(sweep_settings: Settings, models: list[str]) -> Iterator[str]:
    """One ready message on gen.<first model>, removed afterwards."""
    queue = f"gen.{models[0]}"
    with Connection(sweep_settings.broker_url) as conn:
        channel = conn.channel()
        channel.queue_declare(queue=queue, durable=False, auto_delete=False)
        channel.basic_publish(channel.prepare_message(b"{}"), exchange="", routing_key=queue)
        try:
            yield queue
        finally:
            conn.channel().queue_delete(queue)


def test_a_lapsed_chunk_is_republished_with_only_the_missing_generators(
        sweep_settings: Settings, celery_app: Celery, models: list[str]) -> None:
    job_id, chunk_id = make_chunk(sweep_settings, models, stage=ChunkStage.GENERATE,
                                  candidates={models[0]: 2, models[1]: 1})
    report = sweep(sweep_settings, celery_app)
    assert chunk_id in report.republished
    [row] = outbox_of(sweep_settings, chunk_id)
    assert (row.kind, row.dedup_key, row.job_id) == ("signature", f"sweep:{chunk_id}:1", job_id)
    canvas = from_payload(celery_app, row.payload)
    assert [(s.task, s.kwargs["model"]) for s in canvas.tasks] == [(GENERATE_TASK, models[1])]
    assert canvas.body.task == RANK_TASK
    chunk = chunk_row(sweep_settings, chunk_id)
    assert (chunk.sweeps, chunk.epoch, chunk.stage) == (1, 1, ChunkStage.GENERATE)
    assert chunk.lease_until is not None and chunk.lease_until > utcnow() + timedelta(seconds=20)
    # Not lapsed any more: a second pass leaves it alone.
    assert chunk_id not in sweep(sweep_settings, celery_app).republished
    assert len(outbox_of(sweep_settings, chunk_id)) == 1


def test_a_chunk_with_every_candidate_goes_on_to_ranking(
        sweep_settings: Settings, celery_app: Celery, models: list[str]) -> None:
    _, chunk_id = make_chunk(sweep_settings, models, stage=ChunkStage.GENERATE,
                             candidates={models[0]: 2, models[1]: 2})
    sweep(sweep_settings, celery_app)
    [row] = outbox_of(sweep_settings, chunk_id)
    assert from_payload(celery_app, row.payload).task == RANK_TASK
    assert chunk_row(sweep_settings, chunk_id).stage == ChunkStage.RANK


@pytest.mark.parametrize(("stage", "task"), [(ChunkStage.RANK, RANK_TASK),
                                             (ChunkStage.FUSE, FUSE_TASK)])
def test_later_stages_are_republished_as_their_own_message(
        sweep_settings: Settings, celery_app: Celery, models: list[str], stage: ChunkStage,
        task: str) -> None:
    _, chunk_id = make_chunk(sweep_settings, models, stage=stage,
                             candidates={models[0]: 2, models[1]: 2})
    report = sweep(sweep_settings, celery_app)
    assert chunk_id in report.republished
    [row] = outbox_of(sweep_settings, chunk_id)
    assert from_payload(celery_app, row.payload).task == task


def test_a_chunk_whose_queue_still_holds_messages_waits(
        sweep_settings: Settings, celery_app: Celery, models: list[str],
        waiting_message: str) -> None:
    _, chunk_id = make_chunk(sweep_settings, models, stage=ChunkStage.GENERATE,
                             status=ChunkStatus.DISPATCHED)
    report = sweep(sweep_settings, celery_app)
    assert chunk_id in report.extended and chunk_id not in report.republished
    chunk = chunk_row(sweep_settings, chunk_id)
    assert (chunk.sweeps, chunk.status) == (0, ChunkStatus.DISPATCHED)
    assert chunk.lease_until is not None and chunk.lease_until > utcnow()
    assert outbox_of(sweep_settings, chunk_id) == []


def test_past_its_bound_a_chunk_fails_with_the_reason_and_the_job_ends(
        sweep_settings: Settings, celery_app: Celery, models: list[str]) -> None:
    job_id, chunk_id = make_chunk(sweep_settings, models, stage=ChunkStage.GENERATE,
                                  sweeps=2, candidates={models[0]: 2})
    report = sweep(sweep_settings, celery_app)
    assert chunk_id in report.failed
    assert outbox_of(sweep_settings, chunk_id) == []
    with session_scope(sweep_settings.database_url) as session:
        errors = session.exec(select(Request.status, Request.error)
                              .where(Request.chunk_id == chunk_id)).all()
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.failed, job.completed, job.chunks_left) == (
            JobStatus.COMPLETED, 2, 0, 0)
    assert {s for s, _ in errors} == {RequestStatus.FAILED}
    assert all("stalled in its generate stage" in (e or "") for _, e in errors)
    assert chunk_row(sweep_settings, chunk_id).status == ChunkStatus.DONE


def test_chunks_that_are_not_lapsed_or_not_active_are_left_alone(
        sweep_settings: Settings, celery_app: Celery, models: list[str]) -> None:
    _, fresh = make_chunk(sweep_settings, models, stage=ChunkStage.GENERATE, lapsed=False)
    _, done = make_chunk(sweep_settings, models, stage=ChunkStage.FUSE,
                         status=ChunkStatus.DONE)
    _, pending = make_chunk(sweep_settings, models, stage=ChunkStage.GENERATE,
                            status=ChunkStatus.PENDING)
    report = sweep(sweep_settings, celery_app)
    touched = set(report.republished) | set(report.extended) | set(report.failed)
    assert not touched & {fresh, done, pending}


def test_two_sweepers_at_once_republish_a_chunk_once(
        sweep_settings: Settings, celery_app: Celery, models: list[str]) -> None:
    _, chunk_id = make_chunk(sweep_settings, models, stage=ChunkStage.GENERATE)
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        sweep(sweep_settings, celery_app)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outbox_of(sweep_settings, chunk_id)) == 1
    assert chunk_row(sweep_settings, chunk_id).sweeps == 1


@pytest.fixture
def host_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[timedelta]]:
    """This host's clock (``utcnow`` and the lease clock's reading of it), off the real one
    by the list's one value, which the test sets."""
    from db import clock

    real, skew = clock.host_now, [timedelta(0)]
    monkeypatch.setattr(clock, "host_now", lambda: real() + skew[0])
    clock.forget_offsets()
    try:
        yield skew
    finally:
        clock.forget_offsets()


def test_leases_are_on_the_database_clock_whatever_the_hosts_clocks_say(
        sweep_settings: Settings, celery_app: Celery, models: list[str],
        host_clock: list[timedelta]) -> None:
    from sqlalchemy import text

    from db.clock import database_now
    from orchestration import lifecycle

    _, chunk_id = make_chunk(sweep_settings, models, stage=ChunkStage.GENERATE,
                             status=ChunkStatus.DISPATCHED)
    # A worker host whose clock runs 30 minutes slow starts the chunk and renews its lease.
    host_clock[0] = timedelta(minutes=-30)
    with session_scope(sweep_settings.database_url) as session:
        server = session.execute(text("SELECT clock_timestamp()")).scalar_one()
        assert abs(database_now(session) - server) < timedelta(seconds=2)  # measured
        assert abs(database_now(session) - server) < timedelta(seconds=2)  # from the offset
        assert lifecycle.start_chunk(session, chunk_id, lease_seconds=60)
        assert lifecycle.renew_leases(session, [chunk_id], 60) == 1
    lease = chunk_row(sweep_settings, chunk_id).lease_until
    assert lease is not None and abs(lease - (server + timedelta(seconds=60))) < \
        timedelta(seconds=5)
    # A dispatcher host 30 minutes fast sweeps: the lease has not lapsed, so nothing is
    # re-published under the worker that holds it.
    host_clock[0] = timedelta(minutes=30)
    from db import clock

    clock.forget_offsets()  # another process: it measures its own offset
    report = sweep(sweep_settings, celery_app)
    assert chunk_id not in set(report.republished) | set(report.extended) | set(report.failed)
    assert outbox_of(sweep_settings, chunk_id) == []
