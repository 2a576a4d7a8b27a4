"""``manage.py jobs evaluate``: a job's generators, ranker's choice, fused answer and oracle
scored against references (what is computed: ``ops/eval_job.py``, ``ops/eval_metrics.py``).

    python manage.py jobs evaluate JOB --references refs.jsonl
    python manage.py jobs evaluate JOB --references refs.jsonl --json --chart eval.png
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from ops import context
from ops.eval_job import (
    EvaluationError,
    collect,
    evaluate,
    load_references,
    render_table,
    summary_for_job,
    write_chart,
)
from ops.eval_metrics import METRICS, MetricError, parse_metrics


@click.command("evaluate")
@click.argument("job_id")
@click.option("--references", "references_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL: custom_id + reference per line (or MixInstruct id + output).")
@click.option("--metrics", default=",".join(METRICS), show_default=True,
              help="Comma-separated subset.")
@click.option("--bertscore-model", type=click.Path(exists=True, file_okay=False,
                                                   path_type=Path),
              help="Encoder directory for BERTScore (default: the demo all-MiniLM-L6-v2).")
@click.option("--bertscore-layers", type=int,
              help="Which layer's embeddings BERTScore compares (default: the last).")
@click.option("--samples", type=click.IntRange(100, 100_000), default=1000, show_default=True,
              help="Bootstrap resamples for the intervals.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The whole report as JSON.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG bar chart here.")
@click.option("--store/--no-store", default=True, show_default=True,
              help="Keep the table on the job, for its auditor page.")
def evaluate_cmd(job_id: str, references_file: Path, metrics: str,
                 bertscore_model: Path | None, bertscore_layers: int | None, samples: int,
                 seed: int, as_json: bool, chart: Path | None, store: bool) -> None:
    """Score JOB's generators, the ranker's choice, the fused answer and the oracle
    against references: BLEU, chrF, ROUGE-L, BERTScore, and the average rank among the
    candidates where auditors labelled them."""
    settings = context.settings()
    try:
        chosen = parse_metrics(metrics)
        references = load_references(references_file)
        models, items = collect(settings.database_url, job_id)
        report = evaluate(items, references, models, chosen,
                          bertscore_model=bertscore_model, bertscore_layers=bertscore_layers,
                          samples=samples, seed=seed)
    except (EvaluationError, MetricError) as exc:
        raise click.ClickException(f"{references_file if 'line' in str(exc) else job_id}: "
                                   f"{exc}") from exc
    report = {"job_id": job_id, "references": references_file.name,
              "created_at": datetime.now(UTC).isoformat(timespec="seconds"), **report}
    if chart is not None:
        write_chart(report, chart)
    if store:
        _store(settings.database_url, job_id, summary_for_job(report))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_table(report))
        if chart is not None:
            click.echo(f"chart written to {chart}")


def _store(url: str, job_id: str, summary: dict[str, object]) -> None:
    """The latest evaluation, under the job's metadata key ``evaluation`` (a mapping, so
    the Batch API, which shows string values only, leaves it out)."""
    from db.engine import session_scope
    from db.models import Job

    with session_scope(url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            return
        job.meta = {**(job.meta or {}), "evaluation": summary}
        session.add(job)
