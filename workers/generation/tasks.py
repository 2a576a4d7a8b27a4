"""The generation stage: one task per (chunk, model) on the queue gen.<model>, which
gathers further chunks of the same model waiting on that queue into one backend call."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import structlog
from sqlalchemy import bindparam, text

from db.engine import session_scope, skip_flush_wait
from db.models import (
    Candidate,
    ChunkStage,
    ChunkStatus,
    JobStatus,
    JSONType,
    Request,
    RequestStatus,
    utcnow,
)
from db.writes import insert_ignore
from orchestration import lifecycle
from orchestration.celery_app import GENERATE_TASK, app
from orchestration.chord_backend import OwnPart
from orchestration.registry import ModelEntry, RegistryError, get_registry
from orchestration.settings import Settings
from workers import claims, leases
from workers.base import TRANSIENT_ERRORS, BlendqTask
from workers.deadline import Deadline, DeadlineExceeded
from workers.model_store import ModelLoadError, get_model, revision_of
from workers.stage_io import storable

log = structlog.get_logger(__name__)
GENERATION_PARAMS = ("max_new_tokens", "temperature", "top_p", "seed")
DEFAULT_PARAMS: dict[str, Any] = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0,
                                  "seed": 0}


def conversation(request: Request | Prompted) -> list[dict[str, str]]:
    if request.messages:
        return [{"role": m["role"], "content": m["content"]} for m in request.messages]
    content = request.instruction + (f"\n\n{request.input}" if request.input else "")
    return [{"role": "user", "content": content}]


def effective_params(entry: ModelEntry, request: Request | Prompted) -> dict[str, Any]:
    """Registry defaults, overridden by what the request line asked for."""
    merged = {**DEFAULT_PARAMS,
              **{k: v for k, v in entry.params.items() if k in GENERATION_PARAMS}}
    merged.update({k: v for k, v in request.params.items() if k in GENERATION_PARAMS})
    return merged


GEN_WAITING = text(f"""
SELECT c.id FROM chunk c JOIN job j ON j.id = c.job_id
WHERE c.status IN ('{ChunkStatus.DISPATCHED}', '{ChunkStatus.RUNNING}')
  AND c.stage = '{ChunkStage.GENERATE}' AND c.id <> :own
  AND j.status = '{JobStatus.IN_PROGRESS}'
  AND j.models @> jsonb_build_array(CAST(:model AS text))
  AND EXISTS (SELECT 1 FROM (SELECT r.id FROM request r
                             WHERE r.chunk_id = c.id AND r.status = '{RequestStatus.PENDING}'
                             ORDER BY r.id LIMIT 1) AS first
              WHERE NOT EXISTS (SELECT 1 FROM candidate k
                                WHERE k.request_id = first.id AND k.model = :model))
