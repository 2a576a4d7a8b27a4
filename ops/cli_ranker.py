"""``manage.py ranker``: evaluate and fine-tune the pairwise ranker offline.

    python manage.py ranker eval data.jsonl --ranker tiny-ranker
    python manage.py ranker train pairs.jsonl --ranker tiny-ranker -o /models/ranker-v2
    python manage.py ranker train pairs.jsonl -o /models/ranker-v3 --register ranker-v3 --default
    python manage.py ranker eval data.jsonl --path /models/ranker-v2
    python manage.py ranker demo-data -o demo/     # the demo ranker's generated data

File layouts: ``workers/ranking/evaluation.py`` and ``workers/ranking/training.py``
(the outputs of ``audit export`` are read as they are).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ops import context
from ops.cli_models import (
    check_register_flags,
    check_registrable,
    register_options,
    register_trained,
)
from orchestration.registry import ModelEntry


@click.group()
def ranker() -> None:
    """Evaluate and fine-tune the pairwise ranker (PairRM layout checkpoints)."""


def _entry(name: str | None, path: Path | None) -> ModelEntry | None:
    """The registry ranker trained or evaluated, or None for a checkpoint ``path``."""
    if path is not None:
        return None
    registry = context.registry(context.settings())
    entry = registry.get(name, "ranker") if name else registry.default("ranker")
    if entry is None:
        raise click.ClickException("the registry names no default ranker; pass --ranker")
    return entry


def _load(name: str | None, path: Path | None, device: str | None) -> Any:
    from workers.model_store import resolve_path
    from workers.ranking.pairranker import PairRanker

    entry = _entry(name, path)
    weights = str(path) if entry is None else resolve_path(entry, context.settings())
    return PairRanker.from_pretrained(weights, device=device)


_source = [
    click.option("--ranker", "name", help="Registry ranker (default: the default ranker)."),
    click.option("--path", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 help="A checkpoint directory instead of a registry entry."),
    click.option("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)."),
    click.option("--metric", help="Which candidate score is the reference (MixInstruct "
                                  "lines; default: the first that is not the ranker's)."),
]


def _with_source(fn: Any) -> Any:
    for option in reversed(_source):
        fn = option(fn)
    return fn


@ranker.command("eval")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_with_source
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eval_cmd(file: Path, name: str | None, path: Path | None, device: str | None,
             metric: str | None, as_json: bool) -> None:
    """Pairwise accuracy, top-1 agreement, Spearman and Pearson against FILE's references."""
    from workers.ranking.evaluation import evaluate, load

    try:
        lists, pairs = load(file, metric)
    except ValueError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    if not lists and not pairs:
        raise click.ClickException(f"{file}: nothing to evaluate (no scored lists or "
                                   "labelled pairs)")
    model = _load(name, path, device)
    result = {"revision": model.revision, **evaluate(model, lists, pairs)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        click.echo(f"{key:<18} {shown}")


@ranker.command("train")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_with_source
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Where the new checkpoint (PairRM layout) is written.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=1e-5, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--pairs-per-example", type=int, default=5, show_default=True,
              help="Pairs drawn from each MixInstruct line.")
@click.option("--head-lr", type=float, help="Learning rate of the head (default: --lr).")
@click.option("--warmup", type=float, help="Warm up over this fraction of the steps, then "
                                           "decay linearly (default: a constant rate).")
@click.option("--seed", type=int, default=0, show_default=True)
@register_options("ranker")
def train_cmd(file: Path, name: str | None, path: Path | None, device: str | None,
              metric: str | None, output: Path, epochs: int, lr: float, batch_size: int,
              pairs_per_example: int, head_lr: float | None, warmup: float | None,
              seed: int, register_as: str | None, is_default: bool, replace: bool) -> None:
    """Fine-tune on FILE's preferences and save a new revision to OUTPUT."""
    from workers.devices import weights_revision
    from workers.ranking.training import load_pairs, train

    check_register_flags(register_as, is_default, replace)
    if output.exists() and any(output.iterdir()):
        raise click.ClickException(f"{output} is not empty; choose a new directory")
    try:
        pairs = load_pairs(file, metric, pairs_per_example, seed)
    except ValueError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    if not pairs:
        raise click.ClickException(f"{file}: no labelled pairs to train on")
    entry = _entry(name, path)
    new_entry = {"role": "ranker", "backend": entry.backend if entry else "pairranker",
                 "path": str(output.resolve()), "params": dict(entry.params) if entry else {}}
    if register_as:
        check_registrable(context.settings(), register_as, replace, new_entry)
    model = _load(name, path, device)
    start = model.revision
    train(model, pairs, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
          head_lr=head_lr, warmup=warmup,
          progress=lambda e, loss: click.echo(f"epoch {e}: loss {loss:.4f}", err=True))
    model.save_pretrained(output)
    revision = weights_revision(output / "model.safetensors")
    click.echo(f"{len(pairs)} pairs, from revision {start}: new revision {revision} "
               f"in {output}")
    if register_as is None:
        click.echo("register it with a registry entry: role = \"ranker\", backend = "
                   f"\"{new_entry['backend']}\", path = \"{output.resolve()}\" (or "
                   "--register NAME)", err=True)
        return
    register_trained(context.settings(), register_as, new_entry, revision, is_default, replace)


@ranker.command("demo-data")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Directory for train.jsonl, heldout.jsonl, unseen.jsonl.")
def demo_data_cmd(output: Path) -> None:
    """Write the demo ranker's generated data (recipe DEMO_RANKER) as files that
    ``ranker train`` and ``ranker eval`` read: training pairs (chosen/rejected), and the
    held-out prompts and the unseen family as candidate lists scored correct 1 or 0 and
    by quality level 3..0 (``--metric quality``)."""
    from ops.demo.models import DEMO_RANKER
    from ops.demo.ranker_data import train_pairs

    train_prompts, heldout, unseen = DEMO_RANKER.data()
    output.mkdir(parents=True, exist_ok=True)
    pairs = train_pairs(train_prompts, DEMO_RANKER.pairs_per_prompt, DEMO_RANKER.seed)
    _write_jsonl(output / "train.jsonl", [
        {"source": p.source, "chosen": p.better, "rejected": p.worse} for p in pairs])
    for name, prompts in (("heldout", heldout), ("unseen", unseen)):
        _write_jsonl(output / f"{name}.jsonl", [
            {"source": p.source, "family": p.family, "answer": p.answer,
             "candidates": [{"text": c.text, "kind": c.kind,
                             "scores": {"correct": float(p.is_correct(c)),
                                        "quality": float(p.quality(c))}}
                            for c in p.candidates]} for p in prompts])
    click.echo(f"{len(pairs)} training pairs, {len(heldout)} held-out prompts, "
               f"{len(unseen)} of the unseen family {DEMO_RANKER.heldout_family!r} "
               f"in {output}")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
