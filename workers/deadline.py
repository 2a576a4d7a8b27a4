"""Model calls bounded by the task time limit.

Workers run tasks in a thread (the threads pool keeps the broker connection beating), and
Celery enforces time limits only in the prefork pool. A call that hangs (a backend that
never answers, a stuck device) is therefore run in a thread of its own and waited for
until the task's time is up; the task then records the reason on its requests and ends,
so its job ends too. The hung thread cannot be killed: it is left behind (daemon), its
late results are discarded, and the worker logs it. While it runs, the worker's liveness
probe (/healthz) fails naming it (``hung_calls``), so an orchestrator restarts the process
and the device it holds is freed; a call that ends after all clears the probe again.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger(__name__)

_left_behind: dict[threading.Thread, float] = {}  # thread -> when it was given up on
_left_lock = threading.Lock()


def hung_calls() -> list[str]:
    """Calls given up on at a time limit that are still running, e.g. "generation (for
    75 s)"; ended ones are forgotten."""
    now = time.monotonic()
    with _left_lock:
        for thread in [t for t in _left_behind if not t.is_alive()]:
            del _left_behind[thread]
        return [f"{thread.name.removeprefix('blendq-')} (for {now - since:.0f} s)"
                for thread, since in sorted(_left_behind.items(), key=lambda x: x[1])]


class DeadlineExceeded(RuntimeError):
    pass


class Deadline:
    """The moment a task's time limit is reached, counted from when the task started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    def run(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, or DeadlineExceeded naming ``what`` once the time is up."""
        box: dict[str, Any] = {}
        context = contextvars.copy_context()

        def target() -> None:
            try:
                box["value"] = context.run(fn)
            except BaseException as exc:  # handed to the caller's thread below
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"blendq-{what}", daemon=True)
        thread.start()
        thread.join(self.left())
        if thread.is_alive():
            with _left_lock:
                _left_behind[thread] = time.monotonic()
            log.error("task.deadline_exceeded", what=what, limit_seconds=self.seconds,
                      note="the call is left running in a daemon thread; the worker's "
                           "/healthz fails until it ends: restart the worker")
            raise DeadlineExceeded(
                f"{what} stopped at the task time limit ({self.seconds:g} s, "
                "BLENDQ_TASK_TIME_LIMIT)")
        if "error" in box:
            raise box["error"]
        return box["value"]
