"""How well a ranker agrees with reference judgements (``manage.py ranker eval``).

Input: JSONL, two kinds of line, mixed freely:

- listwise, the MixInstruct layout that ``audit export --format mixinstruct`` writes:
  ``{"instruction", "input", "candidates": [{"text", "scores": {metric: value}}]}``
  (higher is better; a bare ``"score"``, or ``"rank"`` with 1 best, works too);
- pairwise, the layout of ``audit export --format pairs``: ``{"source", "candidate_a",
  "candidate_b", "label"}`` with label 1.0 (A better) or 0.0 (B better); ties and
  unlabelled pairs are skipped.

Metrics: pairwise accuracy (every pair with a clear reference preference, both orders
run, the ranker's preference is logit(A,B) - logit(B,A)); top-1 agreement (the ranker's
best is one of the reference's best); Spearman and Pearson correlation of the ranker's
max_logits scores with the reference, per list, averaged over lists where defined.
Correlations are computed here: scipy is not a dependency.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from workers.ranking.aggregation import full_pairs, max_logits, rank_order


class Comparer(Protocol):
    def compare(self, pairs: list[tuple[str, str, str]]) -> list[float]: ...


@dataclass(frozen=True)
class ListExample:
    source: str
    candidates: list[str]
    reference: list[float]  # higher is better


@dataclass(frozen=True)
class PairExample:
    source: str
    a: str
    b: str
    a_better: bool


def json_objects(lines: Iterable[str], error: type[ValueError] = ValueError,
                 ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each non-blank line's JSON object with its 1-based number; a line that is not JSON,
    or not an object, raises ``error`` naming it."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise error(f"line {number}: not JSON: {exc}") from exc
        if not isinstance(line, dict):
            raise error(f"line {number}: not a JSON object")
        yield number, line


def pair_texts(number: int, line: dict[str, Any]) -> tuple[str, str]:
    """A pairwise line's two candidates; one missing is an error naming the line."""
    if "candidate_b" not in line:
        raise ValueError(f"line {number}: 'candidate_a' without 'candidate_b'")
    return str(line["candidate_a"]), str(line["candidate_b"])


def source_of(line: dict[str, Any]) -> str:
    """What the ranker reads as the prompt, as the ranking stage builds it."""
    if "source" in line:
        return str(line["source"])
    instruction, given = str(line.get("instruction", "")), str(line.get("input") or "")
    return f"{instruction}\n{given}" if given else instruction


def reference_score(candidate: dict[str, Any], metric: str | None) -> float | None:
    scores = candidate.get("scores") or {}
    if metric is not None:
        value = scores.get(metric, candidate.get(metric))
    elif "score" in candidate:
        value = candidate["score"]
    elif "rank" in candidate:
        value = -float(candidate["rank"])
    else:
        # No metric named: the first of the line's scores that is not the ranker's own.
        names = [k for k in scores if k not in ("ranker", "ranker_rank")]
        value = scores[names[0]] if names else None
    return None if value is None else float(value)


def parse_lines(lines: Iterable[str], metric: str | None = None,
                ) -> tuple[list[ListExample], list[PairExample]]:
    lists: list[ListExample] = []
    pairs: list[PairExample] = []
    for number, line in json_objects(lines):
        if "candidates" in line:
            cands = [c for c in line["candidates"] if isinstance(c, dict)]
            refs = [reference_score(c, metric) for c in cands]
            kept = [(str(c.get("text", "")), r) for c, r in zip(cands, refs, strict=True)
                    if r is not None]
            if len(kept) >= 2:
                lists.append(ListExample(source_of(line), [t for t, _ in kept],
                                         [r for _, r in kept]))
        elif "candidate_a" in line:
            a, b = pair_texts(number, line)
            if line.get("label") in (0, 1, 0.0, 1.0):
                pairs.append(PairExample(source_of(line), a, b, line["label"] == 1))
        else:
            raise ValueError(f"line {number}: neither 'candidates' nor 'candidate_a'")
    return lists, pairs


def load(path: Path, metric: str | None = None) -> tuple[list[ListExample], list[PairExample]]:
    with path.open(encoding="utf-8") as handle:
        return parse_lines(handle, metric)


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ascending; tied values share the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """None where undefined (fewer than two values, or either side constant)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    if len(x) < 2:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    return pearson(average_ranks(x), average_ranks(y))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate(ranker: Comparer, lists: Sequence[ListExample],
             pairs: Sequence[PairExample]) -> dict[str, Any]:
    """Every needed comparison in one ``compare`` call, so the ranker batches them all."""
    asked: list[tuple[str, str, str]] = []
    for ex in lists:
        asked += [(ex.source, ex.candidates[i], ex.candidates[j])
                  for i, j in full_pairs(len(ex.candidates))]
    for p in pairs:
        asked += [(p.source, p.a, p.b), (p.source, p.b, p.a)]
    logits = iter(ranker.compare(asked) if asked else [])
    correct = 0.0
    judged = 0
    top1: list[float] = []
    rhos: list[float] = []
    rs: list[float] = []
    for ex in lists:
        n = len(ex.candidates)
        m = {pair: next(logits) for pair in full_pairs(n)}
        scores = max_logits(n, m)
        for i in range(n):
            for j in range(i + 1, n):
                if ex.reference[i] == ex.reference[j]:
                    continue
                judged += 1
                correct += _agree(m[(i, j)] - m[(j, i)], ex.reference[i] > ex.reference[j])
        best = rank_order(scores, [f"{i:06d}" for i in range(n)])[0]
        top1.append(1.0 if ex.reference[best] == max(ex.reference) else 0.0)
        for fn, out in ((spearman, rhos), (pearson, rs)):
            value = fn(scores, ex.reference)
            if value is not None:
                out.append(value)
    for p in pairs:
        ab, ba = next(logits), next(logits)
        judged += 1
        correct += _agree(ab - ba, p.a_better)
    return {"lists": len(lists), "pairs": len(pairs), "judged_pairs": judged,
            "pairwise_accuracy": correct / judged if judged else None,
            "top1_agreement": _mean(top1), "spearman": _mean(rhos), "pearson": _mean(rs)}


def _agree(preference: float, first_better: bool) -> float:
    """1 when the ranker prefers the better one, 0 when the worse, 0.5 on an exact tie."""
    if preference == 0:
        return 0.5
    return 1.0 if (preference > 0) == first_better else 0.0
