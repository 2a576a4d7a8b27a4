"""Does the blend pay off on a job? Each generator, the ranker's choice, the fused answer
and the oracle scored against references (``manage.py jobs evaluate``).

References: JSONL, one object per line, keyed by ``custom_id`` (or MixInstruct's ``id``),
the text in ``reference`` (or MixInstruct's ``output``). Requests without a reference
are left out and counted; a MixInstruct line whose ``output`` is null is no reference.

Systems, per request:
- each generator of the job: its candidate (an empty answer where it failed);
- ``ranker``: the candidate the ranker placed first;
- ``fused``: the request's fused answer;
- ``oracle``: per metric, the best of every answer the job produced for the request (its
  candidates and the fused answer), so it is never below any system: the ceiling a
  perfect chooser would reach.

Average rank (LLM-Blender's GPT-Rank, with auditors in place of ChatGPT): on requests
whose labels mention every usable candidate, the candidates are ordered by the labels
(each pair a label decides: +1 to the better, -1 to the worse, as ``audit export``
scores them), tied candidates sharing the mean rank; 1 is best. A system's rank there is
its candidate's; the fused answer has one only where it equals a candidate's text; the
oracle's is the best candidate's.

Differences to the best generator (per metric, the generator with the highest mean;
for rank, the lowest) come with a paired bootstrap interval over requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.eval_metrics import as_dict, make_scorers, mean, paired_bootstrap, score_pairs
from workers.ranking.evaluation import json_objects

RANKER, FUSED, ORACLE = "ranker", "fused", "oracle"
RANK = "avg_rank"


class EvaluationError(ValueError):
    pass


@dataclass
class Item:
    """One request as the evaluation sees it."""

    custom_id: str
    answers: dict[str, str]  # generator -> its candidate text ("" where it failed)
    chosen: str | None  # the ranker's first candidate's text
    fused: str | None
    human_rank: dict[str, float] | None = None  # generator -> rank among candidates
    extra: dict[str, Any] = field(default_factory=dict)


def parse_references(lines: Iterable[str]) -> dict[str, str]:
    refs: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in json_objects(lines, EvaluationError):
        key_field = "custom_id" if "custom_id" in line else "id"
        if key_field not in line:
            raise EvaluationError(f"line {number}: no 'custom_id' (or MixInstruct 'id')")
        text_field = "reference" if "reference" in line else "output"
        if text_field not in line:
            raise EvaluationError(f"line {number}: no 'reference' (or MixInstruct 'output')")
        key, text = line[key_field], line[text_field]
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise EvaluationError(f"line {number}: field '{key_field}' must be a string")
        if text is None and text_field == "output":
            continue
        if not isinstance(text, str):
            raise EvaluationError(f"line {number}: field '{text_field}' must be a string")
        key = str(key)
        if key in refs:
            raise EvaluationError(f"line {number}: {key_field} {key!r} given twice (first "
                                  f"on line {first_line[key]})")
        refs[key], first_line[key] = text, number
    if not refs:
        raise EvaluationError("no references in the file")
    return refs


def load_references(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as handle:
        return parse_references(handle)


def items_from_export(lines: Iterable[dict[str, Any]], models: Sequence[str]) -> list[Item]:
    """Items from ``audit export --format mixinstruct`` lines (``db.queries_audit``)."""
    items = []
    for line in lines:
        cands = line["candidates"]
        answers = {m: "" for m in models}
        for c in cands:
            answers[c["model"]] = c["text"]
        firsts = [c for c in cands if c["scores"].get("ranker_rank") == 1]
        chosen = firsts[0]["text"] if firsts else (cands[0]["text"] if len(cands) == 1
                                                     else None)
        items.append(Item(str(line["id"]), answers, chosen, line.get("output"),
                          _human_ranks(cands, line.get("labels") or [])))
    return items


def _human_ranks(cands: list[dict[str, Any]], labels: list[dict[str, Any]],
                 ) -> dict[str, float] | None:
    """Ranks by the labels where they mention every candidate, else None."""
    if not labels or len(cands) < 2:
        return None
    mentioned: set[int] = set()
    for label in labels:
        mentioned.update(label.get("ranking") or [])
        mentioned.update(x for x in (label.get("candidate_a"), label.get("candidate_b"))
                         if x is not None)
    if any(c["candidate_id"] not in mentioned for c in cands):
        return None
    from workers.ranking.evaluation import average_ranks

    # Higher human score is better; average_ranks ranks ascending, so negate.
    ranks = average_ranks([-float(c["scores"].get("human", 0.0)) for c in cands])
    return {c["model"]: r for c, r in zip(cands, ranks, strict=True)}


def collect(database_url: str, job_id: str) -> tuple[list[str], list[Item]]:
    """The job's generators and its requests that have a usable candidate."""
    from db.engine import session_scope
    from db.models import Job
    from db.queries_audit import export_lines

    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise EvaluationError(f"no job {job_id}")
        models = list(job.models)
        lines = list(export_lines(session, job_id, "mixinstruct"))
    return models, items_from_export(lines, models)


