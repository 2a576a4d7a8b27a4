"""Reference-based metrics for ``jobs evaluate``, one score per (answer, reference), and a
paired bootstrap for differences between systems. Nothing here reads the database.

Every metric is computed per request and a system's figure is the mean over requests,
as LLM-Blender scores MixInstruct candidates: a per-request score is what an oracle
picks by, and what the bootstrap resamples. Scale 0-100 throughout:

- ``bleu``: sacrebleu's sentence BLEU (effective order, so a short answer is not zero
  for lack of 4-grams);
- ``chrf``: sacrebleu's chrF;
- ``rougeL``: rouge-score's ROUGE-L F-measure (stemmed);
- ``bertscore``: bert-score's F1 over a local encoder directory (no hub access), without
  baseline rescaling (the rescale files exist only for hub model names).

An empty answer (a generator that failed on the request) scores 0 on every metric
without being run through a scorer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS = ("bleu", "chrf", "rougeL", "bertscore")


class MetricError(ValueError):
    pass


@dataclass(frozen=True)
class Interval:
    delta: float  # mean of the per-request differences
    low: float
    high: float


def parse_metrics(text: str) -> tuple[str, ...]:
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise MetricError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    return chosen


def _bleu() -> Callable[[list[str], list[str]], list[float]]:
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    return lambda hyps, refs: [bleu.sentence_score(h, [r]).score
                               for h, r in zip(hyps, refs, strict=True)]


def _chrf() -> Callable[[list[str], list[str]], list[float]]:
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    return lambda hyps, refs: [chrf.sentence_score(h, [r]).score
                               for h, r in zip(hyps, refs, strict=True)]


def _rouge() -> Callable[[list[str], list[str]], list[float]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return lambda hyps, refs: [100.0 * scorer.score(r, h)["rougeL"].fmeasure
                               for h, r in zip(hyps, refs, strict=True)]


def bertscore_encoder(path: Path | None) -> Path:
    """The encoder directory BERTScore reads: ``path``, or the demo MiniLM's."""
    if path is None:
        from ops.demo.models import DemoUnavailable, minilm_path

        try:
            path = minilm_path()
        except DemoUnavailable as exc:
            raise MetricError(f"BERTScore needs an encoder: {exc}; or pass "
                              "--bertscore-model DIR, or leave bertscore out of --metrics"
                              ) from exc
    if not (path / "config.json").is_file():
        raise MetricError(f"BERTScore encoder {path}: no config.json (a transformers model "
                          "directory is needed)")
    return path


def _bertscore(path: Path | None, layers: int | None, batch_size: int,
               ) -> Callable[[list[str], list[str]], list[float]]:
    import json

    from bert_score import BERTScorer

    encoder = bertscore_encoder(path)
    if layers is None:
        # bert-score knows layer counts for hub names only; a local path names its own.
        layers = int(json.loads((encoder / "config.json").read_text())["num_hidden_layers"])
    scorer = BERTScorer(model_type=str(encoder), num_layers=layers, device="cpu",
                        batch_size=batch_size)

    def score(hyps: list[str], refs: list[str]) -> list[float]:
        if not hyps:
            return []
        _, _, f1 = scorer.score(hyps, refs, batch_size=batch_size)
        return [100.0 * float(v) for v in f1.tolist()]

    return score


def make_scorers(metrics: Sequence[str], bertscore_model: Path | None = None,
                 bertscore_layers: int | None = None, batch_size: int = 32,
                 ) -> dict[str, Callable[[list[str], list[str]], list[float]]]:
    builders: dict[str, Callable[[], Callable[[list[str], list[str]], list[float]]]] = {
        "bleu": _bleu, "chrf": _chrf, "rougeL": _rouge,
        "bertscore": lambda: _bertscore(bertscore_model, bertscore_layers, batch_size)}
    return {m: builders[m]() for m in metrics}


def score_pairs(scorers: dict[str, Callable[[list[str], list[str]], list[float]]],
                pairs: Sequence[tuple[str, str]]) -> dict[str, list[float]]:
    """Each metric over (answer, reference) pairs, one call per metric so BERTScore
    batches them all; empty answers get 0."""
    live = [i for i, (h, _) in enumerate(pairs) if h.strip()]
    out: dict[str, list[float]] = {}
    for name, scorer in scorers.items():
        values = [0.0] * len(pairs)
        got = scorer([pairs[i][0] for i in live], [pairs[i][1] for i in live])
        for i, v in zip(live, got, strict=True):
            values[i] = float(v)
        out[name] = values
    return out


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def paired_bootstrap(system: Sequence[float], baseline: Sequence[float], samples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> Interval | None:
    """Percentile interval of mean(system - baseline) over requests resampled with
    replacement (the pairing keeps each request's difficulty out of the interval).
    None with fewer than two requests."""
    import numpy as np

    if len(system) != len(baseline):
        raise ValueError(f"{len(system)} values against {len(baseline)}")
    if len(system) < 2:
        return None
    diff = np.asarray(system, dtype=float) - np.asarray(baseline, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(diff.mean()), float(low), float(high))


def as_dict(interval: Interval | None) -> dict[str, Any] | None:
    if interval is None:
        return None
    return {"delta": interval.delta, "low": interval.low, "high": interval.high}
