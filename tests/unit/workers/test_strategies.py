"""Comparison strategies: how many comparisons each makes, that they agree on a clear
winner, that sequential ones batch across requests, and a bubble job end to end."""

from __future__ import annotations

import json

import pytest
from celery import Celery
from sqlalchemy import func
from sqlmodel import select

from db.engine import session_scope
from db.models import Chunk, Comparison, Ranking, Request
from orchestration.registry import load_registry
from orchestration.settings import Settings
from orchestration.submission import JobOptions, submit
from workers.fusion.tasks import fuse_chunk
from workers.generation.tasks import generate_chunk
from workers.ranking.strategies import (
    STRATEGIES,
    Pair,
    final_order,
    plan,
    run_plans,
)
from workers.ranking.tasks import rank_chunk

QUALITY = [0.1, 3.0, -2.0, 1.5, 0.7]  # candidate 1 is clearly best, then 3


class Judge:
    """Scores by a fixed quality per candidate and counts what it was asked (no model:
    the strategy logic is what is under test here)."""

    def __init__(self, quality: dict[int, list[float]]) -> None:
        self.quality = quality
        self.rounds: list[dict[int, list[Pair]]] = []

    def __call__(self, needs: dict[int, list[Pair]]) -> dict[int, dict[Pair, float]]:
        self.rounds.append(needs)
        return {key: {(i, j): self.quality[key][i] - self.quality[key][j] for i, j in pairs}
                for key, pairs in needs.items()}

    def asked(self, key: int) -> list[Pair]:
        return [p for r in self.rounds for p in r.get(key, [])]


def _run(strategy: str, quality: list[float], top_k: int = 1,
         seed: int = 7) -> tuple[list[int], Judge]:
    judge = Judge({0: quality})
    tops = run_plans({0: plan(strategy, len(quality), seed=seed, top_k=top_k)}, judge)
    return tops[0], judge


@pytest.mark.parametrize(("strategy", "expected"), [
    ("full", 20), ("half", 10), ("bubble", 8)])
def test_comparison_counts(strategy: str, expected: int) -> None:
    _, judge = _run(strategy, QUALITY, top_k=2)
    asked = judge.asked(0)
    assert len(asked) == expected
    assert len(set(asked)) == expected, "no pair is asked twice"


def test_topk_needs_far_fewer_comparisons_than_full() -> None:
    quality = [float((7 * i) % 20) for i in range(20)]  # 20 candidates, all different
    top, judge = _run("topk", quality, top_k=3)
    asked = judge.asked(0)
    assert len(asked) == len(set(asked))
    # Three passes: at most 2 * (19 + 18 + 17) pairs, pairs met before are not asked again.
    assert len(asked) <= 108 < 20 * 19 / 2
    assert top == sorted(range(20), key=lambda i: -quality[i])[:3]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_finds_the_clear_winner(strategy: str) -> None:
    top, judge = _run(strategy, QUALITY, top_k=2)
    logits = {p: QUALITY[p[0]] - QUALITY[p[1]] for p in judge.asked(0)}
    for aggregation in ("max_logits", "max_wins"):
        order, _ = final_order(5, top, logits, aggregation, [str(i) for i in range(5)])
        assert order[0] == 1, (strategy, aggregation, order)
        assert sorted(order) == [0, 1, 2, 3, 4]
    if strategy == "topk":
        assert top == [1, 3]


def test_bubble_is_deterministic_for_a_seed_and_meets_in_both_orders() -> None:
    first = _run("bubble", QUALITY, seed=3)[1].asked(0)
    again = _run("bubble", QUALITY, seed=3)[1].asked(0)
    assert first == again
    for k in range(0, len(first), 2):
        (a, b), (c, d) = first[k], first[k + 1]
        assert (c, d) == (b, a)
    orders = {tuple(_run("bubble", QUALITY, seed=s)[1].asked(0)) for s in range(6)}
    assert len(orders) > 1, "the seed changes the starting permutation"


def test_sequential_strategies_batch_all_requests_per_round() -> None:
    # Requests with 5, 3 and 1 candidates (a failed generator leaves fewer).
    qualities = {10: QUALITY, 11: [0.0, 1.0, 2.0], 12: [5.0]}
    judge = Judge(qualities)
    tops = run_plans({k: plan("bubble", len(q), seed=k) for k, q in qualities.items()}, judge)
    assert len(judge.rounds) == 4  # the longest pass: 5 candidates, 4 meetings
    assert set(judge.rounds[0]) == {10, 11}  # both requests' first meetings together
    assert tops == {10: [1], 11: [2], 12: [0]}


def test_stored_pairs_are_not_asked_again() -> None:
    judge = Judge({0: QUALITY})
    known = {0: {(i, j): QUALITY[i] - QUALITY[j] for i in range(5) for j in range(5)
                 if i != j}}
    tops = run_plans({0: plan("topk", 5, seed=1, top_k=3)}, judge, known=known)
    assert judge.rounds == []
    assert tops[0] == [1, 3, 4]


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'random'"):
        plan("random", 3, seed=0)


@pytest.mark.parametrize(("strategy", "pairs_per_request"), [("bubble", 4), ("half", 3),
                                                              ("full", 6)])
def test_a_job_stores_what_its_strategy_compared(settings: Settings, celery_app: Celery,
                                                 strategy: str, pairs_per_request: int) -> None:
    models = ["tiny-a", "tiny-b", "tiny-c"]
    lines = [json.dumps({"custom_id": f"s{i}", "instruction": f"Say {i}."}).encode()
             for i in range(3)]
    with session_scope(settings.database_url) as session:
        job_id = submit(session, celery_app, lines,
                        JobOptions(models=models, top_k=2, chunk_size=3, strategy=strategy,
                                   aggregation="max_wins"),
                        load_registry(None)).job.id
    with session_scope(settings.database_url) as session:
        chunk_id = session.exec(select(Chunk.id).where(Chunk.job_id == job_id)).one()
    assert chunk_id is not None
    for model in models:
        generate_chunk(settings, job_id, chunk_id, model)
    rank_chunk(settings, job_id, chunk_id)
    rank_chunk(settings, job_id, chunk_id)  # a redelivery compares nothing new
    fuse_chunk(settings, job_id, chunk_id)
    with session_scope(settings.database_url) as session:
        ids = select(Request.id).where(Request.job_id == job_id)
        per_request = session.exec(
            select(Comparison.request_id, func.count()).where(
                Comparison.request_id.in_(ids)).group_by(Comparison.request_id)).all()
        assert sorted(n for _, n in per_request) == [pairs_per_request] * 3
        rankings = session.exec(select(Ranking).where(Ranking.request_id.in_(ids))).all()
        assert {(r.strategy, r.aggregation) for r in rankings} == {(strategy, "max_wins")}
        assert all([e["rank"] for e in r.entries] == [1, 2, 3] for r in rankings)
        statuses = session.exec(select(Request.status).where(Request.job_id == job_id)).all()
        assert set(statuses) == {"completed"}
