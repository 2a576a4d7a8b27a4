"""What operating costs per task: no-op generate tasks through one worker as it ran before
(no task events, no metrics, console logs) against one with task events on, the task
metrics' signal handlers, a /metrics server and JSON logs, in one run, alternating so
drift on a shared machine hits both alike. Plain tasks rather than the canvas, so the
figure is the per-task overhead alone.

    python -m ops.bench.observability                 # 3 rounds of 1,000 tasks
    python -m ops.bench.observability --rounds 5 --tasks 3000

The table comes last: tasks per second of each, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery

from ops.bench import pipeline
from ops.bench.stack import GENERATORS, Stack, running_stack
from orchestration.celery_app import GENERATE_TASK, configure, gen_queue
from orchestration.settings import Settings

PLAIN = {"BLENDQ_TASK_EVENTS": "false", "BLENDQ_LOG_FORMAT": "console"}
OBSERVED = {"BLENDQ_TASK_EVENTS": "true", "BLENDQ_LOG_FORMAT": "json"}


def observed_worker(queue: str) -> None:
    """``pipeline.noop_worker`` with what ``manage.py worker`` adds for operating."""
    from ops import context, metrics

    metrics.serve_worker(context.settings())
    pipeline.noop_worker(queue)


QUEUE = gen_queue(GENERATORS[0])


def _worker(stack: Stack, observed: bool) -> None:
    import socket

    stack.env.update(OBSERVED if observed else PLAIN)
    stack.env.pop("BLENDQ_METRICS_PORT", None)
    if observed:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            stack.env["BLENDQ_METRICS_PORT"] = str(probe.getsockname()[1])
    stack.start("noop", ready=" ready.", command=[
        sys.executable, "-m", "ops.bench.observability",
        "observed-worker" if observed else "plain-worker", "--queue", QUEUE])


def _done(app: Celery) -> int:
    replies = app.control.inspect(destination=[f"{QUEUE}@bench"], timeout=2).stats() or {}
    return sum(int(stats.get("total", {}).get(GENERATE_TASK, 0)) for stats in replies.values())


def _run(app: Celery, tasks: int, timeout: float) -> float:
    """Publish ``tasks`` no-op generate tasks; seconds until the worker has run them all."""
    before = _done(app)
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(tasks):
            app.send_task(GENERATE_TASK, kwargs={"job_id": "bench", "chunk_id": -1 - i,
                                                 "model": GENERATORS[0]},
                          queue=QUEUE, routing_key=QUEUE, producer=producer)
    deadline = time.monotonic() + timeout
    while _done(app) < before + tasks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tasks} tasks not done after {timeout:.0f}s")
        time.sleep(0.1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    seconds: dict[bool, list[float]] = {False: [], True: []}

    with tempfile.TemporaryDirectory(prefix="blendq-bench-observability-") as folder, \
            running_stack(Settings(env="test"), "observability", Path(folder),
                          start=False) as stack:
        app = configure(stack.settings)
        for round_ in range(args.rounds):
            for observed in (False, True):
                _worker(stack, observed)
                _run(app, 20, args.timeout)  # warm-up
                took = _run(app, args.tasks, args.timeout)
                seconds[observed].append(took)
                print(f"round {round_ + 1}, {'observed' if observed else 'plain'}: "
                      f"{args.tasks} tasks in {took:.2f}s", flush=True)
                stack.stop("noop")

    plain, observed_s = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"\n{args.tasks} no-op generate tasks, one solo worker, published at once; median "
          f"of {args.rounds} rounds")
    print(f"{'worker':<52} {'seconds':>8} {'tasks/s':>9}")
    print(f"{'plain (no events, no metrics, console logs)':<52} {plain:>8.2f} "
          f"{args.tasks / plain:>9.1f}")
    print(f"{'observed (events, metrics, /metrics, JSON logs)':<52} {observed_s:>8.2f} "
          f"{args.tasks / observed_s:>9.1f}")
    print(f"observed / plain throughput: {plain / observed_s:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] in (["observed-worker"], ["plain-worker"]):
        worker_args = argparse.ArgumentParser(prog=f"ops.bench.observability {sys.argv[1]}")
        worker_args.add_argument("--queue", required=True, choices=[QUEUE])
        queue = worker_args.parse_args(sys.argv[2:]).queue
        if sys.argv[1] == "observed-worker":
            observed_worker(queue)
        else:
            pipeline.noop_worker(queue)
    else:
        main()
