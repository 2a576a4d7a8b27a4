"""Job and chunk states on real rows: transitions, starting and finishing chunks, recounting,
finalising and cancelling."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, col, select

from db.models import (
    ACTIVE_CHUNK_STATUSES,
    Chunk,
    ChunkStatus,
    Job,
    JobStatus,
    Outbox,
    OutboxStatus,
    Request,
    RequestStatus,
    utcnow,
)
from orchestration.lifecycle import (
    _STAMP,
    TRANSITIONS,
    InvalidTransition,
    cancel_job,
    chunk_is_running,
    expire_due_jobs,
    finish_chunk,
    recount,
    start_chunk,
    start_chunks,
    transition,
)

P, C, F = RequestStatus.PENDING, RequestStatus.COMPLETED, RequestStatus.FAILED


def make_job(session: Session, status: JobStatus = JobStatus.IN_PROGRESS,
             chunks: list[tuple[ChunkStatus, list[RequestStatus]]] | None = None,
             ) -> tuple[Job, list[Chunk]]:
    job = Job(status=status, models=["tiny-a", "tiny-b"], ranker="tiny-ranker")
    session.add(job)
    session.flush()
    made = []
    line = 0
    for index, (chunk_status, request_statuses) in enumerate(chunks or []):
        chunk = Chunk(job_id=job.id, index=index, size=len(request_statuses),
                      status=chunk_status)
        session.add(chunk)
        session.flush()
        for request_status in request_statuses:
            line += 1
            session.add(Request(job_id=job.id, chunk_id=chunk.id, line_no=line,
                                custom_id=f"c{line}", instruction="q", status=request_status))
        made.append(chunk)
    job.total = line
    # What the pipeline would have counted so far: closed chunks' requests, and the rest.
    closed = [st for cs, sts in (chunks or []) if cs not in ACTIVE_CHUNK_STATUSES for st in sts]
    job.completed, job.failed = closed.count(C), closed.count(F)
    job.chunks_left = sum(1 for cs, _ in (chunks or []) if cs in ACTIVE_CHUNK_STATUSES)
    session.add(job)
    session.flush()
    return job, made


def reload(session: Session) -> None:
    """Write what the code under test left in the session, then read rows afresh."""
    session.flush()
    session.expire_all()


def request_statuses(session: Session, chunk: Chunk) -> list[str]:
    return list(session.exec(select(Request.status).where(Request.chunk_id == chunk.id)
                             .order_by(col(Request.line_no))).all())


def add_outbox(session: Session, job: Job, kind: str, chunk: Chunk | None = None,
               status: OutboxStatus = OutboxStatus.PENDING) -> Outbox:
    row = Outbox(kind=kind, job_id=job.id, chunk_id=chunk.id if chunk else None,
                 payload={"task": "x"}, status=status)
    session.add(row)
    session.flush()
    return row


# -- transition -----------------------------------------------------------------------------

ALLOWED = [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets)]
FORBIDDEN = [(a, b) for a, b in itertools.product(JobStatus, JobStatus) if (a, b) not in ALLOWED]


def test_transition_table_matches_the_batch_api() -> None:
    assert set(ALLOWED) == {
        ("validating", "in_progress"), ("validating", "failed"), ("validating", "cancelling"),
        ("in_progress", "finalizing"), ("in_progress", "cancelling"),
        ("in_progress", "expired"), ("in_progress", "failed"),
        ("finalizing", "completed"), ("finalizing", "failed"),
        ("cancelling", "cancelled"),
    }


@pytest.mark.parametrize(("old", "new"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_allowed_transition_sets_status_and_its_timestamp(old: JobStatus, new: JobStatus) -> None:
    job = Job(status=old)
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    transition(job, new, at)
    assert job.status == new
    assert getattr(job, _STAMP[new]) == at
    others = [name for status, name in _STAMP.items() if status != new]
    assert all(getattr(job, name) is None for name in others)


@pytest.mark.parametrize(("old", "new"), FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_forbidden_transition_raises_and_changes_nothing(old: JobStatus, new: JobStatus) -> None:
    job = Job(id="job_t", status=old)
    with pytest.raises(InvalidTransition, match=f"job job_t: {old} cannot become {new}"):
        transition(job, new)
    assert job.status == old
    assert all(getattr(job, name) is None for name in _STAMP.values())


def test_transition_without_a_time_uses_now() -> None:
    job = Job(status=JobStatus.VALIDATING)
    before = utcnow()
    transition(job, JobStatus.IN_PROGRESS)
    assert job.in_progress_at is not None
    assert before <= job.in_progress_at <= utcnow()


# -- start_chunk -----------------------------------------------------------------------------

@pytest.mark.parametrize("status", [ChunkStatus.PENDING, ChunkStatus.DISPATCHED])
def test_start_chunk_starts_a_waiting_chunk(session: Session, status: ChunkStatus) -> None:
    job, [chunk] = make_job(session, chunks=[(status, [P, P])])
    assert not chunk_is_running(session, chunk.id)  # type: ignore[arg-type]
    assert start_chunk(session, chunk.id) is True  # type: ignore[arg-type]
    reload(session)
    assert chunk.status == ChunkStatus.RUNNING
    assert chunk.started_at is not None
    assert chunk_is_running(session, chunk.id)  # type: ignore[arg-type]
    assert session.get(Job, job.id).status == JobStatus.IN_PROGRESS  # type: ignore[union-attr]


def test_start_chunk_again_while_running_says_yes_and_keeps_the_start(
        session: Session) -> None:
    _, [chunk] = make_job(session, chunks=[(ChunkStatus.PENDING, [P])])
    assert start_chunk(session, chunk.id) is True  # type: ignore[arg-type]
    reload(session)
    started = chunk.started_at
    # A second stage of the same chunk (or a redelivered task) asks again.
    assert start_chunk(session, chunk.id) is True  # type: ignore[arg-type]
    reload(session)
    assert chunk.status == ChunkStatus.RUNNING and chunk.started_at == started


@pytest.mark.parametrize("status", [ChunkStatus.DONE, ChunkStatus.CANCELLED])
def test_start_chunk_refuses_a_finished_chunk(session: Session, status: ChunkStatus) -> None:
    _, [chunk] = make_job(session, chunks=[(status, [C])])
    assert start_chunk(session, chunk.id) is False  # type: ignore[arg-type]
    reload(session)
    assert chunk.status == status and chunk.started_at is None


def test_start_chunk_of_an_unknown_chunk(session: Session) -> None:
    assert start_chunk(session, 987_654_321) is False
    assert finish_chunk(session, 987_654_321) is None


def test_start_chunk_of_a_cancelling_job_cancels_the_chunk(session: Session) -> None:
    job, [waiting, running] = make_job(session, JobStatus.CANCELLING, chunks=[
        (ChunkStatus.DISPATCHED, [P, C, P]), (ChunkStatus.RUNNING, [P])])
    assert start_chunk(session, waiting.id) is False  # type: ignore[arg-type]
    reload(session)
    assert waiting.status == ChunkStatus.CANCELLED
    assert waiting.finished_at is not None and waiting.started_at is None
    assert request_statuses(session, waiting) == [RequestStatus.CANCELLED, C,
                                                  RequestStatus.CANCELLED]
    errors = session.exec(select(Request.error).where(Request.chunk_id == waiting.id)
                          .order_by(col(Request.line_no))).all()
    assert errors == ["job cancelled before this chunk started", None,
                      "job cancelled before this chunk started"]
    # The other chunk still runs, so the job is not closed yet.
    assert running.status == ChunkStatus.RUNNING
    assert request_statuses(session, running) == [P]
    assert session.get(Job, job.id).status == JobStatus.CANCELLING  # type: ignore[union-attr]


def test_start_chunk_of_the_last_chunk_of_a_cancelling_job_closes_it(session: Session) -> None:
    job, [done, waiting] = make_job(session, JobStatus.CANCELLING, chunks=[
        (ChunkStatus.DONE, [C, F]), (ChunkStatus.PENDING, [P, P])])
    assert start_chunk(session, waiting.id) is False  # type: ignore[arg-type]
    reload(session)
    assert (done.status, waiting.status) == (ChunkStatus.DONE, ChunkStatus.CANCELLED)
    job = session.get(Job, job.id)  # type: ignore[assignment]
    assert job.status == JobStatus.CANCELLED
    assert job.cancelled_at is not None
    assert (job.total, job.completed, job.failed) == (4, 1, 1)


def test_start_chunks_starts_waiting_renews_running_and_skips_finished(
        session: Session) -> None:
    _, chunks = make_job(session, chunks=[
        (ChunkStatus.DISPATCHED, [P]), (ChunkStatus.RUNNING, [P]), (ChunkStatus.DONE, [C]),
        (ChunkStatus.PENDING, [P]), (ChunkStatus.CANCELLED, [C])])
    waiting, running, done, pending, cancelled = chunks
    running.started_at = datetime(2026, 1, 1, tzinfo=UTC)
    session.add(running)
    session.flush()
    ids = [c.id or 0 for c in chunks]
    assert start_chunks(session, list(reversed(ids)), lease_seconds=60) == [
        waiting.id, running.id, pending.id]
    reload(session)
    assert [c.status for c in chunks] == [ChunkStatus.RUNNING, ChunkStatus.RUNNING,
                                          ChunkStatus.DONE, ChunkStatus.RUNNING,
                                          ChunkStatus.CANCELLED]
    assert running.started_at == datetime(2026, 1, 1, tzinfo=UTC)  # kept, as start_chunk
    assert waiting.started_at is not None
    assert done.started_at is None and cancelled.started_at is None
    for chunk in (waiting, running, pending):
        assert chunk.lease_until is not None and chunk.lease_until > datetime.now(UTC)
    assert start_chunks(session, []) == []


def test_start_chunks_of_a_cancelling_job_cancels_the_unstarted_ones(session: Session) -> None:
    job, [waiting, running] = make_job(session, JobStatus.CANCELLING, chunks=[
        (ChunkStatus.DISPATCHED, [P]), (ChunkStatus.RUNNING, [P])])
    assert start_chunks(session, [waiting.id or 0, running.id or 0]) == [running.id]
    reload(session)
    assert (waiting.status, running.status) == (ChunkStatus.CANCELLED, ChunkStatus.RUNNING)
    assert request_statuses(session, waiting) == [RequestStatus.CANCELLED]
    assert session.get(Job, job.id).chunks_left == 1  # type: ignore[union-attr]


def test_start_chunk_of_an_expired_job_does_not_start_it(session: Session) -> None:
    job, [chunk] = make_job(session, JobStatus.EXPIRED, chunks=[(ChunkStatus.DISPATCHED, [P])])
    assert start_chunk(session, chunk.id) is False  # type: ignore[arg-type]
    reload(session)
    assert chunk.status == ChunkStatus.CANCELLED
    assert session.get(Job, job.id).status == JobStatus.EXPIRED  # type: ignore[union-attr]


# -- finish_chunk, recount and finalising ------------------------------------------------

def test_finish_chunk_recounts_and_finalises_only_after_the_last_chunk(
        session: Session) -> None:
    job, [first, second] = make_job(session, chunks=[
        (ChunkStatus.RUNNING, [C, F, C]), (ChunkStatus.RUNNING, [P, P])])
    assert finish_chunk(session, first.id) == job.id  # type: ignore[arg-type]
    reload(session)
    assert first.status == ChunkStatus.DONE and first.finished_at is not None
    assert second.status == ChunkStatus.RUNNING
    assert job.status == JobStatus.IN_PROGRESS
    assert (job.total, job.completed, job.failed) == (5, 2, 1)
    assert job.finalizing_at is None and job.completed_at is None

    # The second chunk's stages wrote their results, then it finishes.
    for request in session.exec(select(Request).where(Request.chunk_id == second.id)):
        request.status = RequestStatus.COMPLETED
        session.add(request)
    session.flush()
    finish_chunk(session, second.id)  # type: ignore[arg-type]
    reload(session)
    assert second.status == ChunkStatus.DONE
    assert job.status == JobStatus.COMPLETED
    assert (job.total, job.completed, job.failed) == (5, 4, 1)
    assert job.finalizing_at is not None and job.completed_at is not None
    assert job.finalizing_at <= job.completed_at
    assert job.cancelled_at is None and job.failed_at is None


@pytest.mark.parametrize("other", [ChunkStatus.PENDING, ChunkStatus.DISPATCHED])
def test_a_waiting_chunk_keeps_the_job_open(session: Session, other: ChunkStatus) -> None:
    job, [running, _] = make_job(session, chunks=[(ChunkStatus.RUNNING, [C]), (other, [P])])
    finish_chunk(session, running.id)  # type: ignore[arg-type]
    reload(session)
    assert job.status == JobStatus.IN_PROGRESS and job.completed == 1


def test_cancelled_chunks_do_not_keep_the_job_open(session: Session) -> None:
    job, [running, _] = make_job(session, chunks=[
        (ChunkStatus.RUNNING, [C]), (ChunkStatus.CANCELLED, [RequestStatus.CANCELLED])])
    finish_chunk(session, running.id)  # type: ignore[arg-type]
    reload(session)
    assert job.status == JobStatus.COMPLETED
    assert (job.total, job.completed, job.failed) == (2, 1, 0)


def test_finish_chunk_twice_changes_nothing_the_second_time(session: Session) -> None:
    job, [chunk] = make_job(session, chunks=[(ChunkStatus.RUNNING, [C, F])])
    finish_chunk(session, chunk.id)  # type: ignore[arg-type]
    reload(session)
    finished, completed_at = chunk.finished_at, job.completed_at
    assert job.status == JobStatus.COMPLETED
    assert finish_chunk(session, chunk.id) == job.id  # type: ignore[arg-type]
    reload(session)
    assert job.status == JobStatus.COMPLETED
    assert chunk.finished_at == finished
    assert job.completed_at == completed_at
    assert (job.completed, job.failed) == (1, 1)


def test_finish_chunk_does_not_mark_a_chunk_that_never_started(session: Session) -> None:
    job, [chunk] = make_job(session, chunks=[(ChunkStatus.DISPATCHED, [P])])
    finish_chunk(session, chunk.id)  # type: ignore[arg-type]
    reload(session)
    assert chunk.status == ChunkStatus.DISPATCHED and chunk.finished_at is None
    assert job.status == JobStatus.IN_PROGRESS


def test_recount_trusts_rows_not_the_stored_counters(session: Session) -> None:
    job, _ = make_job(session, chunks=[(ChunkStatus.RUNNING, [C, C, F, P]),
                                       (ChunkStatus.CANCELLED, [RequestStatus.CANCELLED])])
    job.total, job.completed, job.failed = 99, 50, 7
    recount(session, job)
    reload(session)
    assert (job.total, job.completed, job.failed) == (5, 2, 1)


# -- cancel_job -------------------------------------------------------------------------------

def test_cancel_job_stops_what_has_not_started(session: Session) -> None:
    job, [running, dispatched, pending] = make_job(session, chunks=[
        (ChunkStatus.RUNNING, [P, C]), (ChunkStatus.DISPATCHED, [P]),
        (ChunkStatus.PENDING, [P, P])])
    sent = add_outbox(session, job, "canvas", dispatched, OutboxStatus.SENT)
    waiting = add_outbox(session, job, "canvas", pending)
    body = add_outbox(session, job, "signature")  # a chord body of the running chunk
    other_job, [other_chunk] = make_job(session, chunks=[(ChunkStatus.PENDING, [P])])
    other = add_outbox(session, other_job, "canvas", other_chunk)

    cancelled = cancel_job(session, job.id)
    assert cancelled is not None and cancelled.id == job.id
    reload(session)
    assert job.status == JobStatus.CANCELLING and job.cancelling_at is not None
    assert job.cancelled_at is None
    assert (sent.status, waiting.status, body.status, other.status) == (
        OutboxStatus.SENT, OutboxStatus.DROPPED, OutboxStatus.PENDING, OutboxStatus.PENDING)
    assert running.status == ChunkStatus.RUNNING and running.finished_at is None
    assert request_statuses(session, running) == [P, C]
    for chunk in (dispatched, pending):
        assert chunk.status == ChunkStatus.CANCELLED and chunk.finished_at is not None
        assert set(request_statuses(session, chunk)) == {RequestStatus.CANCELLED}
    assert other_chunk.status == ChunkStatus.PENDING
    assert session.get(Job, other_job.id).status == JobStatus.IN_PROGRESS  # type: ignore

    # A redelivered task of a cancelled chunk does not run it.
    assert start_chunk(session, dispatched.id) is False  # type: ignore[arg-type]
    # The running chunk finishes with its results; then the job is cancelled.
    first_request = session.exec(select(Request).where(Request.chunk_id == running.id)
                                 .order_by(col(Request.line_no))).first()
    assert first_request is not None and first_request.status == P
    first_request.status = F
    session.add(first_request)
    session.flush()
    finish_chunk(session, running.id)  # type: ignore[arg-type]
    reload(session)
    assert running.status == ChunkStatus.DONE
    assert job.status == JobStatus.CANCELLED and job.cancelled_at is not None
    assert job.completed_at is None and job.finalizing_at is None
    assert (job.total, job.completed, job.failed) == (5, 1, 1)


def test_cancel_job_with_nothing_running_is_cancelled_at_once(session: Session) -> None:
    job, [done, pending] = make_job(session, chunks=[
        (ChunkStatus.DONE, [C]), (ChunkStatus.PENDING, [P])])
    add_outbox(session, job, "canvas", pending)
    cancel_job(session, job.id)
    reload(session)
    assert job.status == JobStatus.CANCELLED
    assert job.cancelling_at is not None and job.cancelled_at is not None
    assert (job.total, job.completed, job.failed) == (2, 1, 0)
    assert done.status == ChunkStatus.DONE


def test_cancel_job_twice_is_harmless(session: Session) -> None:
    job, [running, pending] = make_job(session, chunks=[
        (ChunkStatus.RUNNING, [P]), (ChunkStatus.PENDING, [P])])
    cancel_job(session, job.id)
    reload(session)
    first_stamp, pending_finished = job.cancelling_at, pending.finished_at
    assert cancel_job(session, job.id) is not None
    reload(session)
    assert job.status == JobStatus.CANCELLING and job.cancelling_at == first_stamp
    assert pending.status == ChunkStatus.CANCELLED and pending.finished_at == pending_finished
    assert running.status == ChunkStatus.RUNNING


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED,
                                    JobStatus.CANCELLED])
def test_cancel_of_a_finished_job_is_a_no_op(session: Session, status: JobStatus) -> None:
    job, [chunk] = make_job(session, status, chunks=[(ChunkStatus.PENDING, [P])])
    row = add_outbox(session, job, "canvas", chunk)
    stamp = datetime(2029, 12, 31, tzinfo=UTC)
    job.completed_at = stamp
    session.add(job)
    session.flush()
    assert cancel_job(session, job.id) is not None
    reload(session)
    assert job.status == status
    assert job.cancelling_at is None and job.cancelled_at is None
    assert job.completed_at == stamp
    assert chunk.status == ChunkStatus.PENDING and row.status == OutboxStatus.PENDING
    assert request_statuses(session, chunk) == [P]


def test_cancel_of_a_validating_job(session: Session) -> None:
    job, _ = make_job(session, JobStatus.VALIDATING)
    cancel_job(session, job.id)
    reload(session)
    # No chunk exists, so nothing can still run.
    assert job.status == JobStatus.CANCELLED


def test_cancel_of_an_unknown_job(session: Session) -> None:
    assert cancel_job(session, "job_does_not_exist") is None


# -- expire_due_jobs --------------------------------------------------------------------------

def test_expire_due_jobs_stops_what_has_not_started(session: Session) -> None:
    now = utcnow()
    job, [running, dispatched, pending] = make_job(session, chunks=[
        (ChunkStatus.RUNNING, [P, C]), (ChunkStatus.DISPATCHED, [P]),
        (ChunkStatus.PENDING, [P])])
    job.expires_at = now - timedelta(seconds=1)
    session.add(job)
    waiting = add_outbox(session, job, "canvas", pending)
    body = add_outbox(session, job, "signature")

    assert job.id in expire_due_jobs(session, now)
    reload(session)
    assert job.status == JobStatus.EXPIRED and job.expired_at == now
    # Counts move when a chunk closes: the running one has not yet.
    assert (job.total, job.completed, job.failed) == (4, 0, 0)
    assert (waiting.status, body.status) == (OutboxStatus.DROPPED, OutboxStatus.PENDING)
    assert running.status == ChunkStatus.RUNNING
    for chunk in (dispatched, pending):
        assert chunk.status == ChunkStatus.CANCELLED
        assert session.exec(select(Request.error).where(Request.chunk_id == chunk.id)
                            ).all() == ["job expired before this chunk started"]
    # Expiring again finds nothing to do.
    assert job.id not in expire_due_jobs(session, now + timedelta(hours=1))

    # The running chunk finishes: its results are counted, the job stays expired.
    for request in session.exec(select(Request).where(Request.chunk_id == running.id)):
        request.status = C
        session.add(request)
    session.flush()
    finish_chunk(session, running.id)  # type: ignore[arg-type]
    reload(session)
    assert running.status == ChunkStatus.DONE
    assert job.status == JobStatus.EXPIRED and job.completed_at is None
    assert (job.total, job.completed) == (4, 2)


@pytest.mark.parametrize(("status", "expires_in"), [
    (JobStatus.IN_PROGRESS, timedelta(minutes=5)),  # not due yet
    (JobStatus.IN_PROGRESS, None),  # no window
    (JobStatus.CANCELLING, timedelta(minutes=-5)),
    (JobStatus.COMPLETED, timedelta(minutes=-5)),
    (JobStatus.VALIDATING, timedelta(minutes=-5)),
])
def test_expire_due_jobs_leaves_other_jobs_alone(
        session: Session, status: JobStatus, expires_in: timedelta | None) -> None:
    now = utcnow()
    job, [chunk] = make_job(session, status, chunks=[(ChunkStatus.PENDING, [P])])
    job.expires_at = None if expires_in is None else now + expires_in
    session.add(job)
    session.flush()
    assert job.id not in expire_due_jobs(session, now)
    reload(session)
    assert job.status == status and job.expired_at is None
    assert chunk.status == ChunkStatus.PENDING
