"""Reads that admins, auditors and clients need."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from sqlmodel import Session, col, select

from db.models import Candidate, Chunk, Fusion, Job, Ranking, Request

PAGE = 500


def job_summary(session: Session, job: Job) -> dict[str, Any]:
    chunks = session.exec(select(Chunk.status).where(Chunk.job_id == job.id)).all()
    by_status: dict[str, int] = {}
    for status in chunks:
        by_status[status] = by_status.get(status, 0) + 1
    stamps = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
              "expired_at", "expires_at", "cancelling_at", "cancelled_at")
    return {
        "id": job.id, "status": job.status, "tenant": job.tenant,
        "models": job.models, "ranker": job.ranker, "fuser": job.fuser,
        "strategy": job.strategy, "top_k": job.top_k,
        "request_counts": {"total": job.total, "completed": job.completed,
                           "failed": job.failed},
        "chunks": by_status, "errors": job.errors or [], "metadata": job.meta or {},
        **{name: _iso(getattr(job, name)) for name in stamps},
    }


def result_lines(session: Session, job_id: str) -> Iterator[dict[str, Any]]:
    """One line per request, in input order, paged so a large job streams."""
    for _request, line in result_rows(session, job_id):
        yield line


def result_rows(session: Session, job_id: str, statuses: Collection[str] | None = None,
                ) -> Iterator[tuple[Request, dict[str, Any]]]:
    """Each request (only those in ``statuses`` when given) with its result line."""
    last_id = 0
    while True:
        query = select(Request).where(Request.job_id == job_id, col(Request.id) > last_id)
        if statuses is not None:
            query = query.where(col(Request.status).in_(list(statuses)))
        requests = session.exec(query.order_by(col(Request.id)).limit(PAGE)).all()
        if not requests:
            return
        ids = [r.id for r in requests]
        cands = session.exec(select(Candidate).where(col(Candidate.request_id).in_(ids))
                             .order_by(col(Candidate.model))).all()
        rankings = session.exec(select(Ranking).where(col(Ranking.request_id).in_(ids))
                                .order_by(col(Ranking.id))).all()
        fusions = session.exec(select(Fusion).where(col(Fusion.request_id).in_(ids))
                               .order_by(col(Fusion.id))).all()
        by_request: dict[int, list[Candidate]] = {}
        for c in cands:
            by_request.setdefault(c.request_id, []).append(c)
        ranking_of = {r.request_id: r for r in rankings}
        fusion_of = {f.request_id: f for f in fusions}
        for request in requests:
            assert request.id is not None
            yield request, _line(request, by_request.get(request.id, []),
                                 ranking_of.get(request.id), fusion_of.get(request.id))
        last_id = requests[-1].id or last_id


def _line(request: Request, cands: list[Candidate], ranking: Ranking | None,
          fusion: Fusion | None) -> dict[str, Any]:
    text_of = {c.id: c for c in cands}
    chosen = text_of.get(request.chosen_candidate_id) if request.chosen_candidate_id else None
    return {
        "custom_id": request.custom_id,
        "request_id": request.id,  # what `audit show` and the audit API take
        "status": request.status,
        "fused_output": request.fused_output,
        "chosen": None if chosen is None else {
            "candidate_id": chosen.id, "model": chosen.model, "text": chosen.text},
        "ranking": None if ranking is None else {
            "ranker": ranking.ranker, "ranker_revision": ranking.ranker_revision,
            "strategy": ranking.strategy, "aggregation": ranking.aggregation,
            "entries": ranking.entries},
        "fusion": None if fusion is None else {
            "fuser": fusion.fuser, "fuser_revision": fusion.fuser_revision,
            "candidate_ids": fusion.candidate_ids, "params": fusion.params},
        "candidates": [
            {"candidate_id": c.id, "model": c.model, "model_revision": c.model_revision,
             "ok": c.ok, "text": c.text, "error": c.error, "prompt_tokens": c.prompt_tokens,
             "completion_tokens": c.completion_tokens, "latency_ms": round(c.latency_ms, 2)}
            for c in cands
        ],
        "error": request.error,
        # The caller's own metadata of the line, as given (null when it gave none).
        "metadata": request.meta,
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
