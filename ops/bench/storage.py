"""Comparison rows per second through blendq's write path against plain ORM inserts, in
one run, into the same table of the same database.

    python -m ops.bench.storage                          # 24,000 rows a way, batches of 256
    python -m ops.bench.storage --requests 10000 --batch 512

- copy: ``db.writes.copy_insert_ignore``, what the ranking worker does with each batch of
  logits (COPY into a temporary table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``),
  one transaction a batch;
- orm: ``session.add_all`` of ``Comparison`` objects and ``commit``, one a batch;
- copy again: the same rows through copy_insert_ignore a second time, every one a conflict
  (what a redelivered ranking task costs).

Each way writes every request's 6 ordered pairs of 3 candidates under a ranker revision of
its own (so no way meets another's rows), in interleaved rounds; the median round counts.
Needs PostgreSQL (BLENDQ_BENCH_ADMIN_URL); a fresh database is made and dropped. The table
comes last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from db.engine import get_engine, session_scope
from db.models import Candidate, Chunk, Comparison, Job, Request, utcnow
from db.writes import copy_insert_ignore
from ops.bench.stack import fresh_database

Rows = list[dict[str, Any]]
MODELS = ("tiny-a", "tiny-b", "tiny-c")


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


def batches(rows: Rows, size: int) -> list[Rows]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def write_copy(url: str, rows: Rows, size: int) -> int:
    written = 0
    for batch in batches(rows, size):
        with session_scope(url) as session:
            written += copy_insert_ignore(session, Comparison, batch)
    return written


def write_orm(url: str, rows: Rows, size: int) -> int:
    engine = get_engine(url)
    for batch in batches(rows, size):
        with Session(engine) as session:
            session.add_all([Comparison(**row) for row in batch])
            session.commit()
    return len(rows)


def timed(write: Callable[[str, Rows, int], int], url: str, rows: Rows,
          size: int) -> tuple[float, int]:
    started = time.perf_counter()
    written = write(url, rows, size)
    return time.perf_counter() - started, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000,
                        help="6 comparison rows each, per way and round")
    parser.add_argument("--batch", type=int, default=256,
                        help="rows a transaction (a ranking batch)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rates: dict[str, list[float]] = {"copy": [], "orm": [], "copy again": []}
    with fresh_database(f"blendq_bench_storage_{os.getpid()}") as url:
        requests = prepare(url, args.requests)
        rows_per_way = len(comparison_rows(requests[:1], "x")) * len(requests)
        # A warm-up round: connections, the temporary table, the ORM's mapper caches.
        write_copy(url, comparison_rows(requests[:200], "warm-copy"), args.batch)
        write_orm(url, comparison_rows(requests[:200], "warm-orm"), args.batch)
        for round_no in range(args.rounds):
            copy_rows = comparison_rows(requests, f"copy-{round_no}")
            seconds, written = timed(write_copy, url, copy_rows, args.batch)
            assert written == rows_per_way, (written, rows_per_way)
            rates["copy"].append(written / seconds)
            seconds, written = timed(write_orm, url, comparison_rows(
                requests, f"orm-{round_no}"), args.batch)
            rates["orm"].append(written / seconds)
            seconds, written = timed(write_copy, url, copy_rows, args.batch)
            assert written == 0, f"a second delivery stored {written} rows"
            rates["copy again"].append(rows_per_way / seconds)
            print(f"round {round_no + 1}: " + ", ".join(
                f"{way} {values[-1]:,.0f} rows/s" for way, values in rates.items()), flush=True)

    median = {way: statistics.median(values) for way, values in rates.items()}
    print(f"\n{rows_per_way:,} comparison rows a way and round, {args.batch} a transaction, "
          f"median of {args.rounds} rounds")
    print(f"{'write path':<46} {'rows/s':>10}")
    print(f"{'copy_insert_ignore (the ranking worker)':<46} {median['copy']:>10,.0f}")
    print(f"{'ORM add_all + commit':<46} {median['orm']:>10,.0f}")
    print(f"{'copy_insert_ignore, all rows already stored':<46} {median['copy again']:>10,.0f}")
    print(f"copy / orm: {median['copy'] / median['orm']:.1f}x")


if __name__ == "__main__":
    main()