def evaluate(items: Sequence[Item], references: dict[str, str], models: Sequence[str],
             metrics: Sequence[str], *, bertscore_model: Path | None = None,
             bertscore_layers: int | None = None, samples: int = 1000, seed: int = 0,
             ) -> dict[str, Any]:
    scored = [it for it in items if it.custom_id in references]
    if not scored:
        raise EvaluationError("no request of the job has a reference (custom_ids do not "
                              "match)")
    # Each distinct answer of a request is scored once; systems then pick among them.
    texts: list[list[str]] = []
    for it in scored:
        pool = [it.answers[m] for m in models]
        pool += [t for t in (it.chosen, it.fused) if t is not None]
        texts.append(list(dict.fromkeys(pool)))
    pairs = [(t, references[it.custom_id]) for it, pool in zip(scored, texts, strict=True)
             for t in pool]
    scorers = make_scorers(metrics, bertscore_model, bertscore_layers)
    flat = score_pairs(scorers, pairs)
    per: list[dict[str, dict[str, float]]] = []  # request -> metric -> text -> score
    offset = 0
    for pool in texts:
        per.append({m: dict(zip(pool, flat[m][offset:offset + len(pool)], strict=True))
                    for m in metrics})
        offset += len(pool)

    systems = [*models, RANKER, FUSED, ORACLE]
    values: dict[str, dict[str, list[float]]] = {s: {m: [] for m in metrics} for s in systems}
    counted: dict[str, int] = dict.fromkeys(systems, 0)
    for it, table in zip(scored, per, strict=True):
        for m in metrics:
            for g in models:
                values[g][m].append(table[m][it.answers[g]])
            # A request with no ranking (or no fusion) gives that system nothing: 0,
            # as a failed generator gets.
            values[RANKER][m].append(table[m][it.chosen] if it.chosen is not None else 0.0)
            values[FUSED][m].append(table[m][it.fused] if it.fused is not None else 0.0)
            values[ORACLE][m].append(max(table[m].values()))
        for s, text in ((RANKER, it.chosen), (FUSED, it.fused)):
            counted[s] += text is not None
        for g in models:
            counted[g] += bool(it.answers[g].strip())
        counted[ORACLE] += 1

    ranks = _rank_values(scored, models)
    best = {m: _best_generator(models, values, m) for m in metrics}
    rows = []
    for s in systems:
        row: dict[str, Any] = {
            "system": s, "kind": "generator" if s in models else s,
            "answered": counted[s],
            "scores": {m: mean(values[s][m]) for m in metrics},
            "vs_best_generator": {
                m: None if s == best[m] else as_dict(paired_bootstrap(
                    values[s][m], values[best[m]][m], samples, seed=seed))
                for m in metrics}}
        row["scores"][RANK] = mean(ranks[s]) if ranks[s] else None
        row["ranked_requests"] = len(ranks[s])
        rows.append(row)
    best_rank = _best_rank_generator(models, ranks)
    if best_rank is not None:
        for row in rows:
            s = row["system"]
            both = [(a, b) for a, b in _paired_ranks(scored, models, s, best_rank)]
            row["vs_best_generator"][RANK] = None if s == best_rank else as_dict(
                paired_bootstrap([a for a, _ in both], [b for _, b in both], samples,
                                 seed=seed))
    return {"requests": len(items), "evaluated": len(scored),
            "without_reference": len(items) - len(scored),
            "references_unmatched": len(set(references) - {it.custom_id for it in items}),
            "labelled_requests": sum(1 for it in scored if it.human_rank is not None),
            "metrics": list(metrics), "generators": list(models),
            "best_generator": {**best, RANK: best_rank},
            "bootstrap": {"samples": samples, "confidence": 0.95, "seed": seed},
            "bertscore_model": str(bertscore_model) if bertscore_model else None,
            "systems": rows}


