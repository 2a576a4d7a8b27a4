"""Control-plane throughput: a large job through a fleet of workers whose models cost no
compute (``backend = "null"``, workers/null_models.py), so what is measured is PostgreSQL,
RabbitMQ, the dispatcher, chord counting, claims, leases and counts.

    python -m ops.bench.fleet                          # 50,000 requests, chunks of 64
    python -m ops.bench.fleet --requests 2000 --replicas 1

Three generator queues with ``--replicas`` workers each, that many ranking and fusion
workers, and one dispatcher, started with ``manage.py`` as admins start them, on a fresh
database and RabbitMQ vhost. One warm-up job of one chunk runs first. Printed:

- requests/s end to end: from the job's creation (its submission) to its completion, and
  from its first chunk starting (the fleet's own rate, without parsing the file);
- PostgreSQL transactions per request (pg_stat_database, committed and rolled back, over
  the whole run of the measured job, all processes);
- RabbitMQ messages per request: task messages the workers received (Celery's counters);
- time per chunk: seconds per finished chunk over the first and the last tenth of the
  chunks to finish, and their ratio: costs that grew with the job would show here;
- CPU seconds each kind of process spent during the job (workers, dispatcher,
  PostgreSQL, RabbitMQ): where the cores went.

Workers send task events as they do by default (for Flower); ``BLENDQ_TASK_EVENTS=false``
in the environment measures a fleet without them.

Machines differ (the same code ran 3x faster on one two-core machine than on another), so
the run first measures a baseline on the same stack: the issue's own bare pipeline, no-op
tasks in the canvas of the same shape with chunks of 8, one solo worker per queue
(``ops.bench.pipeline.run_bare``; 4,000 requests by default). The issue measured 320
requests/s for it when it set the target of 1,000, so the target reads as a ratio:
fleet / bare ≥ 1,000 / 320 = 3.1x.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import psycopg
from sqlmodel import Session, create_engine, select

from db.engine import libpq_url
from db.models import Chunk
from ops.bench.pipeline import run_bare
from ops.bench.stack import Stack, running_stack, stored_counts, wait_for_job, write_prompts
from orchestration.celery_app import configure
from orchestration.settings import Settings

MODELS = ("null-a", "null-b", "null-c")
# The bare pipeline: its chunk size, and what it moved when the target was set.
BARE_CHUNK_SIZE = 8
BARE_RATE_AT_TARGET = 320.0
TARGET_RATE = 1000.0
REGISTRY = "".join(f"""
[[models]]
name = "{name}"
role = "{role}"
backend = "null"
path = "null"
params = {{ latency_ms = {{latency}} }}
""" for name, role in (*((m, "generator") for m in MODELS), ("null-ranker", "ranker"),
                       ("null-fuser", "fuser")))


def _transactions(database_url: str) -> int:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
        assert row is not None
        return int(row[0])


def _task_messages(stack: Stack) -> int:
    app = configure(stack.settings)
    replies = app.control.inspect(timeout=3).stats() or {}
    return sum(sum(stats.get("total", {}).values()) for stats in replies.values())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_by_kind(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the stack's processes by kind, and of the servers'."""
    spent: dict[str, float] = {}
    for name, process in stack.processes.items():
        kind = name.split("-")[0]
        spent[kind] = spent.get(kind, 0.0) + _cpu_seconds(process.pid)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            if comm in ("postgres", "beam.smp"):
                kind = "postgresql" if comm == "postgres" else "rabbitmq"
                spent[kind] = spent.get(kind, 0.0) + _cpu_seconds(int(proc.name))
        except (OSError, IndexError):
            continue  # gone meanwhile
    return spent


