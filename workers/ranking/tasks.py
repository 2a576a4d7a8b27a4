"""The ranking stage: each request's candidates through the PairRanker, by the job's strategy."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import text
from sqlmodel import Session, col, select

from db import core
from db.engine import session_scope
from db.models import (
    Chunk,
    ChunkStage,
    ChunkStatus,
    Comparison,
    Ranking,
    utcnow,
)
from db.writes import copy_insert_ignore, insert_ignore
from orchestration import lifecycle, outbox
from orchestration.canvas import fuse_signature, to_payload
from orchestration.celery_app import RANK_TASK, app
from orchestration.registry import RegistryError, get_registry
from orchestration.settings import Settings
from workers import leases
from workers.base import TRANSIENT_ERRORS, BlendqTask
from workers.deadline import Deadline, DeadlineExceeded
from workers.model_store import ModelLoadError, get_model, revision_of
from workers.ranking.batching import DEFAULT_BATCH_COST, DEFAULT_TOKEN_BUDGET
from workers.ranking.gathering import claim_chunks
from workers.ranking.strategies import Pair, final_order, plan, run_plans
from workers.stage_io import (
    OpenRequest,
    StageJob,
    StoredCandidate,
    candidates_by_request,
    fail_open,
    open_requests_of,
    source_text,
    stage_jobs,
)

log = structlog.get_logger(__name__)


def rank_chunk(settings: Settings, job_id: str, chunk_id: int,
               deadline: Deadline | None = None) -> dict[str, int]:
    url = settings.database_url
    with session_scope(url) as session:
        found = session.execute(_RANK_START, {"chunk_id": chunk_id}).first()
        if found is None or found[0] != ChunkStatus.RUNNING:
            log.info("rank.skipped")
            return {"ranked": 0, "comparisons": 0, "chunks": 0}
        if found[1] == ChunkStage.FUSE:
            # A task that gathered this chunk stored its rankings and, in the same
            # transaction, queued its fusion (which moved it to the fuse stage).
            log.info("rank.ranked_already")
            return {"ranked": 0, "comparisons": 0, "chunks": 0}
        ranker_name = found[2]
        assert ranker_name is not None
    deadline = deadline or Deadline(settings.task_time_limit)
    with claim_chunks(url, chunk_id, ranker_name, settings.rank_gather_chunks) as chunk_ids, \
            leases.holding(settings, chunk_ids):
        return _rank_chunks(settings, ranker_name, chunk_ids, deadline)


_RANK_START = text("SELECT c.status, c.stage, j.ranker FROM chunk c JOIN job j ON j.id = c.job_id "
                   "WHERE c.id = :chunk_id")


def _queue_fusion(session: Session, settings: Settings,
                  chunk_ids: list[int]) -> list[tuple[int, dict[str, Any]]]:
    """The hop to fuse, written in the caller's transaction (the one that stores the
    rankings), so it is as durable as the first publish; returns the new outbox rows (id,
    payload)."""
    queued = []
    running = session.exec(
        select(Chunk.id, Chunk.job_id, Chunk.epoch)
        .where(col(Chunk.id).in_(chunk_ids), Chunk.status == ChunkStatus.RUNNING)
        .order_by(col(Chunk.id))).all()
    for chunk_id, job_id, epoch in running:
        assert chunk_id is not None
        payload = to_payload(fuse_signature(app, job_id, chunk_id))
        outbox_id = outbox.add(session, outbox.KIND_SIGNATURE, payload, job_id=job_id,
                               chunk_id=chunk_id, dedup_key=f"fuse:{chunk_id}:{epoch}",
                               notify=False)  # _send_fusion publishes it
        if outbox_id is not None:
            lifecycle.enter_stage(session, chunk_id, ChunkStage.FUSE,
                                  settings.chunk_start_timeout)
            queued.append((outbox_id, payload))
    return queued


def _send_fusion(settings: Settings, queued: list[tuple[int, dict[str, Any]]]) -> None:
    outbox.publish_now(settings.database_url, app, queued, settings.chunk_start_timeout)


def _rank_chunks(settings: Settings, ranker_name: str, chunk_ids: list[int],
                 deadline: Deadline) -> dict[str, int]:
    """Rank the open requests of ``chunk_ids`` (all of jobs using ``ranker_name``) as one
    set of packed batches; each request keeps its own job's strategy and aggregation.
    Every chunk it looked at then moves on to fusion (failed requests too: fusion is what
    finishes a chunk)."""
    url = settings.database_url
    with session_scope(url) as session:
        running = [c for c in session.exec(
            select(Chunk.id).where(col(Chunk.id).in_(chunk_ids),
                                   Chunk.status == ChunkStatus.RUNNING)
            .order_by(col(Chunk.id))).all() if c is not None]
        requests = open_requests_of(session, running)
        job_ids = sorted({r.job_id for r in requests})
        jobs = stage_jobs(session, job_ids)
        by_request = candidates_by_request(session, [r.id for r in requests])
        empty = {r.id for r in requests if not _usable(by_request[r.id])}
        for request_id in sorted(empty):
            fail_open(session, [request_id], _no_candidates_reason(by_request[request_id]))
    rankable = [r for r in requests if r.id not in empty]
    if not rankable:
        return _give_up(settings, [], "", running)
    job_of = {r.id: jobs[r.job_id] for r in rankable}
    try:
        entry = get_registry(settings.registry_path).get(ranker_name, "ranker")
        ranker = get_model(entry, settings)
    except (RegistryError, ModelLoadError) as exc:
        return _give_up(settings, rankable, f"ranking: {exc}", running)
    revision = revision_of(ranker, entry)
    with session_scope(url) as session:
        stored = _stored_logits(session, [r.id for r in rankable], revision)
    cands_of = {r.id: _usable(by_request[r.id]) for r in rankable}
    source_of = {r.id: source_text(r) for r in rankable}
    plans = {rid: plan(job_of[rid].strategy, len(cands), seed=rid, top_k=job_of[rid].top_k)
             for rid, cands in cands_of.items()}
    written = 0

    # Registry params of the ranker entry tune packing (memory bound, batch overhead).
    budget = int(entry.params.get("token_budget", DEFAULT_TOKEN_BUDGET))
    batch_cost = int(entry.params.get("batch_cost", DEFAULT_BATCH_COST))

    def compare(needs: dict[int, list[Pair]]) -> dict[int, dict[Pair, float]]:
        """One round: every request's new pairs packed together under the token budget;
        each batch is stored (one COPY) as soon as it finishes, so a crash keeps them."""
        nonlocal written
        flat = [(rid, pair) for rid, pairs in needs.items() for pair in pairs]
        results: dict[int, dict[Pair, float]] = {}
        texts = [(source_of[rid], cands_of[rid][i].text, cands_of[rid][j].text)
                 for rid, (i, j) in flat]
        for idxs, logits in ranker.iter_compare(texts, token_budget=budget,
                                                batch_cost=batch_cost):
            batch = [flat[k] for k in idxs]
            now = utcnow()
            rows = [{"request_id": rid, "candidate_a_id": cands_of[rid][i].id,
                     "candidate_b_id": cands_of[rid][j].id, "logit": float(logit),
                     "ranker_revision": revision, "created_at": now}
                    for (rid, (i, j)), logit in zip(batch, logits, strict=True)]
            # The rankings' commit, which waits for the disk, makes these durable first.
            with session_scope(url, flush_wal=False) as session:
                inserted = copy_insert_ignore(session, Comparison, rows)
                if inserted < len(rows):
                    # Another delivery stored some first: decide from its numbers, so
                    # the ranking agrees with the rows an auditor sees.
                    stored_now = _stored_logits(session, sorted({r for r, _ in batch}),
                                                revision)
                    logits = [stored_now[row["request_id"]][(row["candidate_a_id"],
                                                              row["candidate_b_id"])]
                              for row in rows]
            written += inserted
            for (rid, pair), logit in zip(batch, logits, strict=True):
                results.setdefault(rid, {})[pair] = float(logit)
        return results

    try:
        tops = deadline.run("ranking", lambda: run_plans(plans, compare, known={
            rid: _by_index(cands, stored.get(rid, {})) for rid, cands in cands_of.items()}))
    except TRANSIENT_ERRORS:
        # Each batch is stored as it finishes, so the database going away lands here too;
        # the task retries it (BlendqTask). Failing the requests instead would make a
        # database restart fail them for good whenever it was back by _give_up.
        raise
    except DeadlineExceeded as exc:
        return _give_up(settings, rankable, str(exc), running)
    except Exception as exc:
        log.exception("rank.failed")
        return _give_up(settings, rankable, f"ranking failed: {type(exc).__name__}: {exc}",
                        running)
    with session_scope(url) as session:
        # Score from what is stored, so a redelivery ranks from the same numbers.
        stored = _stored_logits(session, [r.id for r in rankable], revision)
        _store_rankings(session, [
            _ranking_row(r, cands_of[r.id], tops[r.id], stored.get(r.id, {}),
                         job_of[r.id], revision)
            for r in rankable])
        queued = _queue_fusion(session, settings, running)
    _send_fusion(settings, queued)
    log.info("rank.done", requests=len(rankable), comparisons=written, revision=revision,
             chunks=running)
    return {"ranked": len(rankable), "comparisons": written, "chunks": len(running)}


def _by_index(cands: list[StoredCandidate],
              stored: dict[tuple[int, int], float]) -> dict[Pair, float]:
    """Stored logits of one request's candidates, keyed by their positions."""
    index = {c.id: i for i, c in enumerate(cands)}
    return {(index[a], index[b]): v for (a, b), v in stored.items()
            if a in index and b in index}


