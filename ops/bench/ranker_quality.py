"""Held-out accuracy of the demo ranker against a random ranker, the untrained MiniLM
PairRanker and a pointwise baseline, from one run.

    python -m ops.bench.ranker_quality                   # trains both models (minutes on a CPU)
    python -m ops.bench.ranker_quality --ranker-path DIR # an installed demo ranker instead
    python -m ops.bench.ranker_quality --json

Data: ``ops/demo/ranker_data.py`` through the recipe ``DEMO_RANKER``
(``ops/demo/models.py``), so the prompts held out here are those the installed demo
ranker never trained on. The PairRanker and the pointwise scorer start from the same
MiniLM weights and train on the same pairs with the same loss, optimizer, schedule and
steps (``training.train``); only the pairwise model reads both candidates at once.

Reported per model: pairwise accuracy over every right-wrong pair of the held-out
prompts (both orders run, as ``ranker eval`` does), split into generic failures (no
answer, restated question, truncated, repetition, another question's answer) and each
family's own mistakes (off by one, wrong operation, flipped comparison, wrong capital,
...); top-1 (a right answer ranked first by max_logits); the same pairwise accuracy on
the family no model trained on.

And on the hand-written held-out set (``ops/bench/ranker_heldout.py``: 84 prompts of kinds
the recipe never writes, four answers each: correct, one flaw, fluent but wrong,
off-topic or cut off): pairwise accuracy over pairs of different levels, top-1 (the
correct answer first) and the correct answer against each other level. The targets are
pairwise >= 0.70, top-1 >= 0.45 and the PairRanker at least the pointwise baseline.
``--curve N`` measures both trained models on it N times during training (accuracy
against steps and pairs seen), to show where more training stops paying.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ops.bench import ranker_heldout
from ops.bench.ranker_pointwise import PointwiseScorer, RandomComparer
from ops.demo.models import (
    DEMO_RANKER,
    RankerRecipe,
    minilm_ranker,
    spare_cpu_threads,
    train_minilm_ranker,
)
from ops.demo.ranker_data import GENERIC_KINDS, Prompt, train_pairs
from workers.ranking.aggregation import full_pairs, max_logits, rank_order
from workers.ranking.evaluation import Comparer


def measure(model: Comparer, prompts: Sequence[Prompt]) -> dict[str, Any]:
    """Every ordered pair of each prompt's candidates in one ``compare`` call."""
    asked = [(p.source, p.candidates[i].text, p.candidates[j].text)
             for p in prompts for i, j in full_pairs(len(p.candidates))]
    logits = iter(model.compare(asked) if asked else [])
    outcome: dict[str, list[float]] = {"generic": [], "own": []}
    top1: list[float] = []
    for p in prompts:
        n = len(p.candidates)
        m = {pair: next(logits) for pair in full_pairs(n)}
        for i, right in enumerate(p.candidates):
            for j, wrong in enumerate(p.candidates):
                if p.is_correct(right) and not p.is_correct(wrong):
                    pref = m[(i, j)] - m[(j, i)]
                    agree = 0.5 if pref == 0 else float(pref > 0)
                    outcome["generic" if wrong.kind in GENERIC_KINDS else "own"].append(agree)
        best = rank_order(max_logits(n, m), [f"{i:06d}" for i in range(n)])[0]
        top1.append(float(p.is_correct(p.candidates[best])))
    every = outcome["generic"] + outcome["own"]
    return {"prompts": len(prompts), "pairs": len(every), "accuracy": _mean(every),
            "generic": _mean(outcome["generic"]), "own_mistakes": _mean(outcome["own"]),
            "top1": _mean(top1)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Curve:
    """Hand-written held-out figures at ``points`` evenly spaced steps of a training run;
    the time spent measuring is kept apart from the training time."""

    def __init__(self, points: int, items: Sequence[ranker_heldout.Graded],
                 batch_size: int, log: Any = None) -> None:
        self.points, self.items, self.batch_size = points, items, batch_size
        self.log = log
        self.rows: list[dict[str, Any]] = []
        self.seconds = 0.0

    def __call__(self, model: Comparer, step: int, total: int) -> None:
        marks = {round(total * k / self.points) for k in range(1, self.points + 1)}
        if self.points <= 0 or step not in marks:
            return
        started = time.perf_counter()
        figures = ranker_heldout.measure(model, self.items)
        self.rows.append({"step": step, "pairs_seen": step * self.batch_size,
                          "accuracy": figures["accuracy"], "top1": figures["top1"]})
        self.seconds += time.perf_counter() - started
        if self.log is not None:
            self.log(f"  step {step}/{total}: hand-written pairwise "
                     f"{figures['accuracy']:.3f}, top-1 {figures['top1']:.3f}")


def report(recipe: RankerRecipe = DEMO_RANKER, ranker_path: Path | None = None,
           limit: int | None = None, log: Any = print, curve_points: int = 0,
           pointwise: bool = True, pairranker: bool = True) -> dict[str, Any]:
    """Train (or load) each model, then measure all of them on the same held-out sets;
    ``limit`` caps how many held-out prompts of each generated set are used."""
    from workers.ranking.pairranker import PairRanker
    from workers.ranking.training import train

    handwritten = ranker_heldout.load()
    train_prompts, test, unseen = recipe.data()
    test, unseen = test[:limit], unseen[:limit]
    curves: dict[str, list[dict[str, Any]]] = {}
    models: list[tuple[str, Comparer, float | None]] = [
        ("random", RandomComparer(recipe.seed), None),
        ("untrained PairRanker (random head)",
         minilm_ranker(recipe.seed, recipe.candidate_attention), None)]

    pairs = train_pairs(train_prompts, recipe.pairs_per_prompt, recipe.seed)
    if pointwise:
        base = minilm_ranker(recipe.seed)
        scorer = PointwiseScorer(base.backbone, base.tokenizer, base.source_maxlength,
                                 base.candidate_maxlength)
        log(f"training the pointwise baseline on {len(pairs)} pairs")
        point_curve = Curve(curve_points, handwritten, recipe.batch_size, log)
        started = time.perf_counter()
        with spare_cpu_threads():
            train(scorer, pairs, epochs=recipe.epochs, lr=recipe.lr,
                  batch_size=recipe.batch_size, seed=recipe.seed, head_lr=recipe.head_lr,
                  freeze=recipe.freeze, warmup=recipe.warmup,
                  on_step=lambda step, total: point_curve(scorer, step, total))
        models.append(("pointwise (same backbone, head, pairs)", scorer,
                       time.perf_counter() - started - point_curve.seconds))
        if curve_points:
            curves["pointwise"] = point_curve.rows

    if ranker_path is not None:
        stats_file = ranker_path / "demo_training.json"
        seconds = json.loads(stats_file.read_text())["seconds"] if stats_file.is_file() \
            else None  # when install-demo trained it, it wrote down how long that took
        models.append((f"PairRanker ({ranker_path.name})",
                       PairRanker.from_pretrained(str(ranker_path), device="cpu"), seconds))
    elif pairranker:
        log(f"training the PairRanker on {len(pairs)} pairs")
        pair_curve = Curve(curve_points, handwritten, recipe.batch_size, log)
        ranker, stats = train_minilm_ranker(recipe, on_step=pair_curve)
        models.append(("PairRanker (the demo ranker)", ranker,
                       stats["seconds"] - pair_curve.seconds))
        if curve_points:
            curves["PairRanker"] = pair_curve.rows

    rows = []
    for name, model, seconds in models:
        log(f"measuring {name}")
        with spare_cpu_threads():
            rows.append({"model": name, "train_seconds": seconds,
                         "heldout": measure(model, test),
                         "unseen_family": measure(model, unseen),
                         "handwritten": ranker_heldout.measure(model, handwritten)})
    return {"recipe": asdict(recipe),
            "train_prompts": len(train_prompts), "train_pairs": len(pairs), "models": rows,
            "curves": curves}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(result: dict[str, Any]) -> None:
    first = result["models"][0]
    print(f"training: {result['train_prompts']} prompts, {result['train_pairs']} right-wrong "
          f"pairs; held out: {first['heldout']['prompts']} prompts of the trained families "
          f"({first['heldout']['pairs']} pairs), {first['unseen_family']['prompts']} of the "
          f"unseen family '{result['recipe']['heldout_family']}' "
          f"({first['unseen_family']['pairs']} pairs)")
    header = (f"{'model':<40} {'train s':>7} {'held-out':>8} {'generic':>7} {'own':>6} "
              f"{'top-1':>6} {'unseen':>7}")
    print(header)
    print("-" * len(header))
    for row in result["models"]:
        h, u = row["heldout"], row["unseen_family"]
        seconds = "-" if row["train_seconds"] is None else f"{row['train_seconds']:.0f}"
        print(f"{row['model']:<40} {seconds:>7} {_fmt(h['accuracy']):>8} "
              f"{_fmt(h['generic']):>7} {_fmt(h['own_mistakes']):>6} {_fmt(h['top1']):>6} "
              f"{_fmt(u['accuracy']):>7}")
    print("held-out/unseen: pairwise accuracy over right-wrong pairs; generic/own: held-out "
          "pairs whose wrong answer is a generic failure / the family's own mistake; top-1: "
          "a right answer ranked first")
    hand = first["handwritten"]
    print(f"\nhand-written held-out set: {hand['prompts']} prompts, {hand['pairs']} pairs of "
          "different quality (targets: pairwise >= 0.70, top-1 >= 0.45)")
    header = (f"{'model':<40} {'pairwise':>8} {'top-1':>6} {'vs flaw':>7} {'vs wrong':>8} "
              f"{'vs off':>6} {'vs cut':>6}")
    print(header)
    print("-" * len(header))
    for row in result["models"]:
        h = row["handwritten"]
        print(f"{row['model']:<40} {_fmt(h['accuracy']):>8} {_fmt(h['top1']):>6} "
              f"{_fmt(h['correct_vs_one_flaw']):>7} {_fmt(h['correct_vs_fluent_wrong']):>8} "
              f"{_fmt(h['correct_vs_off_topic']):>6} {_fmt(h['correct_vs_cut_off']):>6}")
    print("vs X: the correct answer preferred to the answer with one flaw / fluent but wrong "
          "/ off-topic / cut off")
    for name, points in result.get("curves", {}).items():
        print(f"\ncurve, {name}: step, pairs seen, hand-written pairwise, top-1")
        for p in points:
            print(f"  {p['step']:>5} {p['pairs_seen']:>6} {_fmt(p['accuracy'])} "
                  f"{_fmt(p['top1'])}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranker-path", type=Path,
                        help="measure this PairRanker checkpoint instead of training one")
    parser.add_argument("--limit", type=int, help="held-out prompts per set (default: all)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--curve", type=int, default=0, metavar="N",
                        help="measure both trained models on the hand-written set N times "
                             "during training")
    parser.add_argument("--skip-pointwise", action="store_true",
                        help="train and measure the PairRanker only (while iterating)")
    parser.add_argument("--skip-pairranker", action="store_true",
                        help="train and measure the pointwise baseline only (while iterating)")
    parser.add_argument("--recipe", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a field of the DEMO_RANKER recipe (JSON value), e.g. "
                             "--recipe prompts=400 --recipe pairs_per_prompt=5")
    args = parser.parse_args(argv)
    log = (lambda message: None) if args.json else print
    recipe = dataclasses.replace(DEMO_RANKER, **_overrides(args.recipe, parser))
    result = report(recipe, args.ranker_path, args.limit, log, args.curve,
                    pointwise=not args.skip_pointwise, pairranker=not args.skip_pairranker)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


def _overrides(items: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(RankerRecipe)}
    out: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in fields:
            parser.error(f"--recipe {item}: no field {name!r}; fields: {sorted(fields)}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a bare string, such as a family name
        out[name] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


if __name__ == "__main__":
    main()
