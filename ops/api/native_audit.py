"""The audit part of the native API: why a request's answer won, and people's labels.
Auditor and admin keys only; the label's author is the key (its name and id)."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session

from db.models import ApiRole, Label, Request
from db.queries_api import remember, remembered, tenant_request
from db.queries_audit import (
    AuditError,
    Verdict,
    record_label,
    request_detail,
    resolve_candidate,
)
from ops.api.deps import DB, Principal, require
from ops.api.errors import ApiError, not_found
from ops.api.idempotency import idempotency_key, mark_replayed

log = structlog.get_logger(__name__)
router = APIRouter(tags=["native"])
AUDIT = require(ApiRole.AUDITOR)
SCOPE = "label"
NOTE_LIMIT = 10_000
# A candidate: its id, or the model that wrote it.
CandidateRef = int | str


class LabelCreate(BaseModel):
    """Exactly one of: ``better`` with ``worse``, ``tie`` (two candidates) or ``ranking``
    (every judged candidate, best first)."""

    model_config = ConfigDict(extra="forbid")

    better: CandidateRef | None = None
    worse: CandidateRef | None = None
    tie: list[CandidateRef] | None = Field(default=None, min_length=2, max_length=2)
    ranking: list[CandidateRef] | None = Field(default=None, min_length=2, max_length=64)
    note: str | None = Field(default=None, max_length=NOTE_LIMIT)

    @model_validator(mode="after")
    def _one_verdict(self) -> LabelCreate:
        given = [self.better is not None or self.worse is not None, self.tie is not None,
                 self.ranking is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of better/worse, tie or ranking")
        if given[0] and (self.better is None or self.worse is None):
            raise ValueError("better and worse go together")
        return self

    def verdict(self) -> tuple[str, list[CandidateRef]]:
        if self.ranking is not None:
            return "ranking", self.ranking
        if self.tie is not None:
            return "tie", self.tie
        assert self.better is not None and self.worse is not None
        return "a", [self.better, self.worse]


def label_object(label: Label) -> dict[str, Any]:
    return {"id": label.id, "object": "label", "request_id": label.request_id,
            "verdict": label.verdict, "candidate_a": label.candidate_a_id,
            "candidate_b": label.candidate_b_id, "ranking": label.ranking,
            "comparison_id": label.comparison_id, "author": label.author, "note": label.note,
            "created_at": label.created_at.isoformat()}


def _request(session: Session, principal: Principal, request_id: int) -> Request:
    found = tenant_request(session, principal.tenant, request_id)
    if found is None:
        raise not_found("request", str(request_id))
    return found


@router.get("/requests/{request_id}/audit",
            summary="Candidates, scores, the pairwise logit matrix, fusion and labels")
def audit_request(request_id: int, principal: Principal = Depends(AUDIT),
                  session: Session = DB) -> dict[str, Any]:
    return request_detail(session, _request(session, principal, request_id))


@router.post("/requests/{request_id}/labels", status_code=201,
             summary="Record a person's judgement on this request's candidates")
def create_label(request_id: int, body: LabelCreate, response: Response,
                 principal: Principal = Depends(AUDIT), session: Session = DB,
                 key: str | None = Depends(idempotency_key)) -> dict[str, Any]:
    if key is not None:
        earlier = remembered(session, principal.tenant, SCOPE, key)
        if earlier is not None:
            return _replayed(session, int(earlier), response)
    request = _request(session, principal, request_id)
    kind, refs = body.verdict()
    made: list[Label] = []
    winner = None
    try:
        ids = tuple(resolve_candidate(session, request, str(ref)).id or 0 for ref in refs)
        verdict = Verdict(kind, ids)

        def store() -> str:
            made.append(record_label(session, request, verdict, principal.author, body.note))
            return str(made[0].id)

        if key is None:
            store()
        else:
            winner = remember(session, principal.tenant, SCOPE, key, store)
    except AuditError as exc:
        raise ApiError(400, str(exc), code="invalid_label") from None
    if winner is not None:
        return _replayed(session, int(winner), response)
    log.info("api.label.recorded", label_id=made[0].id, request_id=request_id,
             tenant=principal.tenant, key_id=principal.key_id)
    return label_object(made[0])


def _replayed(session: Session, label_id: int, response: Response) -> dict[str, Any]:
    label = session.get(Label, label_id)
    assert label is not None  # labels are never deleted
    response.status_code = 200
    mark_replayed(response)
    return label_object(label)