def _best_generator(models: Sequence[str], values: dict[str, dict[str, list[float]]],
                    metric: str) -> str:
    return max(models, key=lambda g: mean(values[g][metric]) or 0.0)


def _rank_of(it: Item, system: str, models: Sequence[str]) -> float | None:
    human = it.human_rank
    if human is None:
        return None
    if system in models:
        return human.get(system)
    if system == ORACLE:
        return min(human.values())
    text = it.chosen if system == RANKER else it.fused
    # The fused answer is ranked only where it is one of the candidates, word for word.
    owners = [g for g in human if text is not None and it.answers[g] == text]
    return human[owners[0]] if owners else None


def _rank_values(items: Sequence[Item], models: Sequence[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {s: [] for s in [*models, RANKER, FUSED, ORACLE]}
    for it in items:
        for s in out:
            r = _rank_of(it, s, models)
            if r is not None:
                out[s].append(r)
    return out


def _best_rank_generator(models: Sequence[str], ranks: dict[str, list[float]]) -> str | None:
    ranked = [g for g in models if ranks[g]]
    return min(ranked, key=lambda g: mean(ranks[g]) or 0.0) if ranked else None


def _paired_ranks(items: Sequence[Item], models: Sequence[str], system: str,
                  baseline: str) -> list[tuple[float, float]]:
    out = []
    for it in items:
        a, b = _rank_of(it, system, models), _rank_of(it, baseline, models)
        if a is not None and b is not None:
            out.append((a, b))
    return out


# -- output ------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells, shared by the terminal table and the auditor page: each metric's
    mean, then its difference to the best generator with the 95% interval."""
    columns = [*report["metrics"], RANK]
    header = ["system", *columns]
    cells = []
    for row in report["systems"]:
        line = [row["system"]]
        for m in columns:
            value = row["scores"].get(m)
            diff = row["vs_best_generator"].get(m)
            text = _fmt(value)
            if diff is not None:
                text += f" ({diff['delta']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}])"
            elif value is not None and report["best_generator"].get(m) == row["system"]:
                text += " (best)"
            line.append(text)
        cells.append(line)
    return header, cells


def render_table(report: dict[str, Any]) -> str:
    header, cells = table_rows(report)
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.append(
        f"{report['evaluated']} of {report['requests']} requests have a reference; "
        f"{report['labelled_requests']} fully labelled (avg_rank: 1 is best). In brackets: "
        "difference to the best generator, 95% paired bootstrap interval.")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per metric, one bar per system, the 95% interval of each
    system's difference to the best generator drawn around its bar."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    metrics = list(report["metrics"])
    systems = report["systems"]
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(metrics) * len(systems) / 3), 4.5))
    for k, row in enumerate(systems):
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(metrics))]
        ys = [row["scores"][m] or 0.0 for m in metrics]
        errs = [[0.0] * len(metrics), [0.0] * len(metrics)]
        for i, m in enumerate(metrics):
            diff = row["vs_best_generator"].get(m)
            if diff is not None:
                errs[0][i] = max(0.0, diff["delta"] - diff["low"])
                errs[1][i] = max(0.0, diff["high"] - diff["delta"])
        ax.bar(xs, ys, width, label=row["system"], yerr=errs, capsize=2)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("mean score (0-100)")
    ax.set_title(f"{report.get('job_id', 'job')}: {report['evaluated']} requests")
    ax.legend(fontsize="small", ncols=min(4, len(systems)))
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def summary_for_job(report: dict[str, Any]) -> dict[str, Any]:
    """What the job keeps for its auditor page: the table, not the per-request data."""
    header, cells = table_rows(report)
    return {"created_at": report.get("created_at"), "references": report.get("references"),
            "evaluated": report["evaluated"], "requests": report["requests"],
            "labelled_requests": report["labelled_requests"], "header": header,
            "rows": cells}
