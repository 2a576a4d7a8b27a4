"""Remote inspect commands every blendq worker answers (``manage.py workers list``)."""

from __future__ import annotations

import os
from typing import Any

from celery.worker.control import inspect_command

from workers import model_store
from workers.devices import device_label

MODELS_COMMAND = "blendq_models"


@inspect_command(name=MODELS_COMMAND)
def blendq_models(state: Any, **_: Any) -> dict[str, Any]:
    """The models this process has loaded: role, backend, path and revision of each.

    Reads the store's private cache on purpose: it is the one truth about what is loaded,
    and only its first four key fields are relied on.
    """
    loaded = [{"role": key[0], "backend": key[1], "path": key[2], "revision": key[3] or None}
              for key in list(model_store._loaded)]
    return {"ok": loaded, "device": device_label(), "pid": os.getpid()}
