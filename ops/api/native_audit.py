"""The audit part of the native API: why a request's answer won, and people's labels.
Auditor and admin keys only; the label's author is the key (its name and id). Requests are
named by their opaque id (``req_…``, as result lines show it)."""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request, Response
from pydantic import AfterValidator, ConfigDict, Field, model_validator
from sqlmodel import Session

from db.models import ApiRole, Label
from db.models import Request as RequestRow
from db.queries_api import remember, remembered, tenant_request
from db.queries_audit import (
    AuditError,
    Verdict,
    record_label,
    request_detail,
    resolve_candidate,
)
from ops.api.deps import DB, Principal, require, settings_of
from ops.api.errors import ERROR_RESPONSES, ApiError, not_found
from ops.api.idempotency import REPLAY_RESPONSE, idempotency_key, mark_replayed
from ops.api.public_ids import RequestIds, request_ids
from ops.api.text_checks import CleanBody

log = structlog.get_logger(__name__)
router = APIRouter(tags=["native"], responses=ERROR_RESPONSES)
AUDIT = require(ApiRole.AUDITOR)
SCOPE = "label"
NOTE_LIMIT = 10_000
MAX_ID = 2**63 - 1  # BIGINT
MAX_MODEL_NAME = 128


def _candidate_ref(value: int | str) -> int | str:
    """A candidate id within BIGINT (as a number or ASCII digits), or a model name."""
    if isinstance(value, str) and value.isdigit():
        if not value.isascii():  # "²" is a digit to str.isdigit, and no number to int()
            raise ValueError("a candidate id is written in ASCII digits")
        value = int(value)
    if isinstance(value, int):
        if not 1 <= value <= MAX_ID:
            raise ValueError(f"a candidate id is between 1 and {MAX_ID}")
        return value
    if not value or len(value) > MAX_MODEL_NAME or not value.isprintable():
        raise ValueError(f"name a candidate by its id or by its model (1 to "
                         f"{MAX_MODEL_NAME} printable characters)")
    return value


# A candidate: its id, or the model that wrote it.
CandidateRef = Annotated[int | str, AfterValidator(_candidate_ref)]


class LabelCreate(CleanBody):
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


def label_object(label: Label, ids: RequestIds) -> dict[str, Any]:
    return {"id": label.id, "object": "label", "request_id": ids.encode(label.request_id),
            "verdict": label.verdict, "candidate_a": label.candidate_a_id,
            "candidate_b": label.candidate_b_id, "ranking": label.ranking,
            "comparison_id": label.comparison_id, "author": label.author, "note": label.note,
            "created_at": label.created_at.isoformat()}


def _ids(http: Request) -> RequestIds:
    return request_ids(settings_of(http).database_url)


def _request(session: Session, principal: Principal, ids: RequestIds,
             request_id: str) -> RequestRow:
    internal = ids.decode(request_id)
    found = None if internal is None else tenant_request(session, principal.tenant, internal)
    if found is None:
        raise not_found("request", request_id)
    return found


@router.get("/requests/{request_id}/audit",
            summary="Candidates, scores, the pairwise logit matrix, fusion and labels")
def audit_request(http: Request, request_id: str, principal: Principal = Depends(AUDIT),
                  session: Session = DB) -> dict[str, Any]:
    ids = _ids(http)
    detail = request_detail(session, _request(session, principal, ids, request_id))
    detail["request"]["id"] = request_id
    return detail


@router.post("/requests/{request_id}/labels", status_code=201, responses=REPLAY_RESPONSE,
             summary="Record a person's judgement on this request's candidates")
def create_label(http: Request, request_id: str, body: LabelCreate, response: Response,
                 principal: Principal = Depends(AUDIT), session: Session = DB,
                 key: str | None = Depends(idempotency_key)) -> dict[str, Any]:
    ids = _ids(http)
    if key is not None:
        earlier = remembered(session, principal.tenant, SCOPE, key)
        if earlier is not None:
            return _replayed(session, ids, int(earlier), response)
    request = _request(session, principal, ids, request_id)
    kind, refs = body.verdict()
    made: list[Label] = []
    winner = None
    try:
        candidates = tuple(resolve_candidate(session, request, str(ref)).id or 0
                           for ref in refs)
        verdict = Verdict(kind, candidates)

        def store() -> str:
            made.append(record_label(session, request, verdict, principal.author, body.note))
            return str(made[0].id)

        if key is None:
            store()
        else:
            winner = remember(session, principal.tenant, SCOPE, key, store)
    except AuditError as exc:
        # Its message names the request by its row id: name it as the caller did.
        message = str(exc).replace(f"request {request.id} ", f"request {request_id} ")
        raise ApiError(400, message, code="invalid_label") from None
    if winner is not None:
        return _replayed(session, ids, int(winner), response)
    log.info("api.label.recorded", label_id=made[0].id, request_id=request.id,
             tenant=principal.tenant, key_id=principal.key_id)
    return label_object(made[0], ids)


def _replayed(session: Session, ids: RequestIds, label_id: int,
              response: Response) -> dict[str, Any]:
    label = session.get(Label, label_id)
    assert label is not None  # labels are never deleted
    response.status_code = 200
    mark_replayed(response)
    return label_object(label, ids)
