"""``copy_insert_ignore``: a binary COPY on the real PostgreSQL database, and ``INSERT …
SELECT FROM unnest … ON CONFLICT DO NOTHING`` when a row is stored already; executemany on
SQLite; each stores each row once and says how many were new."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, SQLModel, col, create_engine, select

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
    # No temporary table is made (the COPY path before issue 13 made one per connection
    # and emptied it per batch, which cost a new file each time).
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


def test_a_conflict_undoes_only_the_copy_not_the_callers_transaction(session: Session) -> None:
    request_id, ids = _candidates(session, 3)
    assert copy_insert_ignore(session, Comparison, _rows(request_id, ids, [(0, 1)], 0.5)) == 1
    # The next batch's COPY fails on (0, 1); the savepoint takes back only that COPY, so
    # (0, 1) stays as first stored, the rest goes in, and the transaction carries on.
    pairs = [(0, 1), (1, 0), (0, 2), (2, 0)]
    assert copy_insert_ignore(session, Comparison, _rows(request_id, ids, pairs, 9.0)) == 3
    session.add(Candidate(request_id=request_id, model="later", text="still writable"))
    session.flush()
    stored = dict(session.exec(
        select(Comparison.candidate_a_id, Comparison.logit)
        .where(Comparison.request_id == request_id, Comparison.candidate_b_id == ids[1])).all())
    assert stored == {ids[0]: pytest.approx(-0.5)}


def test_copy_refuses_nul_naming_row_and_column(session: Session) -> None:
    request_id, ids = _candidates(session, 2)
    rows = _rows(request_id, ids, [(0, 1), (1, 0)], 0.0)
    rows[1]["ranker_revision"] = "rev\x00"
    with pytest.raises(ValueError, match="row 1: ranker_revision contains a NUL"):
        copy_insert_ignore(session, Comparison, rows)


def test_candidates_with_json_and_nulls_go_through_copy(session: Session) -> None:
    request_id, _ = _candidates(session, 0)
    now = utcnow()
    rows = [{"request_id": request_id, "model": f"g{i}", "model_revision": "r",
             "params": {"temperature": 0.5, "stop": ["\n"]}, "ok": i == 0, "text": "answer",
             "error": None if i == 0 else "timed out", "prompt_tokens": 3,
             "completion_tokens": 4, "latency_ms": 1, "created_at": now} for i in range(2)]
    assert copy_insert_ignore(session, Candidate, rows) == 2
    assert copy_insert_ignore(session, Candidate, rows) == 0
    stored = session.exec(select(Candidate).where(Candidate.request_id == request_id)
                          .order_by(col(Candidate.model))).all()
    assert [(c.params, c.ok, c.error, c.latency_ms) for c in stored] == [
        ({"temperature": 0.5, "stop": ["\n"]}, True, None, 1.0),
        ({"temperature": 0.5, "stop": ["\n"]}, False, "timed out", 1.0)]
