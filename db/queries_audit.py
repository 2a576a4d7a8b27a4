"""What auditors read and write: why a candidate won, their labels, and training exports.

Export formats (one JSON object per line, UTF-8):

``mixinstruct`` — one line per request that has at least one usable candidate, in the
layout of LLM-Blender's MixInstruct so ``ranker train`` can read it like the original::

    {"id": "<custom_id>", "job_id": "...", "request_id": 17,
     "instruction": "...", "input": "...", "messages": [...] | null,
     "output": "<fused answer or null>",
     "candidates": [{"model": "tiny-a", "candidate_id": 51, "text": "...",
                     "scores": {"ranker": 0.42, "ranker_rank": 1, "human": 2.0}}],
     "labels": [{"verdict": "a", "candidate_a": 51, "candidate_b": 52, "ranking": null,
                 "author": "ana", "note": "...", "created_at": "..."}]}

  ``instruction`` and ``input`` hold the whole prompt the generators answered: for an
  OpenAI Batch line, its conversation rendered as ``db/prompts.py`` documents (the last
  user turn, then the system message and every other turn), with the raw ``messages``
  beside; for a native line, its own two fields (``messages`` null). ``ranker train`` and
  ``ranker eval`` read ``instruction\ninput``, which is what the ranking stage gives
  the ranker.

  A label's ``verdict`` is ``a`` (candidate_a is better), ``tie``, or ``ranking`` (then
  ``ranking`` lists candidate ids best first).

  ``scores.ranker`` is the stored ranking's aggregated score (higher is better) and
  ``ranker_rank`` its rank (1 is best); both are absent for a request never ranked.
  ``scores.human`` is present only on requests with labels: each pair a label implies
  (a pair label, or every pair of a ranking label) gives the better candidate +1 and the
  worse -1 (a tie gives 0), summed. A trainer that makes pairs from score differences
  therefore learns the human order where there is one and the ranker's elsewhere.

``pairs`` — one line per unordered pair that the ranker compared or a person labelled::

    {"job_id": "...", "request_id": 17, "custom_id": "...", "source": "<instruction\\ninput>",
     "candidate_a_id": 51, "model_a": "tiny-a", "candidate_a": "<text>",
     "candidate_b_id": 52, "model_b": "tiny-b", "candidate_b": "<text>",
     "origin": "label" | "ranker", "label": 1.0 | 0.0 | 0.5 | null,
     "score": <float or null>, "logit_ab": ..., "logit_ba": ...,
     "author": ..., "note": ...}

  ``label`` is 1.0 when A is better, 0.0 when B is, 0.5 for a tie, null for a pair only
  the ranker saw. ``score`` is the ranker's preference for A: the mean of logit(A over B)
  and -logit(B over A) where both were stored, else whichever was. A labelled pair gets
  one line per label (so two people who disagree both count); a compared pair without a
  label gets one ``ranker`` line. ``source`` is what the ranker itself read:
  ``instruction\ninput`` of the rendering above.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from sqlmodel import Session, col, select

from db.models import Candidate, Comparison, Fusion, Job, Label, Ranking, Request, utcnow
from db.prompts import prompt_fields

PAGE = 200
VERDICTS = ("a", "b", "tie", "ranking")


class AuditError(ValueError):
    """The auditor asked for something that does not exist or makes no sense."""


# -- finding a request ----------------------------------------------------------------------
def find_request(session: Session, request_id: int | None = None, job_id: str | None = None,
                 custom_id: str | None = None) -> Request:
    if request_id is not None:
        request = session.get(Request, request_id)
    elif job_id is not None and custom_id is not None:
        request = session.exec(select(Request).where(
            Request.job_id == job_id, Request.custom_id == custom_id)).one_or_none()
    else:
        raise AuditError("name a request id, or both a job and a custom_id")
    if request is None:
        what = request_id if request_id is not None else f"{job_id}/{custom_id}"
        raise AuditError(f"no request {what}")
    return request


def prompt_of(request: Request) -> tuple[str, str]:
    """``(instruction, input)``: the whole prompt, a conversation rendered (db/prompts.py)."""
    return prompt_fields(request.instruction, request.input, request.messages)


def source_of(request: Request) -> str:
    # The same text the ranking stage gives the ranker (workers.stage_io.source_text, which
    # reads the rendering stored at validation); repeated because db may not import workers.
    instruction, given = prompt_of(request)
    return f"{instruction}\n{given}" if given else instruction


def latest_ranking(session: Session, request_id: int) -> Ranking | None:
    return session.exec(select(Ranking).where(Ranking.request_id == request_id)
                        .order_by(col(Ranking.id).desc()).limit(1)).first()


# -- audit show -----------------------------------------------------------------------------
def request_detail(session: Session, request: Request) -> dict[str, Any]:
    """Everything that decided this request's answer, ready for a terminal or JSON."""
    assert request.id is not None
    job = session.get(Job, request.job_id)
    cands = list(session.exec(select(Candidate).where(Candidate.request_id == request.id)
                              .order_by(col(Candidate.model))).all())
    ranking = latest_ranking(session, request.id)
    placed = {e["candidate_id"]: e for e in (ranking.entries if ranking else [])}
    comparisons = session.exec(select(Comparison).where(Comparison.request_id == request.id)
                               .order_by(col(Comparison.id))).all()
    revision = ranking.ranker_revision if ranking else (
        comparisons[-1].ranker_revision if comparisons else None)
    fusion = session.exec(select(Fusion).where(Fusion.request_id == request.id)
                          .order_by(col(Fusion.id).desc()).limit(1)).first()
    labels = session.exec(select(Label).where(Label.request_id == request.id)
                          .order_by(col(Label.id))).all()
    by_id = {c.id: c for c in cands}
    # Rows and columns: the usable candidates, in the order the ranking stage read them.
    order = [c for c in cands if c.ok]
    logits = {(c.candidate_a_id, c.candidate_b_id): c.logit for c in comparisons
              if c.ranker_revision == revision}
    matrix = [[logits.get((a.id or 0, b.id or 0)) for b in order] for a in order]
    used = [c for c in comparisons if c.ranker_revision == revision]
    instruction, given = prompt_of(request)
    return {
        "request": {
            "id": request.id, "job_id": request.job_id, "custom_id": request.custom_id,
            "instruction": instruction, "input": given, "messages": request.messages,
            "status": request.status, "error": request.error,
            "chosen_candidate_id": request.chosen_candidate_id,
        },
        "candidates": [
            {"candidate_id": c.id, "model": c.model, "model_revision": c.model_revision,
             "ok": c.ok, "error": c.error, "text": c.text,
             "score": placed.get(c.id, {}).get("score"),
             "rank": placed.get(c.id, {}).get("rank"),
             "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
             "latency_ms": round(c.latency_ms, 2), "created_at": _iso(c.created_at)}
            for c in cands
        ],
        "ranking": None if ranking is None else {
            "ranker": ranking.ranker, "ranker_revision": ranking.ranker_revision,
            "strategy": ranking.strategy, "aggregation": ranking.aggregation,
            "margin": margin(ranking.entries)},
        "matrix": {"ranker_revision": revision,
                   "candidate_ids": [c.id for c in order],
                   "models": [c.model for c in order],
                   "logits": matrix},
        "fusion": None if fusion is None else {
            "fuser": fusion.fuser, "fuser_revision": fusion.fuser_revision,
            "inputs": [{"candidate_id": cid,
                        "model": by_id[cid].model if cid in by_id else None}
                       for cid in fusion.candidate_ids],
            "params": fusion.params, "output": fusion.output},
        "fused_output": request.fused_output,
        "labels": [_label_dict(label) for label in labels],
        "timings": {
            "job_created_at": _iso(job.created_at) if job else None,
            "candidates_first_at": _iso(min((c.created_at for c in cands), default=None)),
            "candidates_last_at": _iso(max((c.created_at for c in cands), default=None)),
            "comparisons_at": _iso(max((c.created_at for c in used), default=None)),
            "ranked_at": _iso(ranking.created_at) if ranking else None,
            "fused_at": _iso(fusion.created_at) if fusion else None,
            "completed_at": _iso(request.completed_at),
            "generation_latency_ms": {c.model: round(c.latency_ms, 2) for c in cands},
        },
    }


