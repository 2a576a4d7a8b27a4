"""The outbox: add with a dedup key, relay in id order through a publisher callback, drop the
canvases of jobs that stopped, and keep a row pending when publishing fails."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from db.models import Chunk, ChunkStatus, Job, JobStatus, Outbox, OutboxStatus, utcnow
from orchestration import outbox
from orchestration.outbox import KIND_CANVAS, KIND_SIGNATURE, PendingRow, add, relay


class Recorder:
    """A publisher that remembers what it was given (a callback, not a broker)."""

    def __init__(self, fail_on: set[int] | None = None,
                 error: type[Exception] = ConnectionError) -> None:
        self.published: list[tuple[int, str, dict[str, Any]]] = []
        self.fail_on = fail_on or set()
        self.error = error

    def __call__(self, row: PendingRow) -> None:
        assert row.id is not None
        if row.id in self.fail_on:
            raise self.error(f"broker refused row {row.id}")
        self.published.append((row.id, row.kind, row.payload))

    @property
    def ids(self) -> list[int]:
        return [i for i, _, _ in self.published]


@pytest.fixture
def quiet(session: Session) -> Session:
    """The session, with whatever other runs left pending in this database set aside
    (inside the test's transaction, so it is rolled back with it)."""
    session.execute(update(Outbox).where(col(Outbox.status) == OutboxStatus.PENDING)
                    .values(status=OutboxStatus.SENT))
    return session


def make_chunk(session: Session, job_status: JobStatus = JobStatus.IN_PROGRESS,
               chunk_status: ChunkStatus = ChunkStatus.PENDING, index: int = 0,
               job: Job | None = None) -> tuple[Job, Chunk]:
    if job is None:
        job = Job(status=job_status, models=["tiny-a"])
        session.add(job)
        session.flush()
    chunk = Chunk(job_id=job.id, index=index, size=1, status=chunk_status)
    session.add(chunk)
    session.flush()
    return job, chunk


def add_canvas(session: Session, job: Job, chunk: Chunk) -> int:
    row_id = add(session, KIND_CANVAS, {"chunk": chunk.id}, job_id=job.id, chunk_id=chunk.id,
                 dedup_key=f"chunk:{chunk.id}")
    assert row_id is not None
    return row_id


def reload(session: Session) -> None:
    session.flush()
    session.expire_all()


def row(session: Session, row_id: int) -> Outbox:
    found = session.get(Outbox, row_id)
    assert found is not None
    return found


def test_add_stores_a_pending_row(quiet: Session) -> None:
    row_id = add(quiet, KIND_SIGNATURE, {"task": "blendq.rank", "kwargs": {"chunk_id": 3}},
                 job_id="job_x", dedup_key="k-add")
    assert isinstance(row_id, int)
    stored = row(quiet, row_id)
    assert (stored.kind, stored.status, stored.attempts, stored.job_id, stored.chunk_id,
            stored.dedup_key, stored.published_at, stored.last_error) == (
        KIND_SIGNATURE, OutboxStatus.PENDING, 0, "job_x", None, "k-add", None, None)
    assert stored.payload == {"task": "blendq.rank", "kwargs": {"chunk_id": 3}}


def test_dedup_key_makes_a_second_add_a_no_op(quiet: Session) -> None:
    first = add(quiet, KIND_SIGNATURE, {"n": 1}, dedup_key="chord:abc")
    assert first is not None
    assert add(quiet, KIND_SIGNATURE, {"n": 2}, dedup_key="chord:abc") is None
    rows = quiet.exec(select(Outbox).where(Outbox.dedup_key == "chord:abc")).all()
    assert [(r.id, r.payload) for r in rows] == [(first, {"n": 1})]
    # Even after the first was sent, the key stays taken.
    relay(quiet, Recorder(), only_id=first)
    assert add(quiet, KIND_SIGNATURE, {"n": 3}, dedup_key="chord:abc") is None


def test_rows_without_a_dedup_key_are_all_kept(quiet: Session) -> None:
    one = add(quiet, KIND_SIGNATURE, {"n": 1})
    two = add(quiet, KIND_SIGNATURE, {"n": 1})
    assert one is not None and two is not None and one != two


def test_relay_publishes_in_id_order_and_marks_sent(quiet: Session) -> None:
    job, first = make_chunk(quiet)
    _, second = make_chunk(quiet, job=job, index=1)
    ids = [add_canvas(quiet, job, first),
           add(quiet, KIND_SIGNATURE, {"body": 1}, job_id=job.id),
           add_canvas(quiet, job, second)]
    recorder = Recorder()
    before = utcnow()
    assert relay(quiet, recorder) == 3
    assert recorder.ids == ids
    assert [kind for _, kind, _ in recorder.published] == [KIND_CANVAS, KIND_SIGNATURE,
                                                           KIND_CANVAS]
    assert recorder.published[0][2] == {"chunk": first.id}
    reload(quiet)
    for row_id in ids:
        sent = row(quiet, row_id)
        assert sent.status == OutboxStatus.SENT and sent.attempts == 1
        assert sent.published_at is not None and before <= sent.published_at <= utcnow()
        assert sent.last_error is None
    assert (first.status, second.status) == (ChunkStatus.DISPATCHED, ChunkStatus.DISPATCHED)
    # Nothing is left: a second relay publishes nothing again.
    assert relay(quiet, recorder) == 0
    assert len(recorder.published) == 3


def test_relay_moves_only_a_pending_chunk_to_dispatched(quiet: Session) -> None:
    job, chunk = make_chunk(quiet, chunk_status=ChunkStatus.RUNNING)
    row_id = add_canvas(quiet, job, chunk)
    relay(quiet, Recorder(), only_id=row_id)
    reload(quiet)
    # A redelivered canvas of a chunk that already runs does not move it back.
    assert chunk.status == ChunkStatus.RUNNING
    assert row(quiet, row_id).status == OutboxStatus.SENT


def test_relay_limit_takes_the_oldest_first(quiet: Session) -> None:
    ids = [add(quiet, KIND_SIGNATURE, {"n": n}) for n in range(5)]
    recorder = Recorder()
    assert relay(quiet, recorder, limit=2) == 2
    assert recorder.ids == ids[:2]
    assert relay(quiet, recorder, limit=2) == 2
    assert relay(quiet, recorder, limit=2) == 1
    assert recorder.ids == ids


def test_relay_only_id(quiet: Session) -> None:
    ids = [add(quiet, KIND_SIGNATURE, {"n": n}) for n in range(3)]
    recorder = Recorder()
    assert relay(quiet, recorder, only_id=ids[1]) == 1
    assert recorder.ids == [ids[1]]
    reload(quiet)
    assert [row(quiet, i).status for i in ids] == [  # type: ignore[arg-type]
        OutboxStatus.PENDING, OutboxStatus.SENT, OutboxStatus.PENDING]
    # A row that is no longer pending is not published again.
    assert relay(quiet, recorder, only_id=ids[1]) == 0


@pytest.mark.parametrize("status", [JobStatus.CANCELLING, JobStatus.CANCELLED,
                                    JobStatus.EXPIRED, JobStatus.FAILED])
def test_canvas_of_a_stopped_job_is_dropped_not_published(
        quiet: Session, status: JobStatus) -> None:
    job, chunk = make_chunk(quiet, job_status=status)
    row_id = add_canvas(quiet, job, chunk)
    body_id = add(quiet, KIND_SIGNATURE, {"body": 1}, job_id=job.id)
    recorder = Recorder()
    assert relay(quiet, recorder) == 2
    # A chord body of a chunk that already ran still goes out; the unstarted canvas does not.
    assert recorder.ids == [body_id]
    reload(quiet)
    dropped = row(quiet, row_id)
    assert dropped.status == OutboxStatus.DROPPED
    assert dropped.published_at is None and dropped.attempts == 0
    assert chunk.status == ChunkStatus.PENDING


def test_an_unreachable_broker_stops_the_batch_and_keeps_what_was_sent(
        quiet: Session) -> None:
    good = add(quiet, KIND_SIGNATURE, {"n": 0})
    bad = add(quiet, KIND_SIGNATURE, {"n": 1})
    after = add(quiet, KIND_SIGNATURE, {"n": 2})
    assert good is not None and bad is not None and after is not None
    recorder = Recorder(fail_on={bad})
    # Nothing is raised: the caller's transaction commits the sent row and the attempt.
    assert relay(quiet, recorder) == 1
    reload(quiet)
    failed = row(quiet, bad)
    assert failed.status == OutboxStatus.PENDING
    assert failed.attempts == 0, "a try that did not reach the broker is no attempt"
    assert failed.last_error == f"ConnectionError: broker refused row {bad}"
    assert failed.published_at is None
    assert row(quiet, good).status == OutboxStatus.SENT
    assert row(quiet, after).status == OutboxStatus.PENDING, "the batch stops at the outage"
    # The next try succeeds and counts its attempt.
    recorder.fail_on.clear()
    assert relay(quiet, recorder) == 2
    reload(quiet)
    retried = row(quiet, bad)
    assert (retried.status, retried.attempts) == (OutboxStatus.SENT, 1)
    assert recorder.ids == [good, bad, after]


def test_a_long_broker_outage_brings_no_row_nearer_to_being_given_up(quiet: Session) -> None:
    row_id = add(quiet, KIND_SIGNATURE, {"n": 0})
    assert row_id is not None
    down = Recorder(fail_on={row_id})  # ConnectionError: the broker is away
    for _ in range(outbox.MAX_ATTEMPTS * 3):
        relay(quiet, down, only_id=row_id)
    # Then one failure of another kind: a first strike, not the last.
    relay(quiet, Recorder(fail_on={row_id}, error=ValueError), only_id=row_id)
    reload(quiet)
    survivor = row(quiet, row_id)
    assert (survivor.status, survivor.attempts) == (OutboxStatus.PENDING, 1)
    assert survivor.last_error == f"ValueError: broker refused row {row_id}"


def test_a_row_that_cannot_be_published_does_not_block_the_rest(quiet: Session) -> None:
    """What the dispatcher does: relay inside a transaction that commits. The attempt count
    and the error are recorded, and the rows after a poison row still go out."""
    bad = add(quiet, KIND_SIGNATURE, {"n": 1})
    after = add(quiet, KIND_SIGNATURE, {"n": 2})
    assert bad is not None and after is not None
    recorder = Recorder(fail_on={bad}, error=ValueError)
    for _ in range(3):
        with quiet.begin_nested():  # stands for the dispatcher's own transaction
            relay(quiet, recorder)
    reload(quiet)
    assert row(quiet, bad).attempts == 3
    assert row(quiet, bad).last_error == f"ValueError: broker refused row {bad}"
    assert recorder.ids == [after]


def test_a_canvas_given_up_fails_its_requests_and_the_job_finishes(quiet: Session) -> None:
    from db.models import Request, RequestStatus

    job, chunk = make_chunk(quiet)
    quiet.add(Request(job_id=job.id, chunk_id=chunk.id, line_no=1, custom_id="r",
                      instruction="x"))
    quiet.flush()
    row_id = add_canvas(quiet, job, chunk)
    recorder = Recorder(fail_on={row_id}, error=ValueError)
    for _ in range(outbox.MAX_ATTEMPTS):
        relay(quiet, recorder, only_id=row_id)
    reload(quiet)
    given_up = row(quiet, row_id)
    assert (given_up.status, given_up.attempts) == (OutboxStatus.FAILED, outbox.MAX_ATTEMPTS)
    request = quiet.exec(select(Request).where(Request.job_id == job.id)).one()
    assert request.status == RequestStatus.FAILED
    assert request.error is not None and "could not be published" in request.error
    quiet.refresh(job)
    assert (job.status, job.failed) == (JobStatus.COMPLETED, 1)


def test_notify_channel_name_is_a_plain_identifier() -> None:
    # It is interpolated into NOTIFY / LISTEN statements.
    assert outbox.NOTIFY_CHANNEL.replace("_", "").isalnum()