def _give_up(settings: Settings, requests: list[OpenRequest], reason: str,
             chunk_ids: list[int]) -> dict[str, int]:
    """Fail the requests and pass the chunks on: fusion skips failed requests and
    finishes the chunks."""
    with session_scope(settings.database_url) as session:
        fail_open(session, [r.id for r in requests], reason)
        queued = _queue_fusion(session, settings, chunk_ids)
    _send_fusion(settings, queued)
    return {"ranked": 0, "comparisons": 0, "chunks": len(chunk_ids)}


def _usable(candidates: list[StoredCandidate]) -> list[StoredCandidate]:
    return [c for c in candidates if c.ok]


def _no_candidates_reason(candidates: list[StoredCandidate]) -> str:
    if not candidates:
        return "no candidate was generated"
    return "no candidate was generated: " + "; ".join(
        f"{c.model}: {c.error}" for c in candidates)


def _stored_logits(session: Session, request_ids: list[int],
                   revision: str) -> dict[int, dict[tuple[int, int], float]]:
    """Each request's stored logits by (candidate A, candidate B)."""
    k = core.comparison.c
    rows = session.execute(
        select(k.request_id, k.candidate_a_id, k.candidate_b_id, k.logit)
        .where(core.among(session, k.request_id, request_ids), k.ranker_revision == revision)
    ).all()
    found: dict[int, dict[tuple[int, int], float]] = {}
    for request_id, a, b, logit in rows:
        found.setdefault(request_id, {})[(a, b)] = logit
    return found


