"""The base task every stage uses: logging context, transient-error retries, settings."""

from __future__ import annotations

from typing import Any

import kombu.exceptions
import sqlalchemy.exc
import structlog
from celery import Task

from orchestration.celery_app import configured_settings
from orchestration.settings import Settings

# Errors that a retry can cure: the database or the broker was briefly away.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    kombu.exceptions.OperationalError,
    ConnectionError,
)


class BlendqTask(Task):
    abstract = True
    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 5

    @property
    def settings(self) -> Settings:
        return configured_settings()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.bind_contextvars(
            task_id=self.request.id, task=self.name, job_id=kwargs.get("job_id"),
            chunk_id=kwargs.get("chunk_id"),
        )
        try:
            return super().__call__(*args, **kwargs)
        finally:
            structlog.contextvars.clear_contextvars()