def margin(entries: list[dict[str, Any]]) -> float | None:
    """Score of the ranker's first minus its second; None with fewer than two."""
    if len(entries) < 2:
        return None
    ordered = sorted(entries, key=lambda e: e["rank"])
    return float(ordered[0]["score"]) - float(ordered[1]["score"])


# -- audit label ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """A pair verdict (better/worse or tie) or a full ranking, as candidate ids."""

    kind: str  # "a" (first is better), "tie" or "ranking"
    candidates: tuple[int, ...]


def resolve_candidate(session: Session, request: Request, ref: str) -> Candidate:
    """A candidate of ``request`` named by its id or by its model."""
    query = select(Candidate).where(Candidate.request_id == request.id)
    query = query.where(Candidate.id == int(ref)) if ref.isdigit() else query.where(
        Candidate.model == ref)
    found = session.exec(query).one_or_none()
    if found is None:
        raise AuditError(f"request {request.id} has no candidate {ref!r}")
    if not found.ok:
        raise AuditError(f"candidate {ref!r} failed to generate ({found.error}); "
                         "there is nothing to judge")
    return found


def record_label(session: Session, request: Request, verdict: Verdict, author: str,
                 note: str | None = None) -> Label:
    """Store one person's judgement; the caller commits."""
    if not author.strip():
        raise AuditError("--author must name the person")
    assert request.id is not None
    ids = verdict.candidates
    if len(set(ids)) != len(ids):
        raise AuditError("a candidate is named twice")
    if verdict.kind == "ranking":
        if len(ids) < 2:
            raise AuditError("a ranking needs at least two candidates")
        label = Label(request_id=request.id, verdict="ranking", ranking=list(ids),
                      author=author, note=note, created_at=utcnow())
    elif verdict.kind in ("a", "tie") and len(ids) == 2:
        comparison = session.exec(select(Comparison.id).where(
            Comparison.request_id == request.id, Comparison.candidate_a_id == ids[0],
            Comparison.candidate_b_id == ids[1]).order_by(col(Comparison.id).desc())).first()
        label = Label(request_id=request.id, comparison_id=comparison,
                      candidate_a_id=ids[0], candidate_b_id=ids[1], verdict=verdict.kind,
                      author=author, note=note, created_at=utcnow())
    else:
        raise AuditError(f"not a verdict: {verdict}")
    session.add(label)
    session.flush()
    return label