def _pace(database_url: str, job_id: str) -> tuple[float, float]:
    """Seconds per finished chunk over the first and the last tenth of the job."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            ends = sorted(t.timestamp() for t in session.exec(
                select(Chunk.finished_at).where(Chunk.job_id == job_id)).all() if t)
    finally:
        engine.dispose()
    k = max(len(ends) // 10, 1)
    return (ends[k] - ends[0]) / k, (ends[-1] - ends[-1 - k]) / k


def _first_start(database_url: str, job_id: str) -> float:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute("SELECT extract(epoch FROM min(c.started_at)), "
                           "extract(epoch FROM j.completed_at) FROM chunk c "
                           "JOIN job j ON j.id = c.job_id WHERE j.id = %s "
                           "GROUP BY j.completed_at", (job_id,)).fetchone()
        assert row is not None
        return float(row[1]) - float(row[0])


def _submit(stack: Stack, folder: Path, requests: int, chunk_size: int) -> str:
    prompts = write_prompts(folder / f"prompts-{requests}.jsonl", requests)
    return stack.manage("jobs", "submit", str(prompts), "--models", ",".join(MODELS),
                        "--chunk-size", str(chunk_size), timeout=900).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=2,
                        help="workers per generator queue, ranking and fusion workers")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="wait per model call (a latency model; no core used)")
    parser.add_argument("--bare-requests", type=int, default=4000,
                        help="requests of the bare baseline (chunks of 8); 0 skips it")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the processes' logs here, at INFO (default: WARNING, "
                             "in a temporary folder)")
    args = parser.parse_args()

    settings = Settings(env="test")
    with tempfile.TemporaryDirectory(prefix="blendq-bench-fleet-") as name:
        folder = Path(name)
        logs = args.logs or folder
        logs.mkdir(parents=True, exist_ok=True)
        registry = folder / "registry.toml"
        registry.write_text(REGISTRY.replace("{latency}", str(args.latency_ms)))
        env = {"BLENDQ_REGISTRY_PATH": str(registry)}
        with running_stack(settings, "fleet", logs, env=env, start=False) as stack:
            stack.start("dispatcher", "dispatcher", "--poll", "0.5",
                        ready="dispatcher.started")
            bare_chunks = -(-args.bare_requests // BARE_CHUNK_SIZE)
            bare = (run_bare(stack, list(MODELS), bare_chunks, args.timeout)
                    if bare_chunks else None)
            # Workers log per task at INFO; what is measured here is not logging.
            stack.env["BLENDQ_LOG_LEVEL"] = "INFO" if args.logs else "WARNING"
            ready = "[queues]"  # with WARNING logs, the banner is the sign of life
            for replica in range(args.replicas):
                for model in MODELS:
                    stack.start(f"gen-{model}-{replica}", "worker", "generate", "--model",
                                model, ready=ready)
                stack.start(f"rank-{replica}", "worker", "rank", ready=ready)
                stack.start(f"fuse-{replica}", "worker", "fuse", ready=ready)
            time.sleep(2)  # the banner comes just before the consumers start
            url = stack.settings.database_url
            warm = _submit(stack, folder, args.chunk_size, args.chunk_size)
            wait_for_job(url, warm, args.timeout)

            transactions, messages = _transactions(url), _task_messages(stack)
            cpu = _cpu_by_kind(stack)
            started = time.perf_counter()
            job_id = _submit(stack, folder, args.requests, args.chunk_size)
            submitted = time.perf_counter() - started
            job = wait_for_job(url, job_id, args.timeout, report=10)
            cpu = {k: v - cpu.get(k, 0.0) for k, v in _cpu_by_kind(stack).items()}
            transactions = _transactions(url) - transactions
            messages = _task_messages(stack) - messages
            counts = stored_counts(url, job_id)
            if job.status != "completed" or job.completed != args.requests:
                raise SystemExit(f"job {job_id} {job.status}: {job.completed}/"
                                 f"{args.requests}; {counts}")
            assert job.completed_at is not None
            seconds = (job.completed_at - job.created_at).total_seconds()
            fleet_seconds = _first_start(url, job_id)
            first, last = _pace(url, job_id)

    workers = 3 * args.replicas + 2 * args.replicas
    print(f"\n{args.requests} requests, chunks of {args.chunk_size}, {len(MODELS)} null "
          f"generators x {args.replicas}, {args.replicas} rank, {args.replicas} fuse "
          f"({workers} workers), one dispatcher; task events "
          f"{'on' if settings.task_events else 'off'} (BLENDQ_TASK_EVENTS); rows {counts}")
    print(f"submission (parse, validate, store):  {submitted:8.2f} s")
    print(f"end to end (created → completed):     {seconds:8.2f} s  "
          f"{args.requests / seconds:8.1f} requests/s")
    print(f"fleet (first chunk start → completed): {fleet_seconds:7.2f} s  "
          f"{args.requests / fleet_seconds:8.1f} requests/s")
    if bare is not None:
        bare_rate = bare_chunks * BARE_CHUNK_SIZE / bare
        ratio = args.requests / seconds / bare_rate
        print(f"baseline, bare canvas of no-op tasks (chunks of {BARE_CHUNK_SIZE}, one solo "
              f"worker per queue): {bare_rate:8.1f} requests/s")
        print(f"end to end / bare: {ratio:.2f}x (the target, 1,000 requests/s where bare "
              f"moved 320: {TARGET_RATE / BARE_RATE_AT_TARGET:.2f}x); at bare = 320 that is "
              f"{ratio * BARE_RATE_AT_TARGET:.0f} requests/s")
    print(f"PostgreSQL transactions per request:  {transactions / args.requests:8.2f}")
    print(f"RabbitMQ task messages per request:   {messages / args.requests:8.3f}")
    print(f"time per chunk, first tenth of the job: {first:6.3f} s")
    print(f"time per chunk, last tenth of the job:  {last:6.3f} s")
    print(f"last / first: {last / first:.2f}x")
    print("CPU seconds during the job: " + ", ".join(
        f"{kind} {seconds:.1f}" for kind, seconds in sorted(cpu.items(), key=lambda x: -x[1])))


if __name__ == "__main__":
    main()
