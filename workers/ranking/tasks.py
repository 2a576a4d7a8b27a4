"""The ranking stage: every ordered pair of a request's candidates through the PairRanker."""

from __future__ import annotations

from typing import Any

import structlog
from sqlmodel import Session, col, select

from db.engine import session_scope
from db.models import Candidate, Comparison, Job, Ranking, Request, utcnow
from db.writes import insert_ignore
from orchestration import lifecycle
from orchestration.celery_app import RANK_TASK, app
from orchestration.registry import RegistryError, get_registry
from orchestration.settings import Settings
from workers.base import BlendqTask
from workers.model_store import ModelLoadError, get_model, revision_of
from workers.ranking.aggregation import full_pairs, max_logits, rank_order
from workers.stage_io import candidates_by_request, fail_requests, open_requests, source_text

log = structlog.get_logger(__name__)


def rank_chunk(settings: Settings, job_id: str, chunk_id: int) -> dict[str, int]:
    url = settings.database_url
    with session_scope(url) as session:
        if not lifecycle.chunk_is_running(session, chunk_id):
            log.info("rank.skipped")
            return {"ranked": 0, "comparisons": 0}
        job = session.get(Job, job_id)
        assert job is not None and job.ranker is not None
        requests = open_requests(session, chunk_id)
        by_request = candidates_by_request(session, [r.id for r in requests if r.id])
        empty = [r for r in requests if not _usable(by_request[r.id or 0])]
        for request in empty:
            fail_requests(session, [request], _no_candidates_reason(by_request[request.id or 0]))
    rankable = [r for r in requests if r not in empty]
    if not rankable:
        return {"ranked": 0, "comparisons": 0}
    try:
        entry = get_registry(settings.registry_path).get(job.ranker, "ranker")
        ranker = get_model(entry, settings)
    except (RegistryError, ModelLoadError) as exc:
        return _give_up(url, rankable, f"ranking: {exc}")
    revision = revision_of(ranker, entry)
    with session_scope(url) as session:
        stored = _stored_logits(session, [r.id for r in rankable if r.id], revision)
    todo: list[tuple[int, int, int, str, str, str]] = []
    for request in rankable:
        cands = _usable(by_request[request.id or 0])
        for i, j in full_pairs(len(cands)):
            a, b = cands[i].id, cands[j].id
            if (a, b) not in stored:
                todo.append((request.id or 0, a or 0, b or 0, source_text(request),
                             cands[i].text, cands[j].text))
    try:
        logits = ranker.compare([(t[3], t[4], t[5]) for t in todo]) if todo else []
    except Exception as exc:
        log.exception("rank.failed")
        return _give_up(url, rankable, f"ranking failed: {type(exc).__name__}: {exc}")
    now = utcnow()
    rows = [{"request_id": t[0], "candidate_a_id": t[1], "candidate_b_id": t[2],
             "logit": float(logit), "ranker_revision": revision, "created_at": now}
            for t, logit in zip(todo, logits, strict=True)]
    with session_scope(url) as session:
        insert_ignore(session, Comparison, rows)
        # Score from what is stored, so a redelivery ranks from the same numbers.
        stored = _stored_logits(session, [r.id for r in rankable if r.id], revision)
        for request in rankable:
            _store_ranking(session, request, _usable(by_request[request.id or 0]), stored,
                           job, revision)
    log.info("rank.done", requests=len(rankable), comparisons=len(rows), revision=revision)
    return {"ranked": len(rankable), "comparisons": len(rows)}


def _give_up(url: str, requests: list[Request], reason: str) -> dict[str, int]:
    """Fail the requests so the chunk can still finish; fusion skips failed requests."""
    with session_scope(url) as session:
        fail_requests(session, [session.merge(r) for r in requests], reason)
    return {"ranked": 0, "comparisons": 0}


def _usable(candidates: list[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c.ok]


def _no_candidates_reason(candidates: list[Candidate]) -> str:
    if not candidates:
        return "no candidate was generated"
    return "no candidate was generated: " + "; ".join(
        f"{c.model}: {c.error}" for c in candidates)


def _stored_logits(session: Session, request_ids: list[int],
                   revision: str) -> dict[tuple[int, int], float]:
    rows = session.exec(
        select(Comparison.candidate_a_id, Comparison.candidate_b_id, Comparison.logit)
        .where(col(Comparison.request_id).in_(request_ids),
               Comparison.ranker_revision == revision)
    ).all()
    return {(a, b): logit for a, b, logit in rows}


def _store_ranking(session: Session, request: Request, cands: list[Candidate],
                   stored: dict[tuple[int, int], float], job: Job, revision: str) -> None:
    index = {c.id: i for i, c in enumerate(cands)}
    matrix = {(index[a], index[b]): v for (a, b), v in stored.items()
              if a in index and b in index}
    scores = max_logits(len(cands), matrix)
    order = rank_order(scores, [c.model for c in cands])
    entries: list[dict[str, Any]] = [
        {"candidate_id": cands[i].id, "model": cands[i].model, "score": scores[i],
         "rank": rank}
        for rank, i in enumerate(order, start=1)
    ]
    insert_ignore(session, Ranking, [{
        "request_id": request.id, "ranker": job.ranker, "ranker_revision": revision,
        "strategy": job.strategy, "aggregation": job.aggregation, "entries": entries,
        "created_at": utcnow(),
    }])
    row = session.get(Request, request.id)
    assert row is not None
    row.chosen_candidate_id = entries[0]["candidate_id"]
    session.add(row)


@app.task(name=RANK_TASK, base=BlendqTask, bind=True, finishes_chunk_on_failure=True)
def rank(self: BlendqTask, *, job_id: str, chunk_id: int) -> dict[str, int]:
    return rank_chunk(self.settings, job_id, chunk_id)
