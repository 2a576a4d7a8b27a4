"""``manage.py fuser``: fine-tune the fuser on stored jobs.

    python manage.py fuser train JOB [JOB...] --fuser tiny-fuser -o /models/fuser-v2 \\
        --references refs.jsonl --register tiny-fuser-v2 --default

Examples, targets and the loss: ``workers/fusion/training.py``. References are the file
``jobs evaluate --references`` reads (``ops/eval_job.py``).
"""

from __future__ import annotations

from collections import Counter
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
from ops.eval_job import EvaluationError, load_references
from orchestration.registry import ModelEntry, RegistryError
from orchestration.settings import Settings

BACKENDS = ("genfuser", "aggregator")


@click.group()
def fuser() -> None:
    """Fine-tune the fuser (GenFuser seq2seq or aggregator causal LM) on stored jobs."""


def _source_entry(settings: Settings, name: str | None) -> ModelEntry:
    registry = context.registry(settings)
    try:
        entry = registry.get(name, "fuser") if name else registry.default("fuser")
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if entry is None:
        raise click.ClickException("the registry names no default fuser; pass --fuser")
    if entry.backend not in BACKENDS:
        raise click.ClickException(f"fuser {entry.name!r} has backend {entry.backend!r}; "
                                   f"only {' and '.join(BACKENDS)} fusers can be trained")
    return entry


def _backend_of(path: Path) -> str:
    """A checkpoint directory's backend: a seq2seq model is a GenFuser."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    return "genfuser" if getattr(config, "is_encoder_decoder", False) else "aggregator"


def _load(backend: str, path: str) -> Any:
    if backend == "genfuser":
        from workers.fusion.genfuser import GenFuser

        return GenFuser.from_pretrained(path)
    from workers.fusion.aggregator import AggregatorFuser

    return AggregatorFuser(path)


@fuser.command("train")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--references", "references_file",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL: custom_id + reference per line (or MixInstruct id + output), as "
                   "`jobs evaluate` reads; requests without one train on the best "
                   "labelled candidate.")
@click.option("--fuser", "name", help="Registry fuser (default: the default fuser).")
@click.option("--path", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A checkpoint directory instead of a registry entry.")
@click.option("--device", help="cpu, cuda, cuda:1 … (default: cuda when available).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Where the new checkpoint is written.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=1e-5, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--warmup", type=float, help="Warm up over this fraction of the steps, then "
                                           "decay linearly (default: a constant rate).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1),
              help="Candidates per example (default: each job's own top_k).")
@click.option("--max-target-tokens", type=click.IntRange(min=1), default=128,
              show_default=True, help="Targets are cut to this many tokens.")
@register_options("fuser")
def train_cmd(job_ids: tuple[str, ...], references_file: Path | None, name: str | None,
              path: Path | None, device: str | None, output: Path, epochs: int, lr: float,
              batch_size: int, warmup: float | None, seed: int, top_k: int | None,
              max_target_tokens: int, register_as: str | None, is_default: bool,
              replace: bool) -> None:
    """Fine-tune on JOB_IDS' stored requests (the top-K candidates in rank order → the
    reference, or the best labelled candidate) and save a new revision to OUTPUT."""
    from db.engine import session_scope
    from workers.devices import pin_device, weights_revision
    from workers.fusion.training import ExampleError, examples_for_jobs, save, train

    check_register_flags(register_as, is_default, replace)
    if output.exists() and any(output.iterdir()):
        raise click.ClickException(f"{output} is not empty; choose a new directory")
    settings = context.settings()
    references: dict[str, str] = {}
    if references_file is not None:
        try:
            references = load_references(references_file)
        except EvaluationError as exc:
            raise click.ClickException(f"{references_file}: {exc}") from exc
    counts: Counter[str] = Counter()
    try:
        with session_scope(settings.database_url) as session:
            examples = examples_for_jobs(session, job_ids, references, top_k, counts)
    except ExampleError as exc:
        raise click.ClickException(str(exc)) from exc

    entry = None if path is not None else _source_entry(settings, name)
    if device:
        pin_device(device)  # the aggregator's generator takes its device from here
    if entry is not None:
        from workers.model_store import resolve_path

        backend, weights = entry.backend, resolve_path(entry, settings)
    else:
        assert path is not None
        backend, weights = _backend_of(path), str(path)
    new_entry = {"role": "fuser", "backend": backend, "path": str(output.resolve()),
                 "params": dict(entry.params) if entry else {}}
    if register_as:
        check_registrable(settings, register_as, replace, new_entry)
    model = _load(backend, weights)
    start = entry.revision if entry is not None and entry.revision else model.revision
    train(model, examples, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
          warmup=warmup, max_target_tokens=max_target_tokens,
          progress=lambda e, loss: click.echo(f"epoch {e}: loss {loss:.4f}", err=True))
    output.mkdir(parents=True, exist_ok=True)
    save(model, output)
    revision = weights_revision(output)
    click.echo(f"{len(examples)} examples ({counts['reference']} with a reference, "
               f"{counts['label']} with a labelled best; {counts['unranked']} requests "
               f"unranked, {counts['no_target']} without a target), from revision {start}: "
               f"new revision {revision} in {output}")
    if register_as is None:
        click.echo(f"register it with a registry entry: role = \"fuser\", backend = "
                   f"\"{backend}\", path = \"{output.resolve()}\" (or --register NAME)",
                   err=True)
        return
    register_trained(settings, register_as, new_entry, revision, is_default, replace)
