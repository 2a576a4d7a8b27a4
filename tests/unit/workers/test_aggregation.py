import math
import subprocess
import sys

import pytest

from workers.ranking.aggregation import full_pairs, max_logits, max_wins, rank_order


def test_full_pairs_lists_both_orders_and_no_self_pairs() -> None:
    assert full_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert full_pairs(1) == []
    assert len(full_pairs(5)) == 20


def test_max_logits_full_matrix() -> None:
    m = {(0, 1): 2.0, (1, 0): -1.0, (0, 2): 1.0, (2, 0): 0.0, (1, 2): 0.5, (2, 1): 1.5}
    # score_0 = mean((2 - -1), (1 - 0)) = 2; score_1 = mean((-1 - 2), (0.5 - 1.5)) = -2
    # score_2 = mean((0 - 1), (1.5 - 0.5)) = 0
    assert max_logits(3, m) == pytest.approx([2.0, -2.0, 0.0])


def test_max_logits_completes_missing_direction_antisymmetrically() -> None:
    # Only 0 vs 1 in one order: counts as if (1, 0) were -1.5.
    assert max_logits(3, {(0, 1): 1.5}) == pytest.approx([3.0, -3.0, 0.0])
    assert max_logits(2, {(1, 0): -1.0}) == pytest.approx([2.0, -2.0])


def test_max_logits_averages_only_over_opponents_with_data() -> None:
    m = {(0, 1): 1.0, (1, 0): -1.0, (1, 2): 3.0, (2, 1): -3.0}
    # 0 met only 1; 1 met 0 and 2; 2 met only 1.
    assert max_logits(3, m) == pytest.approx([2.0, (-2.0 + 6.0) / 2, -6.0])


def test_max_logits_ignores_self_pairs_and_checks_range() -> None:
    assert max_logits(2, {(0, 0): 9.0}) == [0.0, 0.0]
    with pytest.raises(ValueError, match="out of range"):
        max_logits(2, {(0, 2): 1.0})


def test_max_wins_counts_each_directed_comparison() -> None:
    m = {(0, 1): 0.3, (1, 0): 0.2, (0, 2): -1.0, (2, 0): 0.0, (1, 2): -0.1}
    # (0,1): 0 wins; (1,0): 1 wins; (0,2): 2 wins; (2,0): draw; (1,2): 2 wins
    assert max_wins(3, m) == [1.0, 1.0, 2.0]
    assert max_wins(0, {}) == []


def test_rank_order_breaks_ties_by_key_then_index() -> None:
    assert rank_order([1.0, 3.0, 1.0, 3.0], ["d", "b", "a", "c"]) == [1, 3, 2, 0]
    assert rank_order([0.0, 0.0], ["same", "same"]) == [0, 1]
    assert rank_order([math.nan, -5.0], ["a", "b"]) == [1, 0]
    with pytest.raises(ValueError):
        rank_order([1.0], [])


def test_ties_from_max_logits_resolve_deterministically() -> None:
    scores = max_logits(3, {(0, 1): 1.0, (1, 0): -1.0, (2, 1): 1.0, (1, 2): -1.0})
    assert scores[0] == scores[2]
    assert rank_order(scores, ["model-z", "model-m", "model-a"]) == [2, 0, 1]


def test_aggregation_does_not_import_torch() -> None:
    code = "import sys, workers.ranking.aggregation; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
