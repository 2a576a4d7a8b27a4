"""Token-budget packing: every comparison once, under budget, little padding, and no
logit that depends on how the comparisons were batched."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from workers.ranking.batching import pack, padded_tokens, padding_fraction
from workers.ranking.pairranker import PairRanker


def test_pack_respects_the_budget_and_keeps_every_index_once() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(500)]
    batches = pack(lengths, token_budget=1024)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 1024
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)
    # Sorted packing wastes little; fixed batches of 8 in arrival order waste a lot.
    fixed = [list(range(s, min(s + 8, 500))) for s in range(0, 500, 8)]
    assert padding_fraction(lengths, batches) < 0.05 < padding_fraction(lengths, fixed)
    assert padded_tokens(lengths, batches) < padded_tokens(lengths, fixed)


def test_pack_cuts_where_lengths_jump_rather_than_filling_the_budget() -> None:
    # Greedy filling would put all six in one batch (6 x 100 <= 1000) and pad half of it.
    lengths = [100, 100, 100, 10, 10, 10]
    assert pack(lengths, token_budget=1000, batch_cost=50) == [[0, 1, 2], [3, 4, 5]]
    # A batch that costs more than the padding it saves is not started.
    assert pack(lengths, token_budget=1000, batch_cost=1000) == [[0, 1, 2, 3, 4, 5]]


def test_pack_budget_not_count_decides_rows_per_batch() -> None:
    batches = pack([100] * 4 + [10] * 40, token_budget=400)
    assert [len(b) for b in batches] == [4, 40]
    # A row longer than the budget still runs, alone.
    assert pack([900, 50, 50], token_budget=200) == [[0], [1, 2]]
    capped = pack([10] * 10, token_budget=1000, max_rows=4)
    assert len(capped) == 3 and max(len(b) for b in capped) == 4
    assert [i for b in capped for i in b] == list(range(10))
    assert pack([], 100) == []
    with pytest.raises(ValueError):
        pack([1], 0)


@pytest.fixture(scope="module")
def ranker(tiny_models: dict[str, Path]) -> PairRanker:
    return PairRanker.from_pretrained(str(tiny_models["tiny-ranker"]), device="cpu")


def _pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    words = ["the", "answer", "is", "clear", "and", "short", "but", "some", "replies",
             "ramble", "on", "at", "length"]

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [(text(3, 60), text(1, 80), text(1, 80)) for _ in range(n)]


def test_logits_do_not_depend_on_the_token_budget(ranker: PairRanker) -> None:
    pairs = _pairs(40, seed=1)
    lengths = [len(ranker.encode_pair(*p)) for p in pairs]
    one_at_a_time = ranker.compare(pairs, batch_size=1)
    for budget in (max(lengths), 2048, 100_000):
        batched = ranker.compare(pairs, token_budget=budget)
        assert max(abs(a - b) for a, b in zip(one_at_a_time, batched, strict=True)) < 1e-5
    # The budgets above really did batch differently.
    assert len(pack(lengths, max(lengths))) > len(pack(lengths, 2048)) > 1


def test_iter_compare_yields_each_batch_under_budget(ranker: PairRanker) -> None:
    pairs = _pairs(30, seed=2)
    seen: list[int] = []
    for idxs, logits in ranker.iter_compare(pairs, token_budget=1500):
        assert len(idxs) == len(logits)
        widths = [len(ranker.encode_pair(*pairs[i])) for i in idxs]
        assert len(idxs) == 1 or len(idxs) * max(widths) <= 1500
        seen.extend(idxs)
    assert sorted(seen) == list(range(30))
