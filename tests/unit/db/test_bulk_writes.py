"""``bulk_insert_ignore`` / ``insert_ignore`` on the real PostgreSQL database (and the
SQLite fallback): idempotent, right counts, the columns' own types, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, SQLModel, col, create_engine, select

from db.models import Candidate, Comparison, Job, Request, utcnow
from db.writes import bulk_insert_ignore, bulk_update, copy_insert_ignore, insert_ignore


def _requests(session: Session, n: int) -> list[int]:
    job = Job(models=["a"], ranker="r")
    session.add(job)
    session.flush()
    requests = [Request(job_id=job.id, line_no=i + 1, custom_id=f"c{i}", instruction="Hi.")
                for i in range(n)]
    session.add_all(requests)
    session.flush()
    return [r.id or 0 for r in requests]


def _candidate(request_id: int, model: str, **overrides: Any) -> dict[str, Any]:
    """A row as the generation worker builds it (workers/generation/tasks.py ``_row``)."""
    row = {"request_id": request_id, "model": model, "model_revision": "rev",
           "params": {"max_new_tokens": 8, "temperature": 0.0}, "ok": True,
           "text": f"answer of {model}", "error": None, "prompt_tokens": 3,
           "completion_tokens": 5, "latency_ms": 1.5, "created_at": utcnow()}
    row.update(overrides)
    return row


def _stored(session: Session, request_ids: list[int]) -> dict[tuple[int, str], Candidate]:
    session.expire_all()
    found = session.exec(select(Candidate).where(col(Candidate.request_id).in_(request_ids)))
    return {(c.request_id, c.model): c for c in found}


def test_a_second_delivery_inserts_nothing(session: Session) -> None:
    ids = _requests(session, 40)
    rows = [_candidate(rid, m) for rid in ids for m in ("a", "b", "c")]
    assert bulk_insert_ignore(session, Candidate, rows) == 120
    assert bulk_insert_ignore(session, Candidate, rows) == 0
    assert insert_ignore(session, Candidate, rows) == []
    assert len(_stored(session, ids)) == 120


def test_mixed_new_and_stored_rows_count_the_new_and_keep_the_stored(session: Session) -> None:
    ids = _requests(session, 3)
    insert_ignore(session, Candidate, [_candidate(ids[0], "a", text="first"),
                                       _candidate(ids[1], "a", text="first")])
    again = [_candidate(rid, "a", text="second") for rid in ids] + [
        _candidate(ids[0], "b", text="second")]
    assert bulk_insert_ignore(session, Candidate, again) == 2
    stored = _stored(session, ids)
    assert {k: c.text for k, c in stored.items()} == {
        (ids[0], "a"): "first", (ids[1], "a"): "first", (ids[2], "a"): "second",
        (ids[0], "b"): "second"}


def test_batches_of_every_size_on_one_connection(session: Session) -> None:
    # psycopg prepares the statement on its fifth use; later batches of other lengths
    # go through the prepared statement and must still store exactly their rows.
    ids = _requests(session, 1)
    cands = [_candidate(ids[0], f"m{i}") for i in range(40)]
    insert_ignore(session, Candidate, cands)
    cand_ids = [c.id or 0 for c in _stored(session, ids).values()]
    pairs = [(a, b) for a in cand_ids for b in cand_ids if a != b]
    now = utcnow()
    start = 0
    for size in (1, 2, 3, 256, 7, 512, 1, 100):
        batch = [{"request_id": ids[0], "candidate_a_id": a, "candidate_b_id": b,
                  "logit": 0.25, "ranker_revision": "r", "created_at": now}
                 for a, b in pairs[start:start + size]]
        assert copy_insert_ignore(session, Comparison, batch) == size
        assert copy_insert_ignore(session, Comparison, batch[: size // 2 + 1]) == 0
        start += size
    stored = session.exec(select(Comparison.candidate_a_id, Comparison.candidate_b_id)
                          .where(Comparison.request_id == ids[0])).all()
    assert sorted(stored) == sorted(pairs[:start])


def test_json_columns_round_trip(session: Session) -> None:
    ids = _requests(session, 3)
    params = [{"temperature": 0.7, "stop": ["\n\n", "Ω"], "nested": {"k": [1, None, True]}},
              {}, {"seed": 2**40, "text": 'quote " and \\ backslash'}]
    rows = [_candidate(rid, "a", params=p) for rid, p in zip(ids, params, strict=True)]
    assert bulk_insert_ignore(session, Candidate, rows) == 3
    stored = _stored(session, ids)
    assert [stored[(rid, "a")].params for rid in ids] == params
    # JSONB, not a JSON string: PostgreSQL can index into it.
    seeds = session.connection().exec_driver_sql(
        "SELECT params->>'seed' FROM candidate WHERE request_id = %(r)s", {"r": ids[2]})
    assert seeds.scalar() == str(2**40)


def test_text_with_nul_is_refused_naming_row_and_column(session: Session) -> None:
    ids = _requests(session, 2)
    rows = [_candidate(ids[0], "a"), _candidate(ids[1], "a", error="bad\x00byte", ok=False)]
    with pytest.raises(ValueError, match=r"candidate row 1: error contains a NUL"):
        bulk_insert_ignore(session, Candidate, rows)
    with pytest.raises(ValueError, match=r"row 0: text contains a NUL"):
        insert_ignore(session, Candidate, [_candidate(ids[0], "a", text="\x00"),
                                           _candidate(ids[1], "a")])
    # Refused before anything was sent: the transaction goes on and nothing is stored.
    assert _stored(session, ids) == {}
    assert bulk_insert_ignore(session, Candidate, rows[:1]) == 1


def test_empty_input_writes_nothing(session: Session) -> None:
    assert bulk_insert_ignore(session, Candidate, []) == 0
    assert copy_insert_ignore(session, Comparison, []) == 0
    assert insert_ignore(session, Candidate, []) == []
    assert insert_ignore(session, Candidate, [], returning="id") == []


def test_rows_with_other_keys_are_refused(session: Session) -> None:
    ids = _requests(session, 2)
    second = _candidate(ids[1], "a")
    del second["error"]
    with pytest.raises(ValueError, match=r"candidate row 1 has columns .* a batch needs"):
        bulk_insert_ignore(session, Candidate, [_candidate(ids[0], "a"), second])
    with pytest.raises(ValueError, match=r"candidate has no columns \['nope'\]"):
        bulk_insert_ignore(session, Candidate, [{**_candidate(ids[0], "a"), "nope": 1}])


def test_ints_among_floats_and_left_out_defaults_store_what_sqlalchemy_would(
        session: Session) -> None:
    ids = _requests(session, 4)
    # latency_ms (FLOAT) given as 0 and 2.5: one array of floats.
    mixed = [_candidate(ids[0], "a", latency_ms=0), _candidate(ids[1], "a", latency_ms=2.5)]
    assert bulk_insert_ignore(session, Candidate, mixed) == 2
    # prompt_tokens (INTEGER) given as True and 7: no single array; executemany instead.
    odd = [_candidate(ids[0], "b", prompt_tokens=True), _candidate(ids[1], "b",
                                                                  prompt_tokens=7)]
    assert bulk_insert_ignore(session, Candidate, odd) == 2
    assert bulk_insert_ignore(session, Candidate, odd) == 0
    # model_revision, ok, tokens and latency left out: their Python-side defaults apply.
    short = [{"request_id": rid, "model": "c", "params": {}, "text": "t",
              "created_at": utcnow()} for rid in ids[2:]]
    assert bulk_insert_ignore(session, Candidate, short) == 2
    assert bulk_insert_ignore(session, Candidate, short) == 0
    stored = _stored(session, ids)
    assert stored[(ids[0], "a")].latency_ms == 0.0
    assert stored[(ids[1], "a")].latency_ms == 2.5
    assert stored[(ids[0], "b")].prompt_tokens == 1
    assert all(stored[(rid, "c")].model_revision == "" and stored[(rid, "c")].ok
               and stored[(rid, "c")].completion_tokens == 0 for rid in ids[2:])


def test_sqlite_fallback_is_idempotent_too(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as sqlite_session:
        ids = _requests(sqlite_session, 3)
        rows = [_candidate(rid, m, params={"k": [rid]}) for rid in ids for m in ("a", "b")]
        assert bulk_insert_ignore(sqlite_session, Candidate, rows[:2]) == 2
        assert bulk_insert_ignore(sqlite_session, Candidate, rows) == 4
        assert insert_ignore(sqlite_session, Candidate, rows) == []
        assert bulk_insert_ignore(sqlite_session, Candidate, []) == 0
        stored = _stored(sqlite_session, ids)
        assert len(stored) == 6
        assert stored[(ids[2], "b")].params == {"k": [ids[2]]}
    engine.dispose()


def test_without_flush_wait_counts_the_same_and_only_this_transaction(
        session: Session, pg_url: str) -> None:
    ids = _requests(session, 20)
    rows = [_candidate(rid, m) for rid in ids for m in ("a", "b")]
    assert bulk_insert_ignore(session, Candidate, rows[:10], wait_for_flush=False) == 10
    assert bulk_insert_ignore(session, Candidate, rows, wait_for_flush=False) == 30
    assert bulk_insert_ignore(session, Candidate, rows, wait_for_flush=False) == 0
    # The executemany fallback (an INTEGER column given True and 7) counts the same way.
    odd = [_candidate(ids[0], "c", prompt_tokens=True), _candidate(ids[1], "c", prompt_tokens=7)]
    assert bulk_insert_ignore(session, Candidate, odd, wait_for_flush=False) == 2
    assert len(_stored(session, ids)) == 42
    show = "SHOW synchronous_commit"
    assert session.connection().exec_driver_sql(show).scalar() == "off"
    # SET LOCAL: a later transaction on a pooled connection waits for its flush again.
    engine = create_engine(pg_url, pool_size=1)
    with Session(engine) as other:
        other_ids = _requests(other, 2)
        assert bulk_insert_ignore(other, Candidate, [_candidate(rid, "a") for rid in other_ids],
                                  wait_for_flush=False) == 2
        other.rollback()
        assert other.connection().exec_driver_sql(show).scalar() == "on"
    engine.dispose()


def _request_rows(session: Session, ids: list[int]) -> dict[int, Request]:
    session.expire_all()
    return {r.id or 0: r for r in session.exec(select(Request).where(col(Request.id).in_(ids)))}


def test_bulk_update_sets_each_row_its_own_values_and_nothing_else(session: Session) -> None:
    ids = _requests(session, 5)
    now = utcnow()
    bulk_update(session, Request, [
        {"id": rid, "status": "completed", "fused_output": f"out {rid}", "completed_at": now}
        for rid in ids[:3]])
    bulk_update(session, Request, [{"id": ids[3], "chosen_candidate_id": 77}])
    stored = _request_rows(session, ids)
    for rid in ids[:3]:
        assert (stored[rid].status, stored[rid].fused_output) == ("completed", f"out {rid}")
        assert stored[rid].completed_at == now
    assert stored[ids[3]].chosen_candidate_id == 77
    assert stored[ids[3]].status == stored[ids[4]].status == "pending"
    assert stored[ids[4]].fused_output is None


def test_bulk_update_refuses_nul_and_rows_without_the_key(session: Session) -> None:
    ids = _requests(session, 2)
    with pytest.raises(ValueError, match="request row 1: fused_output contains a NUL"):
        bulk_update(session, Request, [{"id": ids[0], "fused_output": "fine"},
                                       {"id": ids[1], "fused_output": "bad\x00"}])
    with pytest.raises(ValueError, match="need 'id'"):
        bulk_update(session, Request, [{"status": "failed"}])
    assert {r.fused_output for r in _request_rows(session, ids).values()} == {None}


def test_bulk_update_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'u.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        ids = _requests(session, 2)
        bulk_update(session, Request, [{"id": ids[1], "status": "failed", "error": "why"}])
        stored = _request_rows(session, ids)
        assert (stored[ids[1]].status, stored[ids[1]].error) == ("failed", "why")
        assert stored[ids[0]].status == "pending"