def implied_pairs(label: Label) -> list[tuple[int, int, float]]:
    """(a, b, label) for each pair the judgement decides: 1.0 a better, 0.5 tie."""
    if label.verdict == "ranking":
        return [(a, b, 1.0) for a, b in combinations(label.ranking or [], 2)]
    if label.candidate_a_id is None or label.candidate_b_id is None:
        return []
    value = {"a": 1.0, "b": 0.0, "tie": 0.5}.get(label.verdict)
    return [] if value is None else [(label.candidate_a_id, label.candidate_b_id, value)]


# -- audit queue ----------------------------------------------------------------------------
def review_queue(session: Session, job_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """Requests worth a person's time first: a label the ranker contradicts, then the
    smallest margin between the ranker's top two."""
    items: list[dict[str, Any]] = []
    for requests, rankings, _, labels in _pages(session, job_id):
        for request in requests:
            ranking = rankings.get(request.id or 0)
            if ranking is None:
                continue
            gap = margin(ranking.entries)
            against = contradicted_pairs(ranking.entries, labels.get(request.id or 0, []))
            if gap is None and not against:
                continue
            top = sorted(ranking.entries, key=lambda e: e["rank"])
            items.append({"request_id": request.id, "custom_id": request.custom_id,
                          "margin": gap,
                          "contradicted_labels": [c["label_id"] for c in against],
                          "contradictions": against,
                          "top": [e["model"] for e in top[:2]]})
    items.sort(key=lambda i: (not i["contradicted_labels"],
                              i["margin"] if i["margin"] is not None else float("inf"),
                              i["request_id"]))
    return items[:limit]


def contradictions(entries: list[dict[str, Any]], labels: list[Label]) -> list[int]:
    """Ids of labels whose decided pairs the ranker ordered the other way."""
    return [c["label_id"] for c in contradicted_pairs(entries, labels)]


def contradicted_pairs(entries: list[dict[str, Any]],
                       labels: list[Label]) -> list[dict[str, Any]]:
    """One entry per label the ranker contradicts: ``{"label_id", "verdict",
    "pairs_contradicted", "pairs_decided"}``. A ranking label decides every pair of its
    candidates, so one label can contradict several pairs; it is still one label."""
    rank = {e["candidate_id"]: e["rank"] for e in entries}
    found = []
    for label in labels:
        decided = [(a, b, v) for a, b, v in implied_pairs(label)
                   if a in rank and b in rank and v != 0.5]
        against = sum(1 for a, b, v in decided
                      if rank[a if v == 1.0 else b] > rank[b if v == 1.0 else a])
        if against:
            found.append({"label_id": label.id or 0, "verdict": label.verdict,
                          "pairs_contradicted": against, "pairs_decided": len(decided)})
    return found


# -- audit export ---------------------------------------------------------------------------
def export_lines(session: Session, job_id: str, fmt: str) -> Iterator[dict[str, Any]]:
    if fmt not in ("mixinstruct", "pairs"):
        raise AuditError(f"unknown format {fmt!r}: mixinstruct or pairs")
    if session.get(Job, job_id) is None:
        raise AuditError(f"no job {job_id}")
    for requests, rankings, cands, labels in _pages(session, job_id, with_candidates=True):
        comparisons = _comparisons(session, [r.id or 0 for r in requests])
        for request in requests:
            rid = request.id or 0
            usable = [c for c in cands.get(rid, []) if c.ok]
            if not usable:
                continue
            if fmt == "mixinstruct":
                yield _mixinstruct_line(request, usable, rankings.get(rid), labels.get(rid, []))
            else:
                yield from _pair_lines(request, usable, comparisons.get(rid, {}),
                                       labels.get(rid, []))


def _mixinstruct_line(request: Request, usable: list[Candidate], ranking: Ranking | None,
                      labels: list[Label]) -> dict[str, Any]:
    placed = {e["candidate_id"]: e for e in (ranking.entries if ranking else [])}
    human: dict[int, float] = {}
    for label in labels:
        for a, b, value in implied_pairs(label):
            human[a] = human.get(a, 0.0) + (value - 0.5) * 2
            human[b] = human.get(b, 0.0) - (value - 0.5) * 2
    candidates = []
    for c in usable:
        scores: dict[str, float] = {}
        if c.id in placed:
            scores["ranker"] = float(placed[c.id]["score"])
            scores["ranker_rank"] = int(placed[c.id]["rank"])
        if labels:
            scores["human"] = human.get(c.id or 0, 0.0)
        candidates.append({"model": c.model, "candidate_id": c.id, "text": c.text,
                           "scores": scores})
    instruction, given = prompt_of(request)
    return {"id": request.custom_id, "job_id": request.job_id, "request_id": request.id,
            "instruction": instruction, "input": given, "messages": request.messages,
            "output": request.fused_output, "candidates": candidates,
            "labels": [_label_dict(label) for label in labels]}


def _pair_lines(request: Request, usable: list[Candidate],
                logits: dict[tuple[int, int], float],
                labels: list[Label]) -> Iterator[dict[str, Any]]:
    by_id = {c.id or 0: c for c in usable}
    labelled: set[frozenset[int]] = set()
    for label in labels:
        for a, b, value in implied_pairs(label):
            if a in by_id and b in by_id:
                labelled.add(frozenset((a, b)))
                yield _pair(request, by_id[a], by_id[b], logits, "label", value, label)
    for a, b in combinations(sorted(by_id), 2):
        if frozenset((a, b)) in labelled:
            continue
        if (a, b) in logits or (b, a) in logits:
            yield _pair(request, by_id[a], by_id[b], logits, "ranker", None, None)


def _pair(request: Request, a: Candidate, b: Candidate, logits: dict[tuple[int, int], float],
          origin: str, value: float | None, label: Label | None) -> dict[str, Any]:
    ab, ba = logits.get((a.id or 0, b.id or 0)), logits.get((b.id or 0, a.id or 0))
    votes = [v for v in (ab, None if ba is None else -ba) if v is not None]
    return {"job_id": request.job_id, "request_id": request.id, "custom_id": request.custom_id,
            "source": source_of(request),
            "candidate_a_id": a.id, "model_a": a.model, "candidate_a": a.text,
            "candidate_b_id": b.id, "model_b": b.model, "candidate_b": b.text,
            "origin": origin, "label": value,
            "score": sum(votes) / len(votes) if votes else None,
            "logit_ab": ab, "logit_ba": ba,
            "author": label.author if label else None, "note": label.note if label else None}


# -- paging ---------------------------------------------------------------------------------
Page = tuple[list[Request], dict[int, Ranking], dict[int, list[Candidate]],
             dict[int, list[Label]]]


def _pages(session: Session, job_id: str, with_candidates: bool = False) -> Iterator[Page]:
    """The job's requests in input order, a page at a time, with what audits read."""
    last_id = 0
    while True:
        requests = list(session.exec(
            select(Request).where(Request.job_id == job_id, col(Request.id) > last_id)
            .order_by(col(Request.id)).limit(PAGE)).all())
        if not requests:
            return
        ids = [r.id for r in requests]
        rankings: dict[int, Ranking] = {}
        for ranking in session.exec(select(Ranking).where(col(Ranking.request_id).in_(ids))
                                    .order_by(col(Ranking.id))).all():
            rankings[ranking.request_id] = ranking  # the latest wins
        cands: dict[int, list[Candidate]] = {}
        if with_candidates:
            for c in session.exec(select(Candidate).where(col(Candidate.request_id).in_(ids))
                                  .order_by(col(Candidate.request_id),
                                            col(Candidate.model))).all():
                cands.setdefault(c.request_id, []).append(c)
        labels: dict[int, list[Label]] = {}
        for label in session.exec(select(Label).where(col(Label.request_id).in_(ids))
                                  .order_by(col(Label.id))).all():
            labels.setdefault(label.request_id, []).append(label)
        yield requests, rankings, cands, labels
        last_id = requests[-1].id or last_id


def _comparisons(session: Session,
                 request_ids: list[int]) -> dict[int, dict[tuple[int, int], float]]:
    """Stored logits per request; with several ranker revisions the latest row wins."""
    found: dict[int, dict[tuple[int, int], float]] = {}
    for c in session.exec(select(Comparison).where(col(Comparison.request_id).in_(request_ids))
                          .order_by(col(Comparison.id))).all():
        found.setdefault(c.request_id, {})[(c.candidate_a_id, c.candidate_b_id)] = c.logit
    return found


def _label_dict(label: Label) -> dict[str, Any]:
    return {"label_id": label.id, "verdict": label.verdict,
            "candidate_a": label.candidate_a_id, "candidate_b": label.candidate_b_id,
            "ranking": label.ranking, "comparison_id": label.comparison_id,
            "author": label.author, "note": label.note, "created_at": _iso(label.created_at)}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