def _ranking_row(request: OpenRequest, cands: list[StoredCandidate], top: list[int],
                 stored: dict[tuple[int, int], float], job: StageJob,
                 revision: str) -> dict[str, Any]:
    order, scores = final_order(len(cands), top, _by_index(cands, stored), job.aggregation,
                                [c.model for c in cands])
    entries: list[dict[str, Any]] = [
        {"candidate_id": cands[i].id, "model": cands[i].model, "score": scores[i],
         "rank": rank}
        for rank, i in enumerate(order, start=1)
    ]
    return {"request_id": request.id, "ranker": job.ranker, "ranker_revision": revision,
            "strategy": job.strategy, "aggregation": job.aggregation, "entries": entries,
            "created_at": utcnow()}


def _store_rankings(session: Session, rows: list[dict[str, Any]]) -> None:
    """Every ranking in one statement. Each request's choice (its ranking's first entry)
    is written by fusion, with the rest of the request's outcome: one update of the
    request row instead of two."""
    insert_ignore(session, Ranking, rows)


@app.task(name=RANK_TASK, base=BlendqTask, bind=True, finishes_chunk_on_failure=True)
def rank(self: BlendqTask, *, job_id: str, chunk_id: int) -> dict[str, int]:
    return rank_chunk(self.settings, job_id, chunk_id)
