"""A Celery result backend that counts chord parts in Postgres.

Why: the database backend completes chords by polling (``chord_unlock``) and counting
backends double-count a header task that is delivered twice. Here each finished header
task inserts one row keyed by (group id, task id), so a redelivery counts once; the part
that completes the count writes the chord body to the outbox under a unique key, so the
body is queued exactly once, in the same transaction, and a crash right after cannot lose
it. The body is then published at once, or by the dispatcher if that fails.

Task results are not stored: every stage writes its output to its own tables.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import states
from celery.backends.base import BaseBackend
from sqlalchemy import func
from sqlmodel import Session, select

from db.engine import session_scope
from db.models import ChordPart, utcnow
from db.writes import insert_ignore
from orchestration import outbox
from orchestration.canvas import to_payload

log = structlog.get_logger(__name__)


def record_part(session: Session, group_id: str, task_id: str, state: str, size: int,
                body: dict[str, Any], job_id: str | None = None) -> int | None:
    """Count one header task; returns the outbox id when this part completed the chord."""
    insert_ignore(session, ChordPart, [{"group_id": group_id, "task_id": task_id,
                                        "state": state, "created_at": utcnow()}])
    done = session.exec(
        select(func.count()).select_from(ChordPart).where(ChordPart.group_id == group_id)
    ).one()
    if done < size:
        return None
    return outbox.add(session, outbox.KIND_SIGNATURE, body, job_id=job_id,
                      dedup_key=f"chord:{group_id}")


class PostgresChordBackend(BaseBackend):
    supports_native_join = False

    def __init__(self, app: Any, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)

    def _settings(self) -> Any:
        return self.app.conf.blendq_settings

    # -- results: not kept -------------------------------------------------------------
    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        return result

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        return {"status": states.PENDING, "result": None}

    def _forget(self, task_id: str) -> None:
        return None

    def cleanup(self) -> None:
        return None

    # -- chords ------------------------------------------------------------------------
    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        # Nothing to set up: parts are counted as they return, against chord_size.
        return None

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        group_id = request.group
        body = request.chord
        if not group_id or not body:
            return
        size = body.get("chord_size") if isinstance(body, dict) else None
        if size is None:
            # Celery sets chord_size on the body it sends with every header task.
            log.error("chord.size_missing", group_id=group_id, task_id=request.id)
            return
        job_id = (request.kwargs or {}).get("job_id")
        settings = self._settings()
        with session_scope(settings.database_url) as session:
            outbox_id = record_part(session, group_id, request.id, state, int(size),
                                    to_payload(self.app.signature(body)), job_id=job_id)
        if outbox_id is None:
            return
        log.info("chord.complete", group_id=group_id, outbox_id=outbox_id)
        try:
            with session_scope(settings.database_url) as session:
                outbox.relay(session, outbox.celery_publisher(self.app), only_id=outbox_id)
        except Exception:
            # Queued already; the dispatcher publishes it.
            log.warning("chord.body_publish_deferred", group_id=group_id, outbox_id=outbox_id)
