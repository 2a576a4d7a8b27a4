"""The outbox relay process: publish what committed transactions queued.

LISTEN/NOTIFY only wakes it early; it also polls, so a lost notification (or a row whose
writer meant to publish it itself and could not) costs at most ``poll_seconds``. Every
``sweep_interval`` it also sweeps chunks whose lease lapsed (orchestration/sweeper.py) and
expires jobs past their window.
"""

from __future__ import annotations

import threading
import time

import psycopg
import structlog
from celery import Celery

from db.engine import libpq_url, session_scope
from orchestration import lifecycle, outbox, sweeper
from orchestration.settings import Settings

log = structlog.get_logger(__name__)


def relay_all(settings: Settings, app: Celery) -> int:
    """Publish every pending row now; returns how many were handled."""
    publish = outbox.celery_publisher(app)
    total = 0
    while True:
        with session_scope(settings.database_url) as session:
            handled = outbox.relay(session, publish, limit=settings.dispatcher_batch,
                                   start_timeout=settings.chunk_start_timeout)
        total += handled
        if handled < settings.dispatcher_batch:
            return total


def run(settings: Settings, app: Celery, stop: threading.Event,
        poll_seconds: float = 2.0) -> None:
    log.info("dispatcher.started")
    listener: psycopg.Connection | None = None
    depths = sweeper.broker_depths(settings.broker_url)
    next_sweep = time.monotonic() + settings.sweep_interval
    while not stop.is_set():
        try:
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + settings.sweep_interval
                sweeper.sweep(settings, app, depths)
                # Completion windows are hours long: checking them at each wake-up (each
                # notification) was a third of this process's work in a busy fleet.
                with session_scope(settings.database_url) as session:
                    for job_id in lifecycle.expire_due_jobs(session):
                        log.info("job.expired", job_id=job_id)
            if listener is None:
                listener = psycopg.connect(libpq_url(settings.database_url), autocommit=True)
                listener.execute(f"LISTEN {outbox.NOTIFY_CHANNEL}")
            handled = relay_all(settings, app)
            if handled:
                log.info("dispatcher.relayed", messages=handled)
            # Wait for a wake-up; the generator ends at the timeout with nothing received.
            wait = min(poll_seconds, max(next_sweep - time.monotonic(), 0.05))
            for _ in listener.notifies(timeout=wait, stop_after=1):
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
