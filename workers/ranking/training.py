"""Fine-tuning a PairRanker on pairwise preferences (``manage.py ranker train``).

Input JSONL, any mix of:

- ``audit export --format pairs`` lines: ``{"source", "candidate_a", "candidate_b",
  "label"}``, label 1.0 (A better) or 0.0 (B better); ties and unlabelled lines skipped;
- plain pairs: ``{"source" | "instruction"+"input", "chosen", "rejected"}``;
- MixInstruct lines (``{"instruction", "input", "candidates": [{"text", "scores"}]}``):
  ``pairs_per_example`` random pairs whose reference scores differ, as the reference
  trainer samples (5 by default; scores chosen as in ``evaluation``).

Loss, as PairRM's ``instructgpt`` loss: ``-log sigmoid(d * (left - right))`` with d = +1
when the first candidate is better. Every pair is trained in both slot orders (d flips),
so the ranker does not learn the position of the better answer. AdamW, lr 1e-5 by default.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from workers.ranking.evaluation import json_objects, pair_texts, reference_score, source_of

if TYPE_CHECKING:
    import torch


class PairModel(Protocol):
    """What ``train`` needs: ``PairRanker``, or any model that turns (source, first,
    second) into a logit of first over second (a pointwise baseline scores each alone)."""

    backbone: Any
    head_layer: Any
    device: str

    def encode(self, source: str, cand_a: str, cand_b: str) -> Any: ...

    def logits_tensor(self, batch: list[Any]) -> torch.Tensor: ...


@dataclass(frozen=True)
class TrainPair:
    source: str
    better: str
    worse: str


def parse_pairs(lines: Iterable[str], metric: str | None = None, pairs_per_example: int = 5,
                seed: int = 0) -> list[TrainPair]:
    rng = random.Random(seed)
    out: list[TrainPair] = []
    for number, line in json_objects(lines):
        source = source_of(line)
        if "chosen" in line and "rejected" in line:
            out.append(TrainPair(source, str(line["chosen"]), str(line["rejected"])))
        elif "candidate_a" in line:
            a, b = pair_texts(number, line)
            if line.get("label") in (1, 1.0):
                out.append(TrainPair(source, a, b))
            elif line.get("label") in (0, 0.0):
                out.append(TrainPair(source, b, a))
        elif "candidates" in line:
            scored = [(str(c.get("text", "")), reference_score(c, metric))
                      for c in line["candidates"] if isinstance(c, dict)]
            usable = [(t, s) for t, s in scored if s is not None]
            options = [(x, y) for x, y in combinations(usable, 2) if x[1] != y[1]]
            for (ta, sa), (tb, sb) in rng.sample(options, min(pairs_per_example,
                                                               len(options))):
                assert sa is not None and sb is not None
                out.append(TrainPair(source, ta, tb) if sa > sb else TrainPair(source, tb, ta))
        else:
            raise ValueError(f"line {number}: no chosen/rejected, candidate_a or candidates")
    return out


def load_pairs(path: Path, metric: str | None = None, pairs_per_example: int = 5,
               seed: int = 0) -> list[TrainPair]:
    with path.open(encoding="utf-8") as handle:
        return parse_pairs(handle, metric, pairs_per_example, seed)


def train(ranker: PairModel, pairs: list[TrainPair], epochs: int = 1, lr: float = 1e-5,
          batch_size: int = 8, seed: int = 0,
          progress: Callable[[int, float], None] | None = None,
          head_lr: float | None = None, freeze: Sequence[str] = (),
          warmup: float | None = None,
          on_step: Callable[[int, int], None] | None = None) -> list[float]:
    """Fine-tune in place; returns the mean loss of each epoch.

    ``head_lr`` (default ``lr``): a freshly initialised head needs a far larger step than
    the pretrained backbone. ``freeze``: prefixes of backbone parameter names kept fixed
    (``embeddings.``, ``encoder.layer.0.`` ...): on a CPU the embedding table's dense
    gradient and update cost more than the rest of a small encoder, and no backward pass
    runs below the lowest trained layer.
    ``warmup``: None keeps the rate constant (gentle further training of a trained
    ranker); a fraction of the steps warms it up linearly and it then decays linearly to
    zero, which lets a short run from a fresh head use a large rate without diverging.
    ``on_step(step, total_steps)`` runs after each optimizer step (a learning curve
    measures the model there); training mode is restored after it.
    """
    import torch

    if not pairs:
        raise ValueError("no training pairs")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    # (source, first, second, d): both slot orders of every pair.
    rows = [(p.source, p.better, p.worse, 1.0) for p in pairs] + \
           [(p.source, p.worse, p.better, -1.0) for p in pairs]
    named = list(ranker.backbone.named_parameters())
    trainable = {n: p.requires_grad for n, p in named}
    backbone = [p for n, p in named if not n.startswith(tuple(freeze))]
    optimizer = torch.optim.AdamW([
        {"params": backbone, "lr": lr},
        {"params": list(ranker.head_layer.parameters()),
         "lr": lr if head_lr is None else head_lr}])
    for n, p in named:
        p.requires_grad_(not n.startswith(tuple(freeze)))
    total_steps = epochs * math.ceil(len(rows) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _rate(step, total_steps, warmup))
    ranker.backbone.train()
    ranker.head_layer.train()
    losses: list[float] = []
    try:
        for epoch in range(epochs):
            rng.shuffle(rows)
            total = 0.0
            for start in range(0, len(rows), batch_size):
                batch = rows[start:start + batch_size]
                encoded = [ranker.encode(s, a, b) for s, a, b, _ in batch]
                d = torch.tensor([r[3] for r in batch], device=ranker.device)
                logits = ranker.logits_tensor(encoded).float()
                loss = -torch.nn.functional.logsigmoid(d * logits).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(batch)
                if on_step is not None:
                    on_step(scheduler.last_epoch, total_steps)
                    ranker.backbone.train()
                    ranker.head_layer.train()
            losses.append(total / len(rows))
            if progress is not None:
                progress(epoch + 1, losses[-1])
    finally:
        ranker.backbone.eval()
        ranker.head_layer.eval()
        for n, p in named:
            p.requires_grad_(trainable[n])
    return losses


def _rate(step: int, total: int, warmup: float | None) -> float:
    if warmup is None:
        return 1.0
    ramp = max(1, round(total * warmup))
    if step < ramp:
        return (step + 1) / ramp
    return max(0.0, (total - step) / max(1, total - ramp))
