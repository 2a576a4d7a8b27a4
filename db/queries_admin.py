"""Reads for admins: which jobs exist, and how far each stage of one job got."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from db.models import Candidate, Chunk, Comparison, Fusion, Job, Ranking, Request


def list_jobs(session: Session, *, status: str | None = None, tenant: str | None = None,
              since: datetime | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first; ``since`` keeps jobs created at or after it."""
    query = select(Job)
    if status:
        query = query.where(Job.status == status)
    if tenant:
        query = query.where(Job.tenant == tenant)
    if since is not None:
        query = query.where(col(Job.created_at) >= since)
    jobs = session.exec(query.order_by(col(Job.created_at).desc()).limit(limit)).all()
    return [{"id": j.id, "status": j.status, "tenant": j.tenant, "models": j.models,
             "total": j.total, "completed": j.completed, "failed": j.failed,
             "created_at": _iso(j.created_at)} for j in jobs]


def job_stages(session: Session, job: Job) -> dict[str, Any]:
    """Counts per stage, errors grouped by reason, and when each stage ran."""
    in_job = select(Request.id).where(Request.job_id == job.id)
    requests = dict(session.exec(select(Request.status, func.count())
                                 .where(Request.job_id == job.id)
                                 .group_by(Request.status)).all())
    chunks = dict(session.exec(select(Chunk.status, func.count())
                               .where(Chunk.job_id == job.id).group_by(Chunk.status)).all())
    per_model: dict[str, dict[str, Any]] = {}
    for model, ok, n, latency in session.exec(
            select(Candidate.model, Candidate.ok, func.count(), func.avg(Candidate.latency_ms))
            .where(col(Candidate.request_id).in_(in_job))
            .group_by(col(Candidate.model), col(Candidate.ok))).all():
        entry = per_model.setdefault(model, {"ok": 0, "failed": 0, "avg_latency_ms": None})
        entry["ok" if ok else "failed"] = n
        if ok:
            entry["avg_latency_ms"] = round(float(latency or 0.0), 2)

    def stage(model: Any) -> tuple[int, Any, Any]:
        n, first, last = session.exec(
            select(func.count(), func.min(model.created_at), func.max(model.created_at))
            .where(col(model.request_id).in_(in_job))).one()
        return n, first, last

    comparisons, rankings, fusions = stage(Comparison), stage(Ranking), stage(Fusion)
    cand_first, cand_last = session.exec(
        select(func.min(Candidate.created_at), func.max(Candidate.created_at))
        .where(col(Candidate.request_id).in_(in_job))).one()
    request_errors = session.exec(
        select(Request.error, func.count()).where(Request.job_id == job.id,
                                                  col(Request.error).is_not(None))
        .group_by(col(Request.error)).order_by(func.count().desc())).all()
    candidate_errors = session.exec(
        select(Candidate.model, Candidate.error, func.count())
        .where(col(Candidate.request_id).in_(in_job), col(Candidate.ok).is_(False))
        .group_by(col(Candidate.model), col(Candidate.error)).order_by(func.count().desc())).all()
    end = job.completed_at or job.failed_at or job.cancelled_at or job.expired_at
    return {
        "id": job.id, "status": job.status, "tenant": job.tenant, "models": job.models,
        "ranker": job.ranker, "fuser": job.fuser,
        "requests": {"total": sum(requests.values()), **requests},
        "chunks": chunks,
        "candidates": {"ok": sum(m["ok"] for m in per_model.values()),
                       "failed": sum(m["failed"] for m in per_model.values()),
                       "by_model": per_model},
        "comparisons": comparisons[0], "rankings": rankings[0], "fusions": fusions[0],
        "errors": {
            "requests": [{"reason": e, "count": n} for e, n in request_errors],
            "candidates": [{"model": m, "reason": e, "count": n}
                           for m, e, n in candidate_errors],
            "validation": job.errors or [],
        },
        "timings": {
            "created_at": _iso(job.created_at), "in_progress_at": _iso(job.in_progress_at),
            "ended_at": _iso(end),
            "duration_s": round((end - job.created_at).total_seconds(), 3) if end else None,
            "generation": [_iso(cand_first), _iso(cand_last)],
            "ranking": [_iso(comparisons[1]), _iso(rankings[2])],
            "fusion": [_iso(fusions[1]), _iso(fusions[2])],
        },
        "retries": (job.meta or {}).get("retries", []),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
