"""The outbox relay process: publish what committed transactions queued.

LISTEN/NOTIFY only wakes it early; it also polls, so a lost notification costs at most
``poll_seconds``.
"""

from __future__ import annotations

import threading

import psycopg
import structlog
from celery import Celery

from db.engine import libpq_url, session_scope
from orchestration import lifecycle, outbox
from orchestration.settings import Settings

log = structlog.get_logger(__name__)


def relay_all(settings: Settings, app: Celery) -> int:
    """Publish every pending row now; returns how many were handled."""
    publish = outbox.celery_publisher(app)
    total = 0
    while True:
        with session_scope(settings.database_url) as session:
            handled = outbox.relay(session, publish, limit=settings.dispatcher_batch)
        total += handled
        if handled < settings.dispatcher_batch:
            return total


def run(settings: Settings, app: Celery, stop: threading.Event,
        poll_seconds: float = 2.0) -> None:
    log.info("dispatcher.started")
    listener: psycopg.Connection | None = None
    while not stop.is_set():
        try:
            if listener is None:
                listener = psycopg.connect(libpq_url(settings.database_url), autocommit=True)
                listener.execute(f"LISTEN {outbox.NOTIFY_CHANNEL}")
            with session_scope(settings.database_url) as session:
                for job_id in lifecycle.expire_due_jobs(session):
                    log.info("job.expired", job_id=job_id)
            handled = relay_all(settings, app)
            if handled:
                log.info("dispatcher.relayed", messages=handled)
            # Wait for a wake-up; the generator ends at the timeout with nothing received.
            for _ in listener.notifies(timeout=poll_seconds, stop_after=1):
                pass
        except Exception as exc:  # the database or broker is away: wait and try again
            log.warning("dispatcher.retrying", error=f"{type(exc).__name__}: {exc}")
            if listener is not None:
                listener.close()
                listener = None
            stop.wait(poll_seconds)
    if listener is not None:
        listener.close()
    log.info("dispatcher.stopped")
