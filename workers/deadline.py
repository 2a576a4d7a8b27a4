"""Model calls bounded by the task time limit.

Workers run tasks in a thread (the threads pool keeps the broker connection beating), and
Celery enforces time limits only in the prefork pool. A call that hangs (a backend that
never answers, a stuck device) is therefore run in a thread of its own and waited for
until the task's time is up; the task then records the reason on its requests and ends,
so its job ends too. The hung thread cannot be killed: it is left behind (daemon), its
late results are discarded, and the worker logs it so an admin can restart the process.
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
            log.error("task.deadline_exceeded", what=what, limit_seconds=self.seconds,
                      note="the call is left running in a daemon thread; restart the "
                           "worker if it holds a device")
            raise DeadlineExceeded(
                f"{what} stopped at the task time limit ({self.seconds:g} s, "
                "BLENDQ_TASK_TIME_LIMIT)")
        if "error" in box:
            raise box["error"]
        return box["value"]