ORDER BY c.id
LIMIT :look
""")
"""Chunks waiting on gen.<model> that still need ``model``: a chunk's candidates of a model
are written in one transaction (``_store``), so its first open request tells for all of
them. Two index probes a chunk, where asking of every request made the planner hash the
whole candidate table (10 ms a query on a 6,400-request job)."""



# Requests still open and without a candidate of :model. The two statements below are
# text: building them per call (and their cache keys) cost a generator as much as running
# them.
_OPEN_WITHOUT = f"""r.status = '{RequestStatus.PENDING}'
  AND NOT EXISTS (SELECT 1 FROM candidate k WHERE k.request_id = r.id AND k.model = :model)"""

_NEEDS_MODEL = text(f"""
SELECT EXISTS (SELECT 1 FROM request r WHERE r.chunk_id = :chunk_id AND {_OPEN_WITHOUT})
""")

_WORK = text(f"""
SELECT r.chunk_id, r.id, r.instruction, r.input, r.messages, r.params FROM request r
WHERE r.chunk_id IN :chunk_ids AND {_OPEN_WITHOUT}
ORDER BY r.id
""").bindparams(bindparam("chunk_ids", expanding=True)).columns(messages=JSONType,
                                                               params=JSONType)


def generate_chunk(settings: Settings, job_id: str, chunk_id: int, model: str,
                   deadline: Deadline | None = None,
                   own_part: OwnPart | None = None) -> dict[str, int]:
    """Generate ``model``'s candidates for the chunk and, in the same backend call, for
    up to ``gen_gather_chunks`` further chunks waiting on gen.<model> (workers/claims.py),
    within ``gen_token_budget``. Rows are written per chunk; the gathered chunks' own
    messages find them stored and only count their chord part (``own_part``: in the
    transaction that finds nothing left)."""
    deadline = deadline or Deadline(settings.task_time_limit)
    url = settings.database_url
    started = False
    with session_scope(url) as session:
        nothing_left = not session.execute(
            _NEEDS_MODEL, {"chunk_id": chunk_id, "model": model}).scalar()
        if nothing_left and own_part is not None:
            own_part.count(session)  # committed with a flush: the hand-off to ranking
        elif not nothing_left:
            # Starting needs no flush: the chord part counted at the end does one.
            skip_flush_wait(session)
            started = lifecycle.start_chunk(session, chunk_id, settings.chunk_lease_seconds)
    if nothing_left:
        # Another task gathered this chunk and stored its candidates (or the chunk has no
        # open request): only the chord part was left to count. Most messages end here
        # once generators gather.
        if own_part is not None:
            own_part.committed()
        log.info("generate.nothing_left", model=model)
        return {"generated": 0, "failed": 0, "chunks": 0}
    if not started:
        log.info("generate.skipped", model=model)
        return {"generated": 0, "failed": 0, "chunks": 0}
    with claims.claim_chunks(url, claims.namespace(f"gen:{model}"), chunk_id, GEN_WAITING,
                             {"model": model}, settings.gen_gather_chunks,
                             wait_own=False) as claim:
        own = [chunk_id] if chunk_id in claim.chunks else []
        others = [c for c in claim.chunks if c != chunk_id]
        outcome = _generate_chunks(settings, model, chunk_id, own, deadline, gathered=others)
        if chunk_id not in claim.chunks:
            # Another replica had this chunk: what it left (usually nothing) comes now.
            claim.wait_for(chunk_id)
            more = _generate_chunks(settings, model, chunk_id, [chunk_id], deadline)
            outcome = {k: outcome.get(k, 0) + v for k, v in more.items()}
        return outcome


def _generate_chunks(settings: Settings, model: str, own: int, chunk_ids: list[int],
                     deadline: Deadline, gathered: list[int] | None = None) -> dict[str, int]:
    """Generate for ``chunk_ids`` (started already) and the claimed ``gathered`` chunks,
    which start in the transaction that reads the work."""
    with leases.holding(settings, chunk_ids + (gathered or [])):
        work = _gather_work(settings, model, chunk_ids, gathered or [])
        if not work:
            return {"generated": 0, "failed": 0, "chunks": 0}
        rows = _generate(settings, model, [r for _, todo in work for r in todo], deadline)
        return _store(settings.database_url, own, model, work, rows)


class Prompted(NamedTuple):
    """What generation reads of a request: a plain row, not an ORM object (a gathered
    call reads a thousand of them)."""

    id: int
    instruction: str
    input: str
    messages: list[dict[str, str]] | None
    params: dict[str, Any]


def _gather_work(settings: Settings, model: str, chunk_ids: list[int],
                 gathered: list[int]) -> list[tuple[int, list[Prompted]]]:
    """Each chunk's requests still without a candidate of ``model`` (a redelivered task
    generates only what its first run did not store), in one query; the own chunk (first)
    always, further chunks while the token estimate stays within the budget. The claimed
    ``gathered`` chunks start in the same transaction; those that cannot are left out."""
    with session_scope(settings.database_url) as session:
        if gathered:
            skip_flush_wait(session)  # the chord part counted at the end flushes
            chunk_ids = chunk_ids + lifecycle.start_chunks(session, gathered,
                                                           settings.chunk_lease_seconds)
        rows = session.execute(_WORK, {"chunk_ids": chunk_ids, "model": model}).all()
    by_chunk: dict[int, list[Prompted]] = {}
    for chunk_id, *fields in rows:
        by_chunk.setdefault(chunk_id, []).append(Prompted(*fields))
    entry_params = _entry_params(settings, model)
    work: list[tuple[int, list[Prompted]]] = []
    spent = 0
    for chunk_id in chunk_ids:
        todo = by_chunk.get(chunk_id, [])
        cost = sum(_token_estimate(r, entry_params) for r in todo)
        if work and spent + cost > settings.gen_token_budget:
            break
        spent += cost
        if todo:
            work.append((chunk_id, todo))
    if len(work) > 1:
        log.info("generate.gathered", model=model, chunks=[c for c, _ in work],
                 requests=sum(len(t) for _, t in work), token_estimate=spent)
    return work


def _entry_params(settings: Settings, model: str) -> dict[str, Any]:
    try:
        return dict(get_registry(settings.registry_path).get(model, "generator").params)
    except RegistryError:
        return {}


def _token_estimate(request: Prompted, entry_params: dict[str, Any]) -> int:
    """Prompt tokens (about four characters each) plus the new tokens asked for."""
    chars = sum(len(m["content"]) for m in conversation(request))
    new = request.params.get("max_new_tokens", entry_params.get(
        "max_new_tokens", DEFAULT_PARAMS["max_new_tokens"]))
    return chars // 4 + int(new)


def _store(url: str, own: int, model: str, work: list[tuple[int, list[Prompted]]],
           rows: list[dict[str, Any]]) -> dict[str, int]:
    """One transaction per chunk, the own chunk's last: a gathered chunk that cannot be
    written is left to its own message; the own chunk's failure retries this task."""
    by_request = {row["request_id"]: row for row in rows}
    ordered = sorted(work, key=lambda item: item[0] == own)
    for chunk_id, todo in ordered:
        try:
            with session_scope(url, flush_wal=False) as session:
                insert_ignore(session, Candidate, [by_request[r.id] for r in todo])
        except TRANSIENT_ERRORS:
            if chunk_id == own:
                raise
            log.warning("generate.gathered_write_deferred", chunk=chunk_id, model=model)
    failed = sum(1 for r in rows if not r["ok"])
    log.info("generate.done", model=model, generated=len(rows) - failed, failed=failed,
             chunks=len(work))
    return {"generated": len(rows) - failed, "failed": failed, "chunks": len(work)}


