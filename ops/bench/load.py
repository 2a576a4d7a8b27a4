"""A large job through the real services: throughput and each worker's peak memory.

    python -m ops.bench.load                      # 5,000 requests, chunks of 8
    python -m ops.bench.load --requests 40        # a smoke run (about a minute)

Starts the dispatcher and one worker per stage with ``manage.py`` (three tiny generators,
the tiny ranker, the tiny fuser: the built-in registry) on a fresh database and a RabbitMQ
vhost of its own, submits one job with ``manage.py jobs submit``, waits for it, checks
that every request completed and every stage stored exactly its rows (3 candidates, 6
comparisons, 1 ranking and 1 fusion a request), then prints the throughput and, for each
process, its resident memory once warm and its peak (VmHWM) at the end. Exits 1 when a
check fails. Needs PostgreSQL and RabbitMQ on this machine (BLENDQ_BENCH_ADMIN_URL,
BLENDQ_BENCH_BROKER_URL). The table comes last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ops.bench.stack import (
    GENERATORS,
    memory_mib,
    running_stack,
    stored_counts,
    wait_for_job,
    write_prompts,
)
from orchestration.settings import Settings

# Rows a request leaves in each stage's table: one candidate per generator, every ordered
# pair of them compared (the default "full" strategy), one ranking, one fusion.
PER_REQUEST = {"candidate": len(GENERATORS),
               "comparison": len(GENERATORS) * (len(GENERATORS) - 1),
               "ranking": 1, "fusion": 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="per request; default: the registry's (24 for the tiny models)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the processes' logs here (default: a temporary folder)")
    args = parser.parse_args()

    settings = Settings(env="test")
    with tempfile.TemporaryDirectory(prefix="blendq-load-") as folder:
        logs = args.logs or Path(folder)
        logs.mkdir(parents=True, exist_ok=True)
        params = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None
        prompts = write_prompts(Path(folder) / "load.jsonl", args.requests, params)
        print(f"starting the stack (logs in {logs})", flush=True)
        with running_stack(settings, "load", logs) as stack:
            warm = {name: memory_mib(stack.pid(name), "VmRSS") for name in stack.processes}
            started = time.monotonic()
            job_id = stack.manage("jobs", "submit", str(prompts), "--chunk-size",
                                  str(args.chunk_size), timeout=1800).stdout.strip()
            submitted = time.monotonic() - started
            print(f"job {job_id}: {args.requests} requests submitted in {submitted:.1f}s",
                  flush=True)
            job = wait_for_job(stack.settings.database_url, job_id, args.timeout, report=30)
            wall = time.monotonic() - started
            peaks = {name: memory_mib(stack.pid(name)) for name in stack.processes}
            counts = stored_counts(stack.settings.database_url, job_id)

    problems = []
    if (job.status, job.total, job.completed, job.failed) != (
            "completed", args.requests, args.requests, 0):
        problems.append(f"job {job.status}: total {job.total}, completed {job.completed}, "
                        f"failed {job.failed}")
    for table, each in PER_REQUEST.items():
        if counts[table] != each * args.requests:
            problems.append(f"{table}: {counts[table]} rows, expected {each * args.requests}")
    assert job.completed_at is not None or problems
    # From the job's own timestamps: submission (the file's validation and insert) to the
    # last request finished.
    span = ((job.completed_at - job.created_at).total_seconds()
            if job.completed_at else float("nan"))

    print(f"\n{args.requests} requests, chunks of {args.chunk_size}, "
          f"models {', '.join(GENERATORS)}")
    print(f"counts: {', '.join(f'{t} {n}' for t, n in counts.items())} "
          f"({'verified' if not problems else 'WRONG'})")
    print(f"job created -> completed: {span:.1f}s   wall with submission: {wall:.1f}s")
    print(f"throughput: {args.requests / span:.1f} requests/s")
    print(f"{'process':<14} {'RSS warm MiB':>13} {'peak MiB':>10}")
    for name in peaks:
        print(f"{name:<14} {warm[name]:>13.0f} {peaks[name]:>10.0f}")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
