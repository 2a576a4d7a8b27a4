"""Comparison and candidate rows per second through blendq's write paths against plain ORM
inserts, in one run, into the same tables of the same database; every figure is also
printed as a ratio against the ORM baseline of that run.

    python -m ops.bench.storage                          # 4,000 requests, batches of 256
    python -m ops.bench.storage --requests 10000 --batch 512

Comparison rows (6 ordered pairs of 3 candidates a request), one transaction a batch:
- copy: ``db.writes.copy_insert_ignore``, a binary COPY under a savepoint, in a
  transaction that waits for its WAL to reach disk;
- orm: ``session.add_all`` of ``Comparison`` objects and ``commit`` (the baseline);
- copy again: the same rows a second time, every one a conflict (a redelivered task): the
  COPY fails and the batch takes the unnest path below;
- unnest: ``db.writes.bulk_insert_ignore``, one ``INSERT … SELECT * FROM unnest(…) ON
  CONFLICT DO NOTHING`` (the path before the COPY);
- temp-table copy (and again): the path before issue 13, kept here to compare: COPY into a
  temporary table, ``INSERT … SELECT … ON CONFLICT DO NOTHING``, TRUNCATE;
- copy, no flush wait: the same in a transaction that commits without waiting for its WAL
  to reach disk (``session_scope(url, flush_wal=False)``): what the ranking worker does
  with each batch of logits (its ranking commit, which waits, makes them durable);
- copy, with the keys: the same into a copy of the comparison table that still has the
  request and candidate foreign keys migrations 0011 and 0012 dropped, to show what their
  per-row checks cost.

Candidate rows (3 a request, a few hundred characters of text, JSON params), the same way:
``db.writes.insert_ignore`` (a COPY), its second delivery, the same without the flush
wait as the generation worker calls it, ORM ``add_all`` (the baseline) and SQLAlchemy's
executemany (insert_ignore before issue 13).

Each way writes under a ranker revision (or model names) of its own, so no way meets
another's rows; within a round the ways take turns batch by batch, so a machine busy with
other work slows each alike; the median round counts. Needs PostgreSQL
(BLENDQ_BENCH_ADMIN_URL); a fresh database is made and dropped. The tables come last.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import MetaData, Table, func, insert
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, SQLModel, col, select

from db.engine import get_engine, session_scope
from db.models import Candidate, Chunk, Comparison, Job, Request, utcnow
from db.writes import bulk_insert_ignore, copy_insert_ignore, insert_ignore
from ops.bench.stack import fresh_database

Rows = list[dict[str, Any]]
Write = Callable[[str, Rows], int | None]
MODELS = ("tiny-a", "tiny-b", "tiny-c")
CHECKED = "comparison_with_keys"
ANSWER = ("A candidate answer of a few sentences, about as long as a short reply from a "
          "chat model: it restates the question, gives the answer and one reason. ") * 2


def prepare(url: str, requests: int) -> list[tuple[int, list[int]]]:
    """One job of ``requests`` requests with 3 candidates each; (request id, candidate ids)."""
    with session_scope(url) as session:
        job = Job(models=list(MODELS), total=requests)
        session.add(job)
        session.flush()
        chunk = Chunk(job_id=job.id, index=0, size=requests)
        session.add(chunk)
        session.flush()
        request_ids = list(session.scalars(insert(Request).returning(Request.id), [  # type: ignore[call-overload]
            {"job_id": job.id, "chunk_id": chunk.id, "line_no": i + 1,
             "custom_id": f"req-{i}", "instruction": f"Question {i}", "input": "",
             "params": {}, "status": "pending"} for i in range(requests)]))
        now = utcnow()
        candidate_ids = list(session.scalars(insert(Candidate).returning(Candidate.id), [  # type: ignore[call-overload]
            {"request_id": rid, "model": model, "model_revision": "", "params": {},
             "ok": True, "text": f"answer of {model}", "prompt_tokens": 0,
             "completion_tokens": 0, "latency_ms": 0.0, "created_at": now}
            for rid in request_ids for model in MODELS]))
    return [(rid, candidate_ids[3 * i:3 * i + 3]) for i, rid in enumerate(request_ids)]


def comparison_rows(requests: list[tuple[int, list[int]]], revision: str) -> Rows:
    now = utcnow()
    return [{"request_id": rid, "candidate_a_id": a, "candidate_b_id": b,
             "logit": 0.001 * (rid % 997) - 0.5, "ranker_revision": revision,
             "created_at": now}
            for rid, cands in requests for a in cands for b in cands if a != b]


def candidate_rows(requests: list[tuple[int, list[int]]], prefix: str) -> Rows:
    """Rows as workers/generation/tasks.py ``_row`` builds them, under new model names."""
    now = utcnow()
    params = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    return [{"request_id": rid, "model": f"{prefix}-{k}", "model_revision": "rev",
             "params": params, "ok": True, "text": ANSWER, "error": None,
             "prompt_tokens": 40, "completion_tokens": 80, "latency_ms": 12.5,
             "created_at": now}
            for rid, _ in requests for k in range(3)]


def batches(rows: Rows, size: int) -> list[Rows]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


# Each writer stores one batch in one transaction, as the workers do, and returns how many
# rows were new (None where the path does not say).

def write_copy(url: str, batch: Rows) -> int | None:
    with session_scope(url) as session:
        return copy_insert_ignore(session, Comparison, batch)


def write_copy_no_flush_wait(url: str, batch: Rows) -> int | None:
    with session_scope(url, flush_wal=False) as session:
        return copy_insert_ignore(session, Comparison, batch)


def write_unnest(url: str, batch: Rows) -> int | None:
    with session_scope(url) as session:
        return bulk_insert_ignore(session, Comparison, batch)


@functools.cache
def checked_table(url: str) -> Table:
    return Table(CHECKED, MetaData(), autoload_with=get_engine(url))


def write_copy_with_keys(url: str, batch: Rows) -> int | None:
    """The same COPY into a copy of the comparison table with the three foreign keys
    migrations 0011 and 0012 dropped: what their per-row checks cost."""
    with session_scope(url) as session:
        return copy_insert_ignore(session, checked_table(url), batch)


def temp_table_copy(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]]
                    ) -> int:
    """db.writes.copy_insert_ignore as it was before issue 13, to compare against."""
    table = model.__table__  # type: ignore[attr-defined]
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    temp = f"_copy_{table.name}_{zlib.crc32(','.join(columns).encode()):08x}"
    connection = session.connection()
    connection.exec_driver_sql(
        f'CREATE TEMPORARY TABLE IF NOT EXISTS "{temp}" AS '
        f'SELECT {names} FROM "{table.name}" WITH NO DATA')
    raw = connection.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(f'COPY "{temp}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])
    inserted = connection.exec_driver_sql(
        f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM "{temp}" '
        f"ON CONFLICT DO NOTHING")
    connection.exec_driver_sql(f'TRUNCATE "{temp}"')
    return int(inserted.rowcount)


def write_temp_copy(url: str, batch: Rows) -> int | None:
    with session_scope(url) as session:
        return temp_table_copy(session, Comparison, batch)


def write_candidates(url: str, batch: Rows) -> int | None:
    with session_scope(url) as session:
        insert_ignore(session, Candidate, batch)
    return None


def write_candidates_no_flush_wait(url: str, batch: Rows) -> int | None:
    with session_scope(url, flush_wal=False) as session:
        insert_ignore(session, Candidate, batch)
    return None


def write_candidates_executemany(url: str, batch: Rows) -> int | None:
    """insert_ignore(Candidate) as it was before issue 13: SQLAlchemy's executemany."""
    with session_scope(url) as session:
        session.execute(postgresql.insert(Candidate).on_conflict_do_nothing(), batch)
    return None


