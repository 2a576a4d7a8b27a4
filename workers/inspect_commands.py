"""Remote inspect commands every blendq worker answers (``manage.py workers list``,
``queues resume``)."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import celeryd_init
from celery.worker.control import inspect_command

from orchestration.queue_admin import MODELS_COMMAND, QUEUES_COMMAND
from workers import model_store
from workers.devices import device_label

__all__ = ["MODELS_COMMAND", "QUEUES_COMMAND", "blendq_models", "blendq_queues"]

# The queues this process was started for (``--queues``), paused ones included: Celery
# keeps only the queues it consumes, and a replica started paused (``--exclude-queues``)
# must still be found by ``queues resume``.
started_for: list[str] = []


@celeryd_init.connect(weak=False)
def _record_queues(options: dict[str, Any] | None = None, **_: Any) -> None:
    queues = (options or {}).get("queues") or []
    if isinstance(queues, str):
        queues = queues.split(",")
    started_for[:] = [q.strip() for q in queues if q and q.strip()]


@inspect_command(name=MODELS_COMMAND)
def blendq_models(state: Any, **_: Any) -> dict[str, Any]:
    """The models this process has loaded: role, backend, path and revision of each.

    Reads the store's private cache on purpose: it is the one truth about what is loaded,
    and only its first four key fields are relied on.
    """
    loaded = [{"role": key[0], "backend": key[1], "path": key[2], "revision": key[3] or None}
              for key in list(model_store._loaded)]
    return {"ok": loaded, "device": device_label(), "pid": os.getpid()}


@inspect_command(name=QUEUES_COMMAND)
def blendq_queues(state: Any, **_: Any) -> dict[str, Any]:
    """The queues this worker was started for, whether it consumes them now or not."""
    return {"ok": list(started_for), "pid": os.getpid()}
