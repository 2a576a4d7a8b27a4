"""Candidate and comparison rows have no foreign keys (migrations 0011, 0012): deleting a
request, or its job, must still delete its candidates and comparisons, and the migration
must go both ways."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from db.engine import get_engine
from db.models import Candidate, Comparison, Job, Request, utcnow
from ops import dbadmin
from ops.bench.stack import fresh_database


def _job_with_comparisons(session: Session, requests: int) -> tuple[str, list[int]]:
    job = Job(models=["a", "b"], ranker="r")
    session.add(job)
    session.flush()
    ids = []
    for i in range(requests):
        request = Request(job_id=job.id, line_no=i + 1, custom_id=f"c{i}", instruction="Hi.")
        session.add(request)
        session.flush()
        a, b = (Candidate(request_id=request.id or 0, model=m, text=m) for m in ("a", "b"))
        session.add_all([a, b])
        session.flush()
        session.add_all([Comparison(request_id=request.id or 0, candidate_a_id=x.id or 0,
                                    candidate_b_id=y.id or 0, logit=0.5,
                                    ranker_revision="r", created_at=utcnow())
                         for x, y in ((a, b), (b, a))])
        ids.append(request.id or 0)
    session.flush()
    return job.id, ids


def _comparisons(session: Session, request_ids: list[int]) -> int:
    return session.exec(select(func.count()).select_from(Comparison)
                        .where(col(Comparison.request_id).in_(request_ids))).one()


def _candidates(session: Session, request_ids: list[int]) -> int:
    return session.exec(select(func.count()).select_from(Candidate)
                        .where(col(Candidate.request_id).in_(request_ids))).one()


def _deletes_follow(session: Session) -> None:
    job_id, ids = _job_with_comparisons(session, 3)
    _, others = _job_with_comparisons(session, 2)
    session.execute(delete(Request).where(col(Request.id) == ids[0]))
    assert _comparisons(session, ids[:1]) == _candidates(session, ids[:1]) == 0
    assert _comparisons(session, ids[1:]) == _candidates(session, ids[1:]) == 4
    # A job's delete cascades to its requests, and the trigger takes their comparisons.
    session.execute(delete(Job).where(col(Job.id) == job_id))
    assert _comparisons(session, ids) == _candidates(session, ids) == 0
    assert _comparisons(session, others) == _candidates(session, others) == 4


def test_deleting_requests_or_their_job_deletes_their_candidates_and_comparisons(
        session: Session) -> None:
    _deletes_follow(session)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    dbadmin.upgrade(url)
    yield url


def test_deleting_requests_deletes_their_stage_rows_on_sqlite(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)  # the embedded run's engine: foreign keys on
    with Session(engine) as session:
        _deletes_follow(session)
    engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_migration_goes_down_and_up_again(dialect: str, tmp_path: Path) -> None:
    def round_trip(url: str) -> None:
        dbadmin.upgrade(url)
        assert dbadmin.check(url) == []
        dbadmin.downgrade(url, "0011")
        assert dbadmin.current(url) == "0011"
        dbadmin.upgrade(url)
        assert dbadmin.check(url) == []

    if dialect == "sqlite":
        round_trip(f"sqlite:///{tmp_path / 'round.db'}")
        return
    with fresh_database(f"blendq_keys_{id(tmp_path)}") as url:
        round_trip(url)
