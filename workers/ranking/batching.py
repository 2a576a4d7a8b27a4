"""Packing comparisons into batches under a token budget (pure Python, no torch).

A batch costs its row count times its longest row (every row is padded to it), so the
budget bounds that product rather than the number of rows: short comparisons travel many
to a batch, long ones few, and memory stays flat. Sorting by length first puts rows of
similar length together, and the cut points are chosen to minimise padding; a fixed batch
of 8 in arrival order (the reference's way) pads every row to the longest of its 8.

Which rows share a batch changes nothing in a row's score: each pair is truncated on its
own (``PairRanker._encode``) and padding is masked out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_TOKEN_BUDGET = 16384
# What starting one more batch costs, in padded-token equivalents (kernel launches, the
# head, host-device copies). Small on a CPU; raise it on a GPU, where a batch of a few
# rows wastes the device, to trade a little padding for fewer, fuller batches.
DEFAULT_BATCH_COST = 256


def pack(lengths: Sequence[int], token_budget: int = DEFAULT_TOKEN_BUDGET,
         max_rows: int | None = None,
         batch_cost: int = DEFAULT_BATCH_COST) -> list[list[int]]:
    """Indices into ``lengths``, longest first, cut into batches whose padded size
    (rows x longest row) stays within ``token_budget``; a row longer than the budget gets
    a batch of its own.

    Where to cut is chosen by dynamic programming over the sorted lengths: the cuts that
    minimise padded tokens + ``batch_cost`` per batch. Greedy filling up to the budget
    would make few, wide-ranging batches (13% padding on a few hundred instruction-like
    comparisons at 16k tokens against 3.6% here); this keeps the budget as a memory bound
    only. O(n x rows per batch). Ties keep input order, so the packing is reproducible.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    widths = [lengths[i] for i in order]
    n = len(widths)
    # best[i]: least cost of packing the i longest rows; cut[i]: where its last batch starts.
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(i - 1, -1, -1):
            rows = i - j
            # Sorted longest first, so rows j..i-1 are padded to widths[j]; going further
            # back only widens and lengthens the batch, so the first overflow ends the scan.
            if rows > 1 and (rows * widths[j] > token_budget
                             or (max_rows is not None and rows > max_rows)):
                break
            cost = best[j] + rows * widths[j] + batch_cost
            if cost < best[i]:
                best[i], cut[i] = cost, j
    batches: list[list[int]] = []
    end = n
    while end:
        batches.append(order[cut[end]:end])
        end = cut[end]
    return batches[::-1]


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens the model processes: every row of a batch as long as the batch's longest."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches if b)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of processed tokens that are padding."""
    total = padded_tokens(lengths, batches)
    real = sum(lengths[i] for b in batches for i in b)
    return (total - real) / total if total else 0.0
