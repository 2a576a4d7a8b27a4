"""``manage.py audit``: why an answer won, people's labels, exports for retraining.

The export formats are documented in ``db/queries_audit.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from db.engine import session_scope
from db.queries_audit import (
    AuditError,
    Verdict,
    export_lines,
    find_request,
    record_label,
    request_detail,
    resolve_candidate,
    review_queue,
)
from ops import context


@click.group()
def audit() -> None:
    """Review ranking decisions, record labels, export them for ``ranker train``."""


def _request_args(request_id: int | None, job: str | None, custom_id: str | None) -> dict[str, Any]:
    if request_id is None and (job is None or custom_id is None):
        raise click.UsageError("give REQUEST (an id) or both --job and --custom-id")
    return {"request_id": request_id, "job_id": job, "custom_id": custom_id}


@audit.command()
@click.argument("request_id", type=int, required=False)
@click.option("--job", help="With --custom-id: find the request by its job and custom_id.")
@click.option("--custom-id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(request_id: int | None, job: str | None, custom_id: str | None, as_json: bool) -> None:
    """Candidates, scores, the pairwise logit matrix and the fusion of one request."""
    settings = context.settings()
    try:
        with session_scope(settings.database_url) as session:
            detail = request_detail(session, find_request(
                session, **_request_args(request_id, job, custom_id)))
    except AuditError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(detail, indent=2, ensure_ascii=False))
        return
    _print_detail(detail)


def _print_detail(d: dict[str, Any]) -> None:
    console = Console(width=120)
    r = d["request"]
    console.print(f"request {r['id']}  job {r['job_id']}  custom_id {r['custom_id']}  "
                  f"status {r['status']}" + (f"  error: {r['error']}" if r["error"] else ""))
    console.print(f"instruction: {r['instruction']}", markup=False)
    if r["input"]:
        console.print(f"input: {r['input']}", markup=False)
    ranking = d["ranking"]
    if ranking:
        console.print(f"ranker {ranking['ranker']} rev {ranking['ranker_revision']}  "
                      f"strategy {ranking['strategy']}  aggregation {ranking['aggregation']}  "
                      f"margin {_num(ranking['margin'])}")
    table = Table(title="candidates")
    for column in ("id", "model", "rank", "score", "latency ms", "text / error"):
        table.add_column(column)
    for c in sorted(d["candidates"], key=lambda c: (c["rank"] is None, c["rank"] or 0)):
        table.add_row(str(c["candidate_id"]), c["model"], str(c["rank"] or "-"),
                      _num(c["score"]), _num(c["latency_ms"]),
                      c["text"] if c["ok"] else f"FAILED: {c['error']}")
    console.print(table)
    m = d["matrix"]
    matrix = Table(title=f"logit(row over column), ranker rev {m['ranker_revision']}")
    matrix.add_column("A \\ B")
    for model in m["models"]:
        matrix.add_column(model)
    for model, row in zip(m["models"], m["logits"], strict=True):
        matrix.add_row(model, *[_num(v) for v in row])
    console.print(matrix)
    fusion = d["fusion"]
    if fusion:
        inputs = ", ".join(f"{i['model']}#{i['candidate_id']}" for i in fusion["inputs"])
        console.print(f"fuser {fusion['fuser']} rev {fusion['fuser_revision']} read: {inputs}")
    console.print(f"fused: {d['fused_output']}", markup=False)
    for label in d["labels"]:
        console.print(f"label {label['label_id']} by {label['author']}: {label['verdict']} "
                      f"{label['ranking'] or [label['candidate_a'], label['candidate_b']]}"
                      + (f" ({label['note']})" if label["note"] else ""), markup=False)
    console.print("timings: " + json.dumps(d["timings"]), markup=False)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


@audit.command()
@click.argument("request_id", type=int, required=False)
@click.option("--job", help="With --custom-id: find the request by its job and custom_id.")
@click.option("--custom-id")
@click.option("--better", help="The better candidate (id or model); use with --worse.")
@click.option("--worse", help="The worse candidate (id or model).")
@click.option("--tie", nargs=2, help="Two candidates (ids or models) judged equal.")
@click.option("--ranking", help="Every judged candidate, best first, comma-separated.")
@click.option("--author", required=True, help="Who judged.")
@click.option("--note", help="Why.")
def label(request_id: int | None, job: str | None, custom_id: str | None, better: str | None,
          worse: str | None, tie: tuple[str, str] | None, ranking: str | None, author: str,
          note: str | None) -> None:
    """Record a person's judgement: --better X --worse Y, --tie X Y, or --ranking X,Y,Z."""
    given = [better is not None or worse is not None, bool(tie), ranking is not None]
    if sum(given) != 1:
        raise click.UsageError("give exactly one of --better/--worse, --tie, --ranking")
    if given[0] and (better is None or worse is None):
        raise click.UsageError("--better and --worse go together")
    settings = context.settings()
    try:
        with session_scope(settings.database_url) as session:
            request = find_request(session, **_request_args(request_id, job, custom_id))
            if ranking is not None:
                refs, kind = [p.strip() for p in ranking.split(",") if p.strip()], "ranking"
            elif tie:
                refs, kind = list(tie), "tie"
            else:
                refs, kind = [str(better), str(worse)], "a"
            ids = tuple(resolve_candidate(session, request, ref).id or 0 for ref in refs)
            stored = record_label(session, request, Verdict(kind, ids), author, note)
            label_id = stored.id
    except AuditError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"label {label_id} recorded")


@audit.command("queue")
@click.option("--job", required=True)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def queue_cmd(job: str, limit: int, as_json: bool) -> None:
    """Requests worth a look first: labels the ranker contradicts, then closest top two."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        items = review_queue(session, job, limit)
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    table = Table(title=f"review queue for {job}")
    for column in ("request", "custom_id", "margin", "contradicted labels", "top two"):
        table.add_column(column)
    for i in items:
        table.add_row(str(i["request_id"]), i["custom_id"], _num(i["margin"]),
                      ",".join(map(str, i["contradicted_labels"])) or "-", " > ".join(i["top"]))
    Console(width=120).print(table)


@audit.command()
@click.option("--job", required=True)
@click.option("--format", "fmt", type=click.Choice(["mixinstruct", "pairs"]), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def export(job: str, fmt: str, output: Path) -> None:
    """Write the job's candidates, scores and labels as training data (JSONL)."""
    settings = context.settings()
    tmp = output.with_name(output.name + ".part")
    count = 0
    try:
        with session_scope(settings.database_url) as session, tmp.open(
                "w", encoding="utf-8") as handle:
            for line in export_lines(session, job, fmt):
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                count += 1
    except AuditError as exc:
        tmp.unlink(missing_ok=True)
        raise click.ClickException(str(exc)) from exc
    tmp.replace(output)
    click.echo(f"{count} lines written to {output}")
