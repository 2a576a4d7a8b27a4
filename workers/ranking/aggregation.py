"""Turn pairwise logits into per-candidate scores and an order.

Pure Python on purpose: the API and auditors re-derive rankings from stored comparison
rows on hosts without torch.

``logits[(i, j)]`` is the ranker's logit of candidate ``i`` over candidate ``j`` (positive
means ``i`` is better). Any subset of ordered pairs may be present, so strategies that
compare fewer than all pairs (bubble, sampling) aggregate with the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["full_pairs", "max_logits", "max_wins", "rank_order"]


def _check(n: int, logits: Mapping[tuple[int, int], float]) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for i, j in logits:
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair ({i}, {j}) out of range for {n} candidates")


def full_pairs(n: int) -> list[tuple[int, int]]:
    """Every ordered pair i != j: both orders, because the ranker is not antisymmetric."""
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def max_logits(n: int, logits: Mapping[tuple[int, int], float]) -> list[float]:
    """score_i = mean over opponents j with data of (M[i,j] - M[j,i]).

    A missing direction is completed antisymmetrically (M[j,i] := -M[i,j]), so a pair
    seen in one order counts 2*M[i,j]: the same scale as a pair seen in both orders.
    Opponents never compared with i are left out of i's mean; a candidate with no data
    scores 0. Self-pairs are ignored.
    """
    _check(n, logits)
    totals = [0.0] * n
    counts = [0] * n
    seen: set[tuple[int, int]] = set()
    for i, j in logits:
        if i == j:
            continue
        key = (min(i, j), max(i, j))
        if key in seen:
            continue
        seen.add(key)
        a, b = key
        ab = logits.get((a, b))
        ba = logits.get((b, a))
        if ab is None:
            assert ba is not None
            ab = -ba
        if ba is None:
            ba = -ab
        diff = float(ab) - float(ba)
        totals[a] += diff
        totals[b] -= diff
        counts[a] += 1
        counts[b] += 1
    return [t / c if c else 0.0 for t, c in zip(totals, counts, strict=True)]


def max_wins(n: int, logits: Mapping[tuple[int, int], float]) -> list[float]:
    """Comparisons won: each directed comparison is one game; a logit of exactly 0 is a draw."""
    _check(n, logits)
    wins = [0.0] * n
    for (i, j), logit in logits.items():
        if i == j:
            continue
        if logit > 0:
            wins[i] += 1.0
        elif logit < 0:
            wins[j] += 1.0
    return wins


def rank_order(scores: Sequence[float], tie_keys: Sequence[str]) -> list[int]:
    """Indices best first; equal scores ordered by tie key, then index, so reruns agree.

    NaN scores sort last rather than poisoning the comparison.
    """
    if len(scores) != len(tie_keys):
        raise ValueError(f"{len(scores)} scores but {len(tie_keys)} tie keys")

    def key(idx: int) -> tuple[bool, float, str, int]:
        s = float(scores[idx])
        bad = math.isnan(s)
        return (bad, 0.0 if bad else -s, tie_keys[idx], idx)

    return sorted(range(len(scores)), key=key)
