"""``training.train``'s options for short runs from a fresh head (frozen parameters, head
learning rate, warm-up), and the pointwise baseline trained through the same loop; on the
tiny test ranker, in seconds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from ops.bench.ranker_pointwise import PointwiseScorer, RandomComparer
from workers.ranking.evaluation import PairExample, evaluate
from workers.ranking.pairranker import PairRanker
from workers.ranking.training import TrainPair, _rate, train
from workers.tiny_models import CORPUS


def _pairs(rng: random.Random, n: int) -> list[TrainPair]:
    good = [s for s in CORPUS if "Paris" in s or "France" in s]
    bad = [s for s in CORPUS if s not in good]
    return [TrainPair("What is the capital of France?", rng.choice(good), rng.choice(bad))
            for _ in range(n)]


def test_frozen_parameters_stay_put_and_become_trainable_again(
        tiny_models: dict[str, Path]) -> None:
    ranker = PairRanker.from_pretrained(str(tiny_models["tiny-ranker"]), device="cpu")
    before = {n: p.detach().clone() for n, p in ranker.backbone.named_parameters()}
    head_before = [p.detach().clone() for p in ranker.head_layer.parameters()]
    train(ranker, _pairs(random.Random(0), 8), lr=1e-3, head_lr=1e-2,
          freeze=("embeddings.", "encoder.layer.0."), warmup=0.2)
    for name, param in ranker.backbone.named_parameters():
        assert param.requires_grad
        if name.startswith("pooler."):  # PairRM reads token states: no gradient reaches it
            continue
        unchanged = torch.equal(before[name], param)
        assert unchanged == name.startswith(("embeddings.", "encoder.layer.0.")), name
    assert all(not torch.equal(a, b)
               for a, b in zip(head_before, ranker.head_layer.parameters(), strict=True))


def test_warmup_ramps_up_then_decays_to_zero() -> None:
    rates = [_rate(step, 10, 0.2) for step in range(10)]
    assert rates[:2] == [0.5, 1.0]
    assert rates == sorted(rates[:2]) + sorted(rates[2:], reverse=True)
    assert rates[-1] == pytest.approx(1 / 8)
    assert [_rate(step, 10, None) for step in range(10)] == [1.0] * 10


def test_pointwise_baseline_learns_through_the_same_loop(tiny_models: dict[str, Path]) -> None:
    base = PairRanker.from_pretrained(str(tiny_models["tiny-ranker"]), device="cpu")
    torch.manual_seed(0)
    scorer = PointwiseScorer(base.backbone, base.tokenizer, 64, 64)
    rng = random.Random(1)
    held_out = [PairExample(p.source, *((p.better, p.worse) if i % 2 else (p.worse, p.better)),
                            bool(i % 2)) for i, p in enumerate(_pairs(rng, 24))]
    losses = train(scorer, _pairs(rng, 48), epochs=3, lr=1e-3)
    assert losses[-1] < 0.5 * losses[0], losses
    assert evaluate(scorer, [], held_out)["pairwise_accuracy"] >= 0.9
    # Scores are per candidate, so a pair's logit is antisymmetric by construction.
    ab, ba = scorer.compare([("q", "Paris is nice.", "Cats sleep."),
                             ("q", "Cats sleep.", "Paris is nice.")])
    assert ab == pytest.approx(-ba)
    coin = evaluate(RandomComparer(0), [], held_out * 20)["pairwise_accuracy"]
    assert 0.4 < coin < 0.6


def test_on_step_sees_every_step_and_training_resumes_after_it(
        tiny_models: dict[str, Path]) -> None:
    ranker = PairRanker.from_pretrained(str(tiny_models["tiny-ranker"]), device="cpu")
    seen: list[tuple[int, int, bool]] = []

    def measure(step: int, total: int) -> None:
        seen.append((step, total, ranker.head_layer.training))
        ranker.compare([("q", "a", "b")])  # a learning curve measures here: eval mode

    # 10 pairs, both orders: 20 rows in batches of 8 -> 3 steps an epoch.
    train(ranker, _pairs(random.Random(2), 10), epochs=2, batch_size=8, on_step=measure)
    assert seen == [(step, 6, True) for step in range(1, 7)]
    assert not ranker.head_layer.training  # eval again once training ends
