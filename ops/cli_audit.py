"""``manage.py audit``: why an answer won, people's labels, exports for retraining.

The export formats are documented in ``db/queries_audit.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from db.engine import session_scope
from db.queries_audit import (
    AuditError,
    Verdict,
    export_lines,
    find_request,
    implied_pairs,
    record_label,
    request_detail,
    resolve_candidate,
    review_queue,
)
from ops import context
from ops.tables import MISSING, cell, print_table


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
    echo = click.echo
    r = d["request"]
    echo(f"request {r['id']}  job {r['job_id']}  custom_id {r['custom_id']}  "
         f"status {r['status']}" + (f"  error: {r['error']}" if r["error"] else ""))
    # The whole prompt: a conversation rendered as db/prompts.py documents.
    echo(f"instruction: {r['instruction']}")
    if r["input"]:
        echo(f"input: {r['input']}")
    ranking = d["ranking"]
    if ranking:
        echo(f"ranker {ranking['ranker']} rev {cell(ranking['ranker_revision'])}  "
             f"strategy {ranking['strategy']}  aggregation {ranking['aggregation']}  "
             f"margin {_num(ranking['margin'])}")
    else:
        echo("not ranked")
    print_table("candidates", ("id", "model", "rank", "score", "latency ms", "text / error"),
                [(str(c["candidate_id"]), c["model"], cell(c["rank"]), _num(c["score"]),
                  _num(c["latency_ms"]), c["text"] if c["ok"] else f"FAILED: {c['error']}")
                 for c in sorted(d["candidates"],
                                 key=lambda c: (c["rank"] is None, c["rank"] or 0))])
    m = d["matrix"]
    print_table(f"logit(row over column), ranker rev {cell(m['ranker_revision'])}",
                ("A \\ B", *m["models"]),
                [(model, *[_num(v) for v in row])
                 for model, row in zip(m["models"], m["logits"], strict=True)])
    fusion = d["fusion"]
    if fusion:
        inputs = ", ".join(f"{i['model']}#{i['candidate_id']}" for i in fusion["inputs"])
        echo(f"fuser {fusion['fuser']} rev {cell(fusion['fuser_revision'])} read: {inputs}")
    echo(f"fused: {cell(d['fused_output'])}")
    for label in d["labels"]:
        judged = (" > ".join(f"#{c}" for c in label["ranking"]) if label["ranking"]
                  else _pair_verdict(label))
        echo(f"label {label['label_id']} by {label['author']}: {label['verdict']} {judged}"
             + (f" ({label['note']})" if label["note"] else ""))
    echo("timings: " + "  ".join(f"{k} {cell(v)}" for k, v in d["timings"].items()))


def _pair_verdict(label: dict[str, Any]) -> str:
    a, b = f"#{label['candidate_a']}", f"#{label['candidate_b']}"
    return {"a": f"{a} > {b}", "b": f"{b} > {a}", "tie": f"{a} = {b}"}.get(
        label["verdict"], f"{a} ? {b}")


def _num(value: Any) -> str:
    return MISSING if value is None else f"{value:.4f}"


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
@click.option("--json", "as_json", is_flag=True, help="Print {label_id, request_id, verdict, "
              "candidates, pairs} as JSON.")
def label(request_id: int | None, job: str | None, custom_id: str | None, better: str | None,
          worse: str | None, tie: tuple[str, str] | None, ranking: str | None, author: str,
          note: str | None, as_json: bool) -> None:
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
            shown = {"label_id": stored.id, "request_id": request.id, "verdict": stored.verdict,
                     "candidates": list(ids), "pairs": len(implied_pairs(stored))}
    except AuditError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(shown))
        return
    # One label, however many pairs it decides (a ranking of n decides n(n-1)/2).
    click.echo(f"label {shown['label_id']} recorded ({shown['pairs']} pair(s) decided)")


@audit.command("queue")
@click.option("--job", required=True)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def queue_cmd(job: str, limit: int, as_json: bool) -> None:
    """Requests worth a look first: labels the ranker contradicts, then closest top two.

    A label is counted once however many of its pairs the ranker orders the other way;
    the pairs column says how many of the pairs it decides are contradicted."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        items = review_queue(session, job, limit)
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    print_table(f"review queue for {job}",
                ("request", "custom_id", "margin", "labels contradicted",
                 "pairs contradicted", "top two"),
                [(str(i["request_id"]), i["custom_id"], _num(i["margin"]),
                  _labels(i["contradictions"]), _pairs(i["contradictions"]),
                  " > ".join(i["top"])) for i in items])


def _labels(against: list[dict[str, Any]]) -> str:
    """``2 (#4, #9)``: how many labels, and which."""
    if not against:
        return "0"
    return f"{len(against)} (" + ", ".join(f"#{c['label_id']}" for c in against) + ")"


def _pairs(against: list[dict[str, Any]]) -> str:
    """``3 of 6``: pairs the ranker ordered against the labels, of the pairs they decide."""
    if not against:
        return MISSING
    return (f"{sum(c['pairs_contradicted'] for c in against)} of "
            f"{sum(c['pairs_decided'] for c in against)}")


@audit.command()
@click.option("--job", required=True)
@click.option("--format", "fmt", type=click.Choice(["mixinstruct", "pairs"]), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True, help="Print {job, format, lines, output}.")
def export(job: str, fmt: str, output: Path, as_json: bool) -> None:
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
    if as_json:
        click.echo(json.dumps({"job": job, "format": fmt, "lines": count,
                               "output": str(output)}))
        return
    click.echo(f"{count} lines written to {output}")