def orm_writer(model: type[SQLModel]) -> Write:
    def write(url: str, batch: Rows) -> int | None:
        with Session(get_engine(url)) as session:
            session.add_all([model(**row) for row in batch])
            session.commit()
        return None
    return write


def stored_candidates(url: str, prefix: str) -> int:
    with session_scope(url) as session:
        return session.exec(select(func.count()).select_from(Candidate)
                            .where(col(Candidate.model).startswith(prefix))).one()


@dataclass(frozen=True)
class Way:
    name: str
    label: str
    kind: str  # "comparison" or "candidate"
    write: Write
    again: bool = False  # writes the previous way's rows a second time
    baseline: bool = False


WAYS = [
    Way("orm", "ORM add_all + commit", "comparison", orm_writer(Comparison), baseline=True),
    Way("copy", "copy_insert_ignore: COPY, flush wait", "comparison", write_copy),
    Way("copy again", "copy_insert_ignore, all rows already stored", "comparison",
        write_copy, again=True),
    Way("unnest", "bulk_insert_ignore: INSERT … unnest", "comparison", write_unnest),
    Way("temp copy", "COPY to temporary table (before issue 13)", "comparison",
        write_temp_copy),
    Way("temp copy again", "COPY to temporary table, all rows stored", "comparison",
        write_temp_copy, again=True),
    Way("copy, no flush wait", "copy_insert_ignore, no flush wait (ranking)",
        "comparison", write_copy_no_flush_wait),
    Way("copy, with keys", "copy, flush wait, foreign keys (before 0011/12)",
        "comparison", write_copy_with_keys),
    Way("cand orm", "ORM add_all + commit", "candidate", orm_writer(Candidate), baseline=True),
    Way("cand insert_ignore", "insert_ignore(Candidate): COPY, flush wait", "candidate",
        write_candidates),
    Way("cand again", "insert_ignore(Candidate), all rows stored", "candidate",
        write_candidates, again=True),
    Way("cand no flush wait", "insert_ignore, no flush wait (generation)", "candidate",
        write_candidates_no_flush_wait),
    Way("cand executemany", "executemany (insert_ignore before issue 13)", "candidate",
        write_candidates_executemany),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000,
                        help="6 comparison rows and 3 candidate rows each, per way and round")
    parser.add_argument("--batch", type=int, default=256,
                        help="rows a transaction (a ranking batch)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rates: dict[str, list[float]] = {way.name: [] for way in WAYS}
    with fresh_database(f"blendq_bench_storage_{os.getpid()}") as url:
        requests = prepare(url, args.requests)
        with session_scope(url) as session:
            session.connection().exec_driver_sql(
                f"CREATE TABLE {CHECKED} (LIKE comparison INCLUDING ALL)")
            for column, target in (("request_id", "request"), ("candidate_a_id", "candidate"),
                                   ("candidate_b_id", "candidate")):
                session.connection().exec_driver_sql(
                    f"ALTER TABLE {CHECKED} ADD FOREIGN KEY ({column}) "
                    f"REFERENCES {target}(id) ON DELETE CASCADE")
        sizes = {"comparison": 6 * len(requests), "candidate": 3 * len(requests)}

        def rows_for(way: Way, reqs: list[tuple[int, list[int]]], tag: str) -> Rows:
            make = comparison_rows if way.kind == "comparison" else candidate_rows
            return make(reqs, f"{way.name}-{tag}")

        # A warm-up round: connections, prepared statements, the ORM's mapper caches.
        for way in WAYS:
            for batch in batches(rows_for(way, requests[:200], "warm"), args.batch):
                way.write(url, batch)
        for round_no in range(args.rounds):
            # Every way's rows (an "again" way repeats the way before it), then batch by
            # batch, each way in turn: a busy machine slows every way alike.
            work: dict[str, list[Rows]] = {}
            for way, previous in zip(WAYS, [None, *WAYS], strict=False):
                work[way.name] = (work[previous.name] if way.again and previous
                                  else batches(rows_for(way, requests, str(round_no)),
                                               args.batch))
            seconds = dict.fromkeys(work, 0.0)
            new_rows = dict.fromkeys(work, 0)
            for index in range(max(map(len, work.values()))):
                for way in WAYS:
                    if index >= len(work[way.name]):
                        continue  # 3 candidate rows a request against 6 comparisons
                    started = time.perf_counter()
                    inserted = way.write(url, work[way.name][index])
                    seconds[way.name] += time.perf_counter() - started
                    new_rows[way.name] += inserted or 0
            for way in WAYS:
                rates[way.name].append(sizes[way.kind] / seconds[way.name])
                if way.kind == "comparison" and not way.baseline:
                    # The writers' own count: every row new once, none on the second pass.
                    expected = 0 if way.again else sizes[way.kind]
                    assert new_rows[way.name] == expected, (way.name, new_rows[way.name])
                elif way.kind == "candidate":
                    # insert_ignore returns no count: the table says each row is there once.
                    source = way.name if not way.again else WAYS[WAYS.index(way) - 1].name
                    stored = stored_candidates(url, f"{source}-{round_no}-")
                    assert stored == sizes["candidate"], (way.name, stored)
            print(f"round {round_no + 1}: " + ", ".join(
                f"{way} {values[-1]:,.0f}" for way, values in rates.items()) + " rows/s",
                flush=True)

    median = {way: statistics.median(values) for way, values in rates.items()}
    print(f"\n{sizes['comparison']:,} comparison and {sizes['candidate']:,} candidate rows a "
          f"way and round, {args.batch} a transaction, median of {args.rounds} rounds")
    print(f"{'write path':<48} {'rows/s':>10} {'/ orm':>7}")
    for kind, baseline in (("comparison", "orm"), ("candidate", "cand orm")):
        print(f"{kind} rows")
        for way in WAYS:
            if way.kind == kind:
                print(f"  {way.label:<46} {median[way.name]:>10,.0f} "
                      f"{median[way.name] / median[baseline]:>6.1f}x")
    print(f"comparison copy, as the ranking worker writes / orm: "
          f"{median['copy, no flush wait'] / median['orm']:.1f}x "
          f"(flush wait {median['copy'] / median['orm']:.1f}x, "
          f"unnest {median['unnest'] / median['orm']:.1f}x, "
          f"with the keys {median['copy, with keys'] / median['orm']:.1f}x, "
          f"temp-table copy {median['temp copy'] / median['orm']:.1f}x)")
    print(f"candidate insert_ignore, as the generation worker writes / orm: "
          f"{median['cand no flush wait'] / median['cand orm']:.1f}x "
          f"(flush wait {median['cand insert_ignore'] / median['cand orm']:.1f}x)")


if __name__ == "__main__":
    main()
