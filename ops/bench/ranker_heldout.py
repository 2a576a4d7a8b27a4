"""The hand-written held-out set of the ranker quality report (``data/ranker_heldout.jsonl``).

84 prompts written by hand, of kinds the demo recipe never generates (explanations,
history, how-to, code, definitions, story problems, summaries and extraction, writing
tasks, advice, nature, language, the arts), each with four answers in four quality
levels: ``correct``; ``one_flaw`` (right but for one real error: a wrong date or number,
a bug, a harmful step); ``fluent_wrong`` (well written, confident and wrong); and
``off_topic`` or ``cut_off`` (about something else, or stopped before the substance).
Each candidate carries ``scores.quality`` 3, 2, 1, 0, so ``ranker eval`` reads the file
as it is; the order of the four is shuffled per prompt.

Measured here: pairwise accuracy over every pair of different levels (both orders run),
top-1 (the correct answer ranked first by max_logits; chance 0.25), and accuracy per
kind of pair.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.ranking.aggregation import full_pairs, max_logits, rank_order
from workers.ranking.evaluation import Comparer, source_of

HELDOUT = Path(__file__).parent / "data" / "ranker_heldout.jsonl"
LEVELS = {"correct": 3, "one_flaw": 2, "fluent_wrong": 1, "off_topic": 0, "cut_off": 0}
# The pair kinds reported apart: what the correct answer is measured against.
VERSUS = ("one_flaw", "fluent_wrong", "off_topic", "cut_off")


@dataclass(frozen=True)
class Graded:
    id: str
    kind: str
    source: str
    texts: tuple[str, ...]
    levels: tuple[str, ...]

    def quality(self, i: int) -> int:
        return LEVELS[self.levels[i]]


def load(path: Path = HELDOUT) -> list[Graded]:
    items = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        line = json.loads(raw)
        cands = line["candidates"]
        levels = tuple(c["level"] for c in cands)
        unknown = set(levels) - set(LEVELS)
        if unknown or sorted(LEVELS[x] for x in levels) != [0, 1, 2, 3]:
            raise ValueError(f"{path.name} line {number}: levels {levels}: need one each of "
                             "correct, one_flaw, fluent_wrong, off_topic|cut_off")
        items.append(Graded(line["id"], line["kind"], source_of(line),
                            tuple(c["text"] for c in cands), levels))
    return items


def measure(model: Comparer, items: Sequence[Graded]) -> dict[str, Any]:
    """Every ordered pair of each prompt's answers in one ``compare`` call."""
    asked = [(it.source, it.texts[i], it.texts[j])
             for it in items for i, j in full_pairs(len(it.texts))]
    logits = iter(model.compare(asked) if asked else [])
    every: list[float] = []
    versus: dict[str, list[float]] = {k: [] for k in VERSUS}
    top1: list[float] = []
    for it in items:
        n = len(it.texts)
        m = {pair: next(logits) for pair in full_pairs(n)}
        for i in range(n):
            for j in range(n):
                if it.quality(i) <= it.quality(j):
                    continue
                pref = m[(i, j)] - m[(j, i)]
                agree = 0.5 if pref == 0 else float(pref > 0)
                every.append(agree)
                if it.levels[i] == "correct":
                    versus[it.levels[j]].append(agree)
        best = rank_order(max_logits(n, m), [f"{i:06d}" for i in range(n)])[0]
        top1.append(float(it.levels[best] == "correct"))
    return {"prompts": len(items), "pairs": len(every), "accuracy": _mean(every),
            "top1": _mean(top1),
            **{f"correct_vs_{k}": _mean(v) for k, v in versus.items()}}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
