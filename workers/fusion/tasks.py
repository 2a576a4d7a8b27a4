"""The fusion stage: the top-k candidates of each request merged into one answer."""

from __future__ import annotations

from typing import Any

import structlog
from sqlmodel import Session

from db.engine import session_scope
from db.models import Fusion, RequestStatus, utcnow
from db.writes import insert_ignore
from orchestration import lifecycle
from orchestration.celery_app import FUSE_TASK, app
from orchestration.registry import RegistryError, get_registry
from orchestration.settings import Settings
from workers import leases
from workers.base import BlendqTask
from workers.deadline import Deadline, DeadlineExceeded
from workers.model_store import ModelLoadError, get_model, revision_of
from workers.stage_io import (
    OpenRequest,
    StageJob,
    candidate_texts,
    fail_open,
    open_requests_of,
    stage_jobs,
    storable,
    update_requests,
)

log = structlog.get_logger(__name__)
TOP1 = "top-1"  # the fuser name recorded when a job has no fuser
DEFAULT_FUSION = {"num_beams": 4, "max_new_tokens": 128}


def fuse_chunk(settings: Settings, job_id: str, chunk_id: int) -> dict[str, int]:
    deadline = Deadline(settings.task_time_limit)
    url = settings.database_url
    with session_scope(url) as session:
        if not lifecycle.chunk_is_running(session, chunk_id):
            log.info("fuse.skipped")
            return {"fused": 0}
        job = stage_jobs(session, [job_id])[job_id]
        requests = open_requests_of(session, [chunk_id])
        top = _top_candidates(session, requests, job.top_k)
    ready = [r for r in requests if top.get(r.id)]
    ready_ids = {r.id for r in ready}
    try:
        with leases.holding(settings, [chunk_id]):
            fuser_name, revision, params, outputs = deadline.run(
                "fusion", lambda: _fuse(settings, job, ready, top))
        failure = None
    except DeadlineExceeded as exc:
        failure = str(exc)
    except (RegistryError, ModelLoadError) as exc:
        failure = f"fusion: {exc}"
    except Exception as exc:
        # A fuser that breaks fails these requests; the chunk still finishes.
        log.exception("fuse.failed")
        failure = f"fusion failed: {type(exc).__name__}: {exc}"
    with session_scope(url) as session:
        fail_open(session, [r.id for r in requests if r.id not in ready_ids],
                  "no ranking was stored for this request")
        if failure is not None:
            fail_open(session, sorted(ready_ids), failure)  # keeps the ranker's choice
        else:
            _store(session, ready, top, fuser_name, revision, params, outputs)
        lifecycle.finish_chunk(session, chunk_id)
    log.info("fuse.done", fused=0 if failure else len(ready), failed=len(requests) - len(ready))
    return {"fused": 0 if failure else len(ready)}


def _top_candidates(session: Session, requests: list[OpenRequest],
                    top_k: int) -> dict[int, list[tuple[int, str]]]:
    """(candidate id, text) of each request's best k, best first, from its ranking."""
    latest = {rid: ranked[:top_k] for rid, ranked in
              lifecycle.ranked_candidates(session, [r.id for r in requests]).items()}
    texts = candidate_texts(session, [cid for top in latest.values() for cid in top])
    return {rid: [(cid, texts[cid]) for cid in top] for rid, top in latest.items()}


def _fuse(settings: Settings, job: StageJob, requests: list[OpenRequest],
          top: dict[int, list[tuple[int, str]]]) -> tuple[str, str, dict[str, Any], list[str]]:
    if job.fuser is None:
        return TOP1, TOP1, {"top_k": 1}, [top[r.id][0][1] for r in requests]
    entry = get_registry(settings.registry_path).get(job.fuser, "fuser")
    fuser = get_model(entry, settings)
    params = {**DEFAULT_FUSION,
              **{k: v for k, v in entry.params.items() if k in DEFAULT_FUSION},
              "top_k": job.top_k}
    items = [(r.instruction, r.input, [text for _, text in top[r.id]]) for r in requests]
    outputs = fuser.fuse(items, num_beams=int(params["num_beams"]),
                         max_new_tokens=int(params["max_new_tokens"])) if items else []
    return entry.name, revision_of(fuser, entry), params, outputs


def _store(session: Session, requests: list[OpenRequest], top: dict[int, list[tuple[int, str]]],
           fuser: str, revision: str, params: dict[str, Any], outputs: list[str]) -> None:
    now = utcnow()
    insert_ignore(session, Fusion, [
        {"request_id": r.id, "fuser": fuser, "fuser_revision": revision,
         "candidate_ids": [cid for cid, _ in top[r.id]], "output": storable(output),
         "params": params, "created_at": now}
        for r, output in zip(requests, outputs, strict=True)
    ])
    # The request's choice comes with its outcome (ranking writes only its ranking rows).
    update_requests(session, [
        {"id": request.id, "chosen_candidate_id": top[request.id][0][0],
         "fused_output": storable(output), "status": RequestStatus.COMPLETED,
         "completed_at": now}
        for request, output in zip(requests, outputs, strict=True)])


@app.task(name=FUSE_TASK, base=BlendqTask, bind=True, finishes_chunk_on_failure=True)
def fuse(self: BlendqTask, *, job_id: str, chunk_id: int) -> dict[str, int]:
    return fuse_chunk(self.settings, job_id, chunk_id)
