"""Chord parts counted in Postgres: once per task id, the body queued exactly once."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context
from sqlalchemy import Engine, create_engine, delete, func
from sqlmodel import Session, col, select

from db.models import Chord, ChordPart, Outbox, OutboxStatus
from orchestration import chord_backend
from orchestration.canvas import rank_signature
from orchestration.chord_backend import OwnPart, record_part, set_size
from orchestration.outbox import KIND_SIGNATURE

BODY: dict[str, Any] = {"task": "celery.chain", "args": [], "kwargs": {"tasks": [
    {"task": "blendq.rank", "kwargs": {"job_id": "job_c", "chunk_id": 1}},
    {"task": "blendq.fuse", "kwargs": {"job_id": "job_c", "chunk_id": 1}}]},
    "options": {}, "subtask_type": "chain", "immutable": False}


@pytest.fixture
def gid() -> str:
    return str(uuid.uuid4())


def part(session: Session, group_id: str, task_id: str, size_hint: int | None = None,
         state: str = "SUCCESS") -> int | None:
    return record_part(session, group_id, task_id, state, BODY, job_id="job_c",
                       size_hint=size_hint)


def body_rows(session: Session, group_id: str) -> list[Outbox]:
    return list(session.exec(select(Outbox).where(Outbox.dedup_key == f"chord:{group_id}")
                             .order_by(col(Outbox.id))).all())


def parts_counted(session: Session, group_id: str) -> int:
    return session.exec(select(func.count()).select_from(ChordPart)
                        .where(ChordPart.group_id == group_id)).one()


def remove_chord(engine: Engine, group_id: str) -> None:
    """What a test that commits left of its chord, then the engine."""
    with Session(engine) as cleanup:
        cleanup.execute(delete(Outbox).where(col(Outbox.dedup_key) == f"chord:{group_id}"))
        cleanup.execute(delete(ChordPart).where(col(ChordPart.group_id) == group_id))
        cleanup.execute(delete(Chord).where(col(Chord.group_id) == group_id))
        cleanup.commit()
    engine.dispose()


def test_last_part_queues_the_body_once(session: Session, gid: str) -> None:
    assert part(session, gid, "t1", size_hint=3) is None
    assert part(session, gid, "t2", size_hint=3) is None
    assert body_rows(session, gid) == []
    outbox_id = part(session, gid, "t3", size_hint=3)
    assert isinstance(outbox_id, int)
    [row] = body_rows(session, gid)
    assert row.id == outbox_id
    assert (row.kind, row.status, row.job_id, row.chunk_id, row.attempts) == (
        KIND_SIGNATURE, OutboxStatus.PENDING, "job_c", None, 0)
    assert row.payload == BODY
    assert parts_counted(session, gid) == 3


def test_a_redelivered_header_task_counts_once(session: Session, gid: str) -> None:
    assert part(session, gid, "t1", size_hint=2) is None
    # The same task delivered again (worker lost, message requeued) must not complete it.
    assert part(session, gid, "t1", size_hint=2) is None
    assert part(session, gid, "t1", size_hint=2, state="FAILURE") is None
    assert parts_counted(session, gid) == 1
    assert body_rows(session, gid) == []
    # The first recorded state stays.
    assert session.exec(select(ChordPart.state).where(ChordPart.group_id == gid)).one() == \
        "SUCCESS"
    assert part(session, gid, "t2", size_hint=2) is not None
    assert len(body_rows(session, gid)) == 1


def test_failed_header_tasks_count_too(session: Session, gid: str) -> None:
    assert part(session, gid, "t1", size_hint=2, state="FAILURE") is None
    assert part(session, gid, "t2", size_hint=2, state="FAILURE") is not None
    states = session.exec(select(ChordPart.state).where(ChordPart.group_id == gid)).all()
    assert sorted(states) == ["FAILURE", "FAILURE"]


def test_parts_before_the_size_is_known_do_not_fire(session: Session, gid: str) -> None:
    for task_id in ("t1", "t2", "t3"):
        assert part(session, gid, task_id) is None
    assert parts_counted(session, gid) == 3
    assert session.get(Chord, gid).size is None  # type: ignore[union-attr]
    assert body_rows(session, gid) == []


def test_set_size_then_the_last_part_fires(session: Session, gid: str) -> None:
    assert part(session, gid, "t1") is None
    assert part(session, gid, "t2") is None
    set_size(session, gid, 3)
    assert session.get(Chord, gid).size == 3  # type: ignore[union-attr]
    # A redelivery of an earlier part, after the size is known, is still not the last.
    assert part(session, gid, "t2") is None
    assert body_rows(session, gid) == []
    assert part(session, gid, "t3") is not None
    assert len(body_rows(session, gid)) == 1


def test_set_size_before_any_part(session: Session, gid: str) -> None:
    set_size(session, gid, 2)
    assert part(session, gid, "a") is None
    assert part(session, gid, "b") is not None


def test_set_size_again_updates_the_size(session: Session, gid: str) -> None:
    set_size(session, gid, 5)
    set_size(session, gid, 2)
    session.expire_all()
    assert session.get(Chord, gid).size == 2  # type: ignore[union-attr]
    assert session.exec(select(func.count()).select_from(Chord)
                        .where(Chord.group_id == gid)).one() == 1


def test_hint_is_used_when_no_size_was_set(session: Session, gid: str) -> None:
    assert part(session, gid, "t1") is None  # creates the chord row without a size
    assert part(session, gid, "t2", size_hint=2) is not None


def test_parts_after_firing_never_queue_a_second_body(session: Session, gid: str) -> None:
    set_size(session, gid, 2)
    part(session, gid, "t1")
    first = part(session, gid, "t2")
    assert first is not None
    # Late redeliveries and a stray extra task: the count is at or past the size each time.
    assert part(session, gid, "t2") is None
    assert part(session, gid, "t1") is None
    assert part(session, gid, "t3") is None
    assert part(session, gid, "t4", size_hint=2) is None
    rows = body_rows(session, gid)
    assert [r.id for r in rows] == [first]
    assert parts_counted(session, gid) == 4


def test_groups_are_counted_apart(session: Session) -> None:
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    set_size(session, one, 2)
    set_size(session, two, 2)
    assert part(session, one, "t1") is None
    # Same task id in another group is another part.
    assert part(session, two, "t1") is None
    assert body_rows(session, one) == body_rows(session, two) == []
    assert part(session, two, "t2") is not None
    assert body_rows(session, one) == []
    assert part(session, one, "t2") is not None
    assert len(body_rows(session, one)) == len(body_rows(session, two)) == 1


def test_size_one_fires_on_the_first_part(session: Session, gid: str) -> None:
    set_size(session, gid, 1)
    assert part(session, gid, "only") is not None


def test_parts_of_one_chord_are_serialised_on_its_row(pg_url: str) -> None:
    """Two header tasks finishing together: the second waits for the first's transaction,
    then sees its part and fires. This needs two real transactions, so it commits (to this
    run's own database) and removes its rows afterwards."""
    engine = create_engine(pg_url)
    group_id = str(uuid.uuid4())
    results: dict[str, int | None] = {}
    first = Session(engine)
    thread: threading.Thread | None = None
    try:
        with Session(engine) as setup:
            set_size(setup, group_id, 2)
            setup.commit()
        assert part(first, group_id, "t1") is None  # holds the chord row lock from here

        def second_part() -> None:
            with Session(engine) as second:
                results["t2"] = part(second, group_id, "t2")
                second.commit()

        thread = threading.Thread(target=second_part)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "the second part did not wait for the chord's row lock"
        first.commit()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert results["t2"] is not None
        with Session(engine) as check:
            assert len(body_rows(check, group_id)) == 1
            assert parts_counted(check, group_id) == 2
    finally:
        first.close()  # releases the lock if the test failed before committing
        if thread is not None:
            thread.join(timeout=10)
        remove_chord(engine, group_id)


def test_counting_waits_out_a_database_that_is_briefly_away() -> None:
    import sqlalchemy.exc

    from orchestration.chord_backend import _with_retries

    calls: list[int] = []

    def flaky() -> int | None:
        calls.append(1)
        if len(calls) < 3:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))
        return 42

    assert _with_retries(flaky, first_wait=0.01) == 42
    assert len(calls) == 3

    def down() -> int | None:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("refused"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        _with_retries(down, attempts=3, first_wait=0.01)


def test_a_part_its_task_counted_is_published_after_the_task(pg_url: str,
                                                             celery_app: Celery) -> None:
    """A generate message that finds its chunk done counts its part in its own transaction
    (OwnPart); Celery's call after the task then publishes the body that part queued,
    without counting again."""
    engine = create_engine(pg_url)
    group_id = str(uuid.uuid4())
    body = rank_signature(celery_app, "job_c", 0)
    first = Context(id="t1", group=group_id, chord=dict(body), kwargs={"job_id": "job_c"})
    second = Context(id="t2", group=group_id, chord=dict(body), kwargs={"job_id": "job_c"})
    try:
        with Session(engine) as setup:
            set_size(setup, group_id, 2)
            setup.commit()
        celery_app.backend.on_chord_part_return(first, "SUCCESS", None)
        own = OwnPart(celery_app, second, start_timeout=300)
        with Session(engine) as session:
            own.count(session)
            session.commit()
        own.committed()
        with Session(engine) as check:
            [queued] = body_rows(check, group_id)
            assert queued.status == OutboxStatus.PENDING  # counted, not yet published
        celery_app.backend.on_chord_part_return(second, "SUCCESS", None)
        with Session(engine) as check:
            [sent] = body_rows(check, group_id)
            assert sent.status == OutboxStatus.SENT and sent.id == queued.id
            assert parts_counted(check, group_id) == 2
        assert "t2" not in chord_backend._counted_by_task
    finally:
        remove_chord(engine, group_id)