def _generate(settings: Settings, model: str, requests: list[Prompted],
              deadline: Deadline) -> list[dict[str, Any]]:
    try:
        entry = get_registry(settings.registry_path).get(model, "generator")
        generator = get_model(entry, settings)
    except (RegistryError, ModelLoadError) as exc:
        log.warning("generate.model_unavailable", model=model, error=str(exc))
        return [_row(r, model, "", {}, error=str(exc)) for r in requests]
    revision = revision_of(generator, entry)
    params = [effective_params(entry, r) for r in requests]
    budget = int(entry.params.get("token_budget", settings.gen_token_budget))
    started = time.perf_counter()
    try:
        results = deadline.run("generation", lambda: _call_backend(
            generator, [conversation(r) for r in requests], params, budget))
    except DeadlineExceeded as exc:
        return [_row(r, model, revision, p, error=str(exc))
                for r, p in zip(requests, params, strict=True)]
    except Exception as exc:
        # A failing call fails its requests, not the task: the job goes on.
        log.exception("generate.batch_failed", model=model)
        reason = f"generation failed: {type(exc).__name__}: {exc}"
        return [_row(r, model, revision, p, error=reason)
                for r, p in zip(requests, params, strict=True)]
    latency = (time.perf_counter() - started) * 1000 / max(len(requests), 1)
    return [_row(request, model, revision, p, error=result.error, text=result.text,
                 prompt_tokens=result.prompt_tokens,
                 completion_tokens=result.completion_tokens, latency_ms=latency)
            for request, p, result in zip(requests, params, results, strict=True)]


def _call_backend(generator: Any, conversations: list[list[dict[str, str]]],
                  params: list[dict[str, Any]], budget: int) -> list[Any]:
    """All prompts in one backend call, each with its own decoding parameters."""
    from workers.generation.prompts import Prompt

    prompts = [Prompt(conversation=c, **p) for c, p in zip(conversations, params, strict=True)]
    return list(generator.generate_prompts(prompts, token_budget=budget))


def _row(request: Prompted, model: str, revision: str, params: dict[str, Any], *,
         error: str | None = None, text: str = "", prompt_tokens: int = 0,
         completion_tokens: int = 0, latency_ms: float = 0.0) -> dict[str, Any]:
    return {"request_id": request.id, "model": model, "model_revision": revision,
            "params": params, "ok": error is None, "text": storable(text) if error is None else "",
            "error": error, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "latency_ms": latency_ms,
            "created_at": utcnow()}


@app.task(name=GENERATE_TASK, base=BlendqTask, bind=True)
def generate(self: BlendqTask, *, job_id: str, chunk_id: int, model: str) -> dict[str, int]:
    return generate_chunk(self.settings, job_id, chunk_id, model, own_part=OwnPart(
        self.app, self.request, self.settings.chunk_start_timeout))
