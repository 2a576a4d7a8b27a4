"""``copy_insert_ignore``: one ``INSERT … SELECT FROM unnest`` on the real PostgreSQL
database, executemany on SQLite; both store each row once and say how many were new."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, SQLModel, create_engine, select

from db.models import Candidate, Comparison, Job, Request, utcnow
from db.writes import copy_insert_ignore


def _candidates(session: Session, n: int) -> tuple[int, list[int]]:
    job = Job(models=["a"], ranker="r")
    session.add(job)
    session.flush()
    request = Request(job_id=job.id, line_no=1, custom_id="c1", instruction="Hi.")
    session.add(request)
    session.flush()
    cands = [Candidate(request_id=request.id or 0, model=f"m{i}", text=f"t{i}")
             for i in range(n)]
    session.add_all(cands)
    session.flush()
    return request.id or 0, [c.id or 0 for c in cands]


def _rows(request_id: int, ids: list[int], pairs: list[tuple[int, int]], logit: float,
          revision: str = "rev1") -> list[dict[str, object]]:
    now = utcnow()
    return [{"request_id": request_id, "candidate_a_id": ids[a], "candidate_b_id": ids[b],
             "logit": logit + a - b, "ranker_revision": revision, "created_at": now}
            for a, b in pairs]


def _check_idempotent(session: Session) -> None:
    request_id, ids = _candidates(session, 3)
    first = [(0, 1), (1, 0), (0, 2)]
    assert copy_insert_ignore(session, Comparison, _rows(request_id, ids, first, 0.5)) == 3
    # A redelivery overlapping the first batch: only the new pairs go in, and the stored
    # logits of the old ones are kept (first writer wins).
    again = [(0, 1), (2, 0), (1, 2), (2, 1)]
    assert copy_insert_ignore(session, Comparison, _rows(request_id, ids, again, 9.0)) == 3
    assert copy_insert_ignore(session, Comparison, _rows(request_id, ids, again, 9.0)) == 0
    stored = {(a, b): v for a, b, v in session.exec(
        select(Comparison.candidate_a_id, Comparison.candidate_b_id, Comparison.logit)
        .where(Comparison.request_id == request_id)).all()}
    assert len(stored) == 6
    assert stored[(ids[0], ids[1])] == pytest.approx(-0.5)
    assert stored[(ids[2], ids[0])] == pytest.approx(11.0)
    # Another revision is another row.
    assert copy_insert_ignore(session, Comparison,
                              _rows(request_id, ids, [(0, 1)], 1.0, revision="rev2")) == 1
    assert copy_insert_ignore(session, Comparison, []) == 0


def test_copy_on_postgres_stores_each_row_once(session: Session) -> None:
    _check_idempotent(session)
    # One statement a batch: no temporary table is made (the COPY path made one per
    # connection and emptied it per batch, which cost a new file each time).
    temps = session.connection().exec_driver_sql(
        "SELECT relname FROM pg_class WHERE relpersistence = 't' "
        "AND relnamespace = pg_my_temp_schema()").scalars().all()
    assert temps == []


def test_copy_on_postgres_writes_many_rows(session: Session) -> None:
    request_id, ids = _candidates(session, 40)
    pairs = [(a, b) for a in range(40) for b in range(40) if a != b]
    assert copy_insert_ignore(session, Comparison, _rows(request_id, ids, pairs, 0.0)) == 1560
    count = session.exec(select(func.count()).select_from(Comparison)
                         .where(Comparison.request_id == request_id)).one()
    assert count == 1560


def test_unknown_column_is_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="no columns"):
        copy_insert_ignore(session, Comparison, [{"nope": 1}])


def test_sqlite_takes_the_executemany_path(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as sqlite_session:
        _check_idempotent(sqlite_session)
    engine.dispose()
