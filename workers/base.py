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
    # No jitter: Celery's is "full" (each wait drawn from 0 up to the backoff), so the
    # retries could all come within seconds; a 5 s PostgreSQL restart used four of five
    # in three. Plain backoff waits 2, 4, 8, 16, 32 s: a minute of outage survived, like
    # chord counting (orchestration/chord_backend.py). Workers take one task at a time,
    # so there is no herd to spread.
    retry_jitter = False

    @property
    def max_retries(self) -> int:
        return self.settings.max_task_retries

    # Rank and fuse end a chain: if one fails for good, nothing would finish its chunk.
    finishes_chunk_on_failure = False

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

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        """After the last retry: fail the chunk's open requests so the job still ends."""
        chunk_id = (kwargs or {}).get("chunk_id")
        if not self.finishes_chunk_on_failure or chunk_id is None:
            return
        from db.engine import session_scope
        from orchestration import lifecycle
        from workers.stage_io import fail_requests, open_requests

        reason = f"{self.name} failed: {type(exc).__name__}: {exc}"[:2000]
        with session_scope(self.settings.database_url) as session:
            fail_requests(session, open_requests(session, chunk_id), reason)
            lifecycle.finish_chunk(session, chunk_id)
        structlog.get_logger(__name__).error("task.failed_chunk_closed", chunk_id=chunk_id,
                                             error=reason)
