"""Task metrics, recorded where the work happens through Celery's task signals.

Connected once per worker process by :func:`install` (``manage.py worker`` calls it), so
the tasks themselves carry no metrics code. Labels are bounded: ``stage`` is one of the
three stages (anything else is ``other``), ``model`` is the generator a generate task ran
(from its ``model`` kwarg; empty for rank and fuse, whose ranker or fuser is the job's),
``reason`` is a class of error, never its message. Per-ranker comparisons and tokens per
model are counted from the stored rows (``ops/metrics.py``), exact across the fleet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import kombu.exceptions
import sqlalchemy.exc
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import signals
from prometheus_client import Counter, Histogram

STAGES = ("generate", "rank", "fuse")
TASK_PREFIX = "blendq."

TASK_SECONDS = Histogram(
    "blendq_task_duration_seconds", "Wall time of one stage task, retries counted apart.",
    ["stage", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800))
TASKS = Counter("blendq_tasks", "Stage tasks that ended, by outcome "
                "(succeeded, failed, retried).", ["stage", "model", "outcome"])
TASK_FAILURES = Counter("blendq_task_failures", "Stage tasks that failed or will retry, by "
                        "class of error.", ["stage", "model", "reason"])
STAGE_REQUESTS = Counter(
    "blendq_stage_requests", "Requests a stage task finished, by outcome (completed, failed) "
    "and class of error.", ["stage", "model", "outcome", "reason"])
PADDING_RATIO = Histogram(
    "blendq_batch_padding_ratio", "Share of the tokens of one model batch that are padding.",
    ["stage", "model"], buckets=(0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0))
BATCH_TOKENS = Counter("blendq_batch_tokens", "Tokens in model batches, padding included "
                       "(kind=padded) and not (kind=real).", ["stage", "model", "kind"])

# What each stage's return value counts as finished requests: (key, outcome, reason).
_RESULT_COUNTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "generate": (("generated", "completed", ""), ("failed", "failed", "model_error")),
    "rank": (("ranked", "completed", ""),),
    "fuse": (("fused", "completed", ""),),
}

_started: dict[str, float] = {}
_lock = threading.Lock()
_installed: list[bool] = []


def labels_of(task_name: str | None, kwargs: dict[str, Any] | None) -> tuple[str, str] | None:
    """(stage, model) of a blendq task, or None for Celery's own and other tasks."""
    if not task_name or not task_name.startswith(TASK_PREFIX):
        return None
    stage = task_name[len(TASK_PREFIX):]
    if stage not in STAGES:
        return None
    model = str((kwargs or {}).get("model") or "") if stage == "generate" else ""
    return stage, model


def reason_class(exc: BaseException | None) -> str:
    """A bounded class for an error: what an operator would act on differently."""
    if isinstance(exc, TimeLimitExceeded | SoftTimeLimitExceeded):
        return "time_limit"
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return "database"
    if isinstance(exc, kombu.exceptions.OperationalError | ConnectionError):
        return "broker"
    if isinstance(exc, MemoryError):
        return "memory"
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda's, without importing torch
        return "memory"
    return "error"


def observe_batches(stage: str, model: str, lengths: Sequence[int],
                    batches: Sequence[Sequence[int]]) -> None:
    """Record the padding of a set of batches (indices into ``lengths``), each padded to its
    longest row. A hook for model code that packs its own batches."""
    for batch in batches:
        if not batch:
            continue
        real = sum(lengths[i] for i in batch)
        padded = max(lengths[i] for i in batch) * len(batch)
        observe_padding(stage, model, real, padded)


def observe_padding(stage: str, model: str, real_tokens: int, padded_tokens: int) -> None:
    """One batch: ``padded_tokens`` processed of which ``real_tokens`` are not padding."""
    if padded_tokens <= 0:
        return
    PADDING_RATIO.labels(stage, model).observe(1 - real_tokens / padded_tokens)
    BATCH_TOKENS.labels(stage, model, "real").inc(real_tokens)
    BATCH_TOKENS.labels(stage, model, "padded").inc(padded_tokens)


def _prerun(task_id: str | None = None, task: Any = None, kwargs: Any = None,
            **_: Any) -> None:
    if task_id and labels_of(getattr(task, "name", None), kwargs):
        with _lock:
            _started[task_id] = time.perf_counter()


def _postrun(task_id: str | None = None, task: Any = None, kwargs: Any = None,
             retval: Any = None, state: str | None = None, **_: Any) -> None:
    labels = labels_of(getattr(task, "name", None), kwargs)
    with _lock:
        started = _started.pop(task_id or "", None)
    if labels is None:
        return
    stage, model = labels
    if started is not None:
        TASK_SECONDS.labels(stage, model).observe(time.perf_counter() - started)
    outcome = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}.get(
        state or "", "other")
    TASKS.labels(stage, model, outcome).inc()
    if state == "SUCCESS" and isinstance(retval, dict):
        for key, request_outcome, reason in _RESULT_COUNTS[stage]:
            count = retval.get(key)
            if isinstance(count, int) and count > 0:
                STAGE_REQUESTS.labels(stage, model, request_outcome, reason).inc(count)


def _failure(sender: Any = None, exception: BaseException | None = None,
             kwargs: Any = None, **_: Any) -> None:
    labels = labels_of(getattr(sender, "name", None), kwargs)
    if labels is not None:
        TASK_FAILURES.labels(*labels, reason_class(exception)).inc()


def _retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    labels = labels_of(getattr(sender, "name", None), getattr(request, "kwargs", None))
    if labels is not None:
        TASK_FAILURES.labels(*labels, reason_class(
            reason if isinstance(reason, BaseException) else None)).inc()


def install() -> None:
    """Connect the signal handlers (once per process)."""
    if _installed:
        return
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
    signals.task_failure.connect(_failure, weak=False)
    signals.task_retry.connect(_retry, weak=False)
    _installed.append(True)
