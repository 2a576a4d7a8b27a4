"""Which pairs of a request's candidates the ranker compares, and in what order.

Pure Python (no torch). A strategy is a generator: it yields the ordered pairs it needs
next, receives their logits, and returns the candidates it placed at the top, best first
(empty when the aggregation alone orders them). The ranking stage drives every request's
strategy in lock-step, so the comparisons of all requests in a chunk are batched together
even for the sequential strategies, and pairs already stored are never run again.

- ``full``: every ordered pair, n(n-1) comparisons.
- ``half``: each unordered pair once, slot A alternating, n(n-1)/2.
- ``bubble``: one bubble pass from a seeded permutation: the current best meets the next
  candidate, in both orders; n-1 meetings, 2(n-1) comparisons; the pass's winner is first.
- ``topk``: k bubble passes, each finding the best of those not yet placed:
  sum over passes of 2(n-1-p) comparisons, far below n(n-1) for large n and small k.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Mapping, Sequence

from workers.ranking.aggregation import full_pairs, max_logits, max_wins, rank_order

Pair = tuple[int, int]
Plan = Generator[list[Pair], Mapping[Pair, float], list[int]]
Compare = Callable[[dict[int, list[Pair]]], dict[int, dict[Pair, float]]]
STRATEGIES = ("full", "half", "bubble", "topk")
AGGREGATIONS = {"max_logits": max_logits, "max_wins": max_wins}


def plan(strategy: str, n: int, *, seed: int, top_k: int = 1) -> Plan:
    if strategy == "full":
        return _once(full_pairs(n))
    if strategy == "half":
        # Alternate which candidate sits in slot A, so the ranker's position bias does not
        # always favour the same model.
        return _once([(i, j) if (i + j) % 2 else (j, i)
                      for i in range(n) for j in range(i + 1, n)])
    order = list(range(n))
    random.Random(seed).shuffle(order)  # the reference starts bubble from a permutation
    if strategy == "bubble":
        return _passes(order, 1)
    if strategy == "topk":
        return _passes(order, max(1, min(top_k, n)))
    raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")


def _once(pairs: list[Pair]) -> Plan:
    if pairs:
        yield pairs
    return []


def _passes(order: list[int], passes: int) -> Plan:
    placed: list[int] = []
    remaining = list(order)
    for _ in range(passes):
        if not remaining:
            break
        best = remaining[0]
        for challenger in remaining[1:]:
            logits = yield [(best, challenger), (challenger, best)]
            margin = logits[(best, challenger)] - logits[(challenger, best)]
            if margin < 0:
                best = challenger
        placed.append(best)
        remaining.remove(best)
    if len(remaining) == 1:
        placed.append(remaining[0])
    return placed


def final_order(n: int, top: Sequence[int], logits: Mapping[Pair, float], aggregation: str,
                tie_keys: Sequence[str]) -> tuple[list[int], list[float]]:
    """The strategy's placed candidates first, then the rest by aggregated score."""
    scores = AGGREGATIONS[aggregation](n, logits)
    rest = [i for i in rank_order(scores, tie_keys) if i not in top]
    return [*top, *rest], scores


def run_plans(plans: dict[int, Plan], compare: Compare,
              known: Mapping[int, Mapping[Pair, float]] | None = None) -> dict[int, list[int]]:
    """Drive every plan to its end; ``compare`` gets each round's new pairs of all plans.

    ``compare(needs)`` takes {plan key: [pairs]} and returns {plan key: {pair: logit}} for
    at least those pairs. Pairs in ``known`` (stored by an earlier run of the same task)
    or answered before are not asked for again.
    """
    known_now: dict[int, dict[Pair, float]] = {
        key: dict((known or {}).get(key, {})) for key in plans}
    return _drive(plans, compare, known_now)


def _drive(plans: dict[int, Plan], compare: Compare,
           known: dict[int, dict[Pair, float]]) -> dict[int, list[int]]:
    waiting: dict[int, list[Pair]] = {}
    done: dict[int, list[int]] = {}
    for key, steps in plans.items():
        _advance(key, steps, None, known, waiting, done)
    while waiting:
        results = compare({key: [p for p in pairs if p not in known[key]]
                           for key, pairs in waiting.items()})
        current, waiting = waiting, {}
        for key, pairs in current.items():
            known[key].update(results.get(key, {}))
            _advance(key, plans[key], {p: known[key][p] for p in pairs}, known, waiting, done)
    return done


def _advance(key: int, steps: Plan, answer: Mapping[Pair, float] | None,
             known: dict[int, dict[Pair, float]], waiting: dict[int, list[Pair]],
             done: dict[int, list[int]]) -> None:
    try:
        needs = next(steps) if answer is None else steps.send(answer)
        # Answer from what is known already, without a trip to the ranker.
        while all(p in known[key] for p in needs):
            needs = steps.send({p: known[key][p] for p in needs})
        waiting[key] = needs
    except StopIteration as stop:
        done[key] = list(stop.value)
