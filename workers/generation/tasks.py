"""The generation stage: one task per (chunk, model) on the queue gen.<model>."""

from __future__ import annotations

import time
from typing import Any

import structlog
from sqlmodel import col, select

from db.engine import session_scope
from db.models import Candidate, Request, utcnow
from db.writes import insert_ignore
from orchestration import lifecycle
from orchestration.celery_app import GENERATE_TASK, app
from orchestration.registry import ModelEntry, RegistryError, get_registry
from orchestration.settings import Settings
from workers.base import BlendqTask
from workers.model_store import ModelLoadError, get_model, revision_of
from workers.stage_io import open_requests, storable

log = structlog.get_logger(__name__)
GENERATION_PARAMS = ("max_new_tokens", "temperature", "top_p", "seed")
DEFAULT_PARAMS: dict[str, Any] = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0,
                                  "seed": 0}


def conversation(request: Request) -> list[dict[str, str]]:
    if request.messages:
        return [{"role": m["role"], "content": m["content"]} for m in request.messages]
    content = request.instruction + (f"\n\n{request.input}" if request.input else "")
    return [{"role": "user", "content": content}]


def effective_params(entry: ModelEntry, request: Request) -> dict[str, Any]:
    """Registry defaults, overridden by what the request line asked for."""
    merged = {**DEFAULT_PARAMS,
              **{k: v for k, v in entry.params.items() if k in GENERATION_PARAMS}}
    merged.update({k: v for k, v in request.params.items() if k in GENERATION_PARAMS})
    return merged


def generate_chunk(settings: Settings, job_id: str, chunk_id: int, model: str) -> dict[str, int]:
    url = settings.database_url
    with session_scope(url) as session:
        if not lifecycle.start_chunk(session, chunk_id):
            log.info("generate.skipped", model=model)
            return {"generated": 0, "failed": 0}
        waiting = open_requests(session, chunk_id)
        # A redelivered task generates only what its first run did not store.
        done = set(session.exec(
            select(Candidate.request_id).where(
                Candidate.model == model,
                col(Candidate.request_id).in_([r.id for r in waiting]))
        ).all())
        todo = [r for r in waiting if r.id not in done]
    if not todo:
        return {"generated": 0, "failed": 0}
    rows = _generate(settings, model, todo)
    with session_scope(url) as session:
        insert_ignore(session, Candidate, rows)
    failed = sum(1 for r in rows if not r["ok"])
    log.info("generate.done", model=model, generated=len(rows) - failed, failed=failed)
    return {"generated": len(rows) - failed, "failed": failed}


def _generate(settings: Settings, model: str, requests: list[Request]) -> list[dict[str, Any]]:
    try:
        entry = get_registry(settings.registry_path).get(model, "generator")
        generator = get_model(entry, settings)
    except (RegistryError, ModelLoadError) as exc:
        log.warning("generate.model_unavailable", model=model, error=str(exc))
        return [_row(r, model, "", {}, error=str(exc)) for r in requests]
    revision = revision_of(generator, entry)
    groups: dict[tuple[Any, ...], list[Request]] = {}
    for request in requests:
        params = effective_params(entry, request)
        groups.setdefault(tuple(sorted(params.items())), []).append(request)
    rows: list[dict[str, Any]] = []
    for key, members in groups.items():
        params = dict(key)
        started = time.perf_counter()
        try:
            results = generator.generate([conversation(r) for r in members],
                                         batch_size=int(entry.params.get("batch_size", 8)),
                                         **params)
        except Exception as exc:
            # A failing batch fails its requests, not the chunk: the job goes on.
            log.exception("generate.batch_failed", model=model)
            reason = f"generation failed: {type(exc).__name__}: {exc}"
            rows.extend(_row(r, model, revision, params, error=reason) for r in members)
            continue
        latency = (time.perf_counter() - started) * 1000 / max(len(members), 1)
        for request, result in zip(members, results, strict=True):
            rows.append(_row(request, model, revision, params, error=result.error,
                             text=result.text, prompt_tokens=result.prompt_tokens,
                             completion_tokens=result.completion_tokens, latency_ms=latency))
    return rows


def _row(request: Request, model: str, revision: str, params: dict[str, Any], *,
         error: str | None = None, text: str = "", prompt_tokens: int = 0,
         completion_tokens: int = 0, latency_ms: float = 0.0) -> dict[str, Any]:
    return {"request_id": request.id, "model": model, "model_revision": revision,
            "params": params, "ok": error is None, "text": storable(text) if error is None else "",
            "error": error, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "latency_ms": latency_ms,
            "created_at": utcnow()}


@app.task(name=GENERATE_TASK, base=BlendqTask, bind=True)
def generate(self: BlendqTask, *, job_id: str, chunk_id: int, model: str) -> dict[str, int]:
    return generate_chunk(self.settings, job_id, chunk_id, model)
