"""Reads behind the auditor pages: one page of a tenant's jobs, one page of a job's requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from db.models import Job, Label, Ranking, Request
from db.queries_api import tenant_job, tenant_request
from db.queries_audit import margin

__all__ = ["Page", "job_requests", "tenant_job", "tenant_jobs", "tenant_request"]


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    number: int  # 1-based
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


def tenant_jobs(session: Session, tenant: str, number: int, size: int) -> Page:
    """The tenant's jobs, newest first."""
    total = session.exec(select(func.count()).select_from(Job)
                         .where(Job.tenant == tenant)).one()
    rows = list(session.exec(
        select(Job).where(Job.tenant == tenant)
        .order_by(col(Job.created_at).desc(), col(Job.id).desc())
        .offset((number - 1) * size).limit(size)).all())
    return Page(rows, number, size, int(total))


def job_requests(session: Session, job_id: str, number: int, size: int) -> Page:
    """A page of the job's requests in input order, each with its winner, the margin
    between the ranker's top two and how many labels people gave it."""
    total = session.exec(select(func.count()).select_from(Request)
                         .where(Request.job_id == job_id)).one()
    requests = list(session.exec(
        select(Request).where(Request.job_id == job_id).order_by(col(Request.id))
        .offset((number - 1) * size).limit(size)).all())
    ids = [r.id for r in requests]
    rankings: dict[int, Ranking] = {}
    for ranking in session.exec(select(Ranking).where(col(Ranking.request_id).in_(ids))
                                .order_by(col(Ranking.id))).all():
        rankings[ranking.request_id] = ranking  # the latest wins, as in the audit queries
    labels = dict(session.exec(
        select(Label.request_id, func.count()).where(col(Label.request_id).in_(ids))
        .group_by(col(Label.request_id))).all())
    rows = []
    for request in requests:
        latest = rankings.get(request.id or 0)
        entries = sorted(latest.entries, key=lambda e: e["rank"]) if latest else []
        rows.append({"request": request,
                     "winner": entries[0]["model"] if entries else None,
                     "runner_up": entries[1]["model"] if len(entries) > 1 else None,
                     "margin": margin(entries),
                     "labels": int(labels.get(request.id or 0, 0))})
    return Page(rows, number, size, int(total))
