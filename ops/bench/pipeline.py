"""Pipeline overhead: requests per second of the full pipeline with the tiny models against
a bare Celery canvas of the same shape with no-op tasks, in one run.

    python -m ops.bench.pipeline                  # 400 requests, chunks of 8
    python -m ops.bench.pipeline --requests 800 --chunk-size 16

Both run on one fresh database and one RabbitMQ vhost, with the same Celery settings,
queues, routing and chord counting (``PostgresChordBackend``), one solo worker process per
queue (gen.tiny-a, gen.tiny-b, gen.tiny-c, rank, fuse) and the dispatcher:

- bare: the canvas of the same shape, ``chord(group(generate per model), rank) | fuse``
  (``chunk_canvas`` and the fuse signature the rank task queues through the outbox), its
  tasks registered as no-ops in ``python -m ops.bench.pipeline noop-worker`` processes;
  every canvas is published at once from here; timed from the first publish to the
  last fuse task done (each fuse worker's task count, read by remote control);
- full: the same requests submitted with ``manage.py jobs submit`` to the real workers,
  timed from the job's creation to its completion (its own timestamps).

Each phase first runs one warm-up chunk. The ratio bare / full is what the stages' work
(the models, the reads and writes, the lifecycle) costs over Celery and chord counting
alone. The table comes last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from ops.bench.stack import (
    GENERATORS,
    Stack,
    running_stack,
    stored_counts,
    wait_for_job,
    write_prompts,
)
from orchestration.canvas import chunk_canvas, fuse_signature
from orchestration.celery_app import (
    FUSE_QUEUE,
    FUSE_TASK,
    GENERATE_TASK,
    RANK_QUEUE,
    RANK_TASK,
    configure,
    gen_queue,
)
from orchestration.settings import Settings


def _noop(**_: Any) -> None:
    return None


def noop_worker(queue: str) -> None:
    """A worker like ``manage.py worker`` whose generate, rank and fuse tasks do nothing."""
    from ops import context
    from orchestration.celery_app import declare_dead_letters

    settings = context.settings()
    app = context.app(settings)
    for name in (GENERATE_TASK, RANK_TASK, FUSE_TASK):
        app.task(name=name)(_noop)
    declare_dead_letters(app)
    app.worker_main(["worker", "--queues", queue, "--pool", "solo", "--concurrency", "1",
                     "--prefetch-multiplier", "1", "--hostname", f"{queue}@bench",
                     "--without-gossip", "--without-mingle", "--loglevel", "INFO"])


def _fused(app: Celery) -> int:
    replies = app.control.inspect(destination=[f"{FUSE_QUEUE}@bench"], limit=1,
                                  timeout=2).stats() or {}
    return sum(int(stats.get("total", {}).get(FUSE_TASK, 0)) for stats in replies.values())


def _bare_chunks(app: Celery, models: list[str], chunks: int, timeout: float) -> float:
    """Publish ``chunks`` canvases at once; seconds until the last fuse task is done."""
    before = _fused(app)
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for chunk in range(chunks):
        # Negative chunk ids: no real chunk has one, so the ranking worker, which reads the
        # outbox for chunks waiting on its queue, never mistakes these for its own.
        job = f"bench_{run}"
        (chunk_canvas(app, job, -1 - chunk, models)
         | fuse_signature(app, job, -1 - chunk)).apply_async()
    deadline = time.monotonic() + timeout
    while _fused(app) < before + chunks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"bare canvases not done after {timeout:.0f}s")
        time.sleep(0.05)
    return time.perf_counter() - started


def run_bare(stack: Stack, models: list[str], chunks: int, timeout: float) -> float:
    """The bare canvas on ``stack`` (its dispatcher launched): a no-op worker per queue of
    ``models``, rank and fuse, one warm-up chunk, then ``chunks`` chunks; their seconds.
    The workers are stopped again, so the stack's own workers can take the queues."""
    app = configure(stack.settings)
    queues = [*(gen_queue(m) for m in models), RANK_QUEUE, FUSE_QUEUE]
    for queue in queues:
        stack.launch(f"noop-{queue}", ready=" ready.", command=[
            sys.executable, "-m", "ops.bench.pipeline", "noop-worker", "--queue", queue])
    stack.wait_ready()
    try:
        _bare_chunks(app, models, 1, timeout)
        return _bare_chunks(app, models, chunks, timeout)
    finally:
        stack.stop(*(f"noop-{queue}" for queue in queues))


def _full_job(stack: Stack, requests: int, chunk_size: int, folder: Path,
              timeout: float) -> float:
    prompts = write_prompts(folder / f"prompts-{requests}.jsonl", requests)
    job_id = stack.manage("jobs", "submit", str(prompts), "--chunk-size",
                          str(chunk_size)).stdout.strip()
    job = wait_for_job(stack.settings.database_url, job_id, timeout)
    counts = stored_counts(stack.settings.database_url, job_id)
    if job.status != "completed" or job.completed != requests or job.completed_at is None:
        raise RuntimeError(f"job {job_id} {job.status}: {job.completed}/{requests}; {counts}")
    return (job.completed_at - job.created_at).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    chunks = -(-args.requests // args.chunk_size)

    settings = Settings(env="test")
    with tempfile.TemporaryDirectory(prefix="blendq-bench-pipeline-") as folder, \
            running_stack(settings, "pipeline", Path(folder), start=False) as stack:
        # Each phase's processes start side by side (Stack.launch); the measured runs
        # begin once all of them are ready.
        stack.launch("dispatcher", "dispatcher", "--poll", "0.5", ready="dispatcher.started")
        bare = run_bare(stack, list(GENERATORS), chunks, args.timeout)
        print(f"bare canvas: {chunks} chunks in {bare:.2f}s", flush=True)

        for model in GENERATORS:
            stack.launch(f"gen-{model}", "worker", "generate", "--model", model,
                         ready=" ready.")
        stack.launch("rank", "worker", "rank", ready=" ready.")
        stack.launch("fuse", "worker", "fuse", ready=" ready.")
        stack.wait_ready()
        _full_job(stack, args.chunk_size, args.chunk_size, Path(folder), args.timeout)
        full = _full_job(stack, args.requests, args.chunk_size, Path(folder), args.timeout)
        print(f"full pipeline: {args.requests} requests in {full:.2f}s", flush=True)

    bare_rate, full_rate = args.requests / bare, args.requests / full
    print(f"\n{args.requests} requests, chunks of {args.chunk_size}, "
          f"{len(GENERATORS)} generators, one solo worker per queue")
    print(f"{'pipeline':<34} {'seconds':>8} {'requests/s':>11}")
    print(f"{'bare canvas, no-op tasks':<34} {bare:>8.2f} {bare_rate:>11.1f}")
    print(f"{'full, tiny models':<34} {full:>8.2f} {full_rate:>11.1f}")
    print(f"bare / full: {bare_rate / full_rate:.1f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["noop-worker"]:
        worker_args = argparse.ArgumentParser(prog="ops.bench.pipeline noop-worker")
        worker_args.add_argument("--queue", required=True)
        noop_worker(worker_args.parse_args(sys.argv[2:]).queue)
    else:
        main()
