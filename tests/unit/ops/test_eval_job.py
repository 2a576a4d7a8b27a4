"""``jobs evaluate``'s computation on hand-made requests: references parsed with errors
that name the line, every metric per system, the oracle never below any system, ranks
from labels, bootstrap intervals and the chart."""

from __future__ import annotations

import pytest

from ops.eval_job import (
    FUSED,
    ORACLE,
    RANK,
    RANKER,
    EvaluationError,
    Item,
    evaluate,
    items_from_export,
    parse_references,
    render_table,
    write_chart,
)
from ops.eval_metrics import MetricError, paired_bootstrap, parse_metrics

MODELS = ["good", "bad", "empty"]
REFS = {f"q{i}": f"The answer to question number {i} is {i * 7} apples." for i in range(6)}


def _items() -> list[Item]:
    items = []
    for i in range(6):
        good = f"The answer to question number {i} is {i * 7} apples."
        bad = "I do not know what you mean by that."
        # The ranker picks the good answer on even requests, the bad one on odd ones;
        # the fuser half-copies the good one.
        items.append(Item(f"q{i}", {"good": good, "bad": bad, "empty": ""},
                          good if i % 2 == 0 else bad, f"{i * 7} apples.",
                          {"good": 1.0, "bad": 2.5, "empty": 2.5} if i < 3 else None))
    return items


def test_references_name_the_bad_line_and_field() -> None:
    ok = parse_references(['{"custom_id": "a", "reference": "x"}', "",
                           '{"id": 7, "output": "y"}', '{"id": "z", "output": null}'])
    assert ok == {"a": "x", "7": "y"}
    for lines, message in [
        (['{"custom_id": "a", "reference": "x"}', "not json"], "line 2: not JSON"),
        (['{"reference": "x"}'], "line 1: no 'custom_id'"),
        (['{"custom_id": "a", "reference": "x"}', '["a", "x"]'], "line 2: not a JSON object"),
        (['{"custom_id": "a"}'], "line 1: no 'reference'"),
        (['{"custom_id": "a", "reference": 3}'], "line 1: field 'reference' must be a string"),
        (['{"custom_id": "a", "reference": "x"}', '{"custom_id": "a", "reference": "y"}'],
         "line 2: custom_id 'a' given twice (first on line 1)"),
        ([""], "no references"),
    ]:
        with pytest.raises(EvaluationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_references(lines)
    with pytest.raises(MetricError, match="unknown metrics"):
        parse_metrics("bleu,meteor")


def test_every_system_scored_and_the_oracle_is_never_below_any() -> None:
    report = evaluate(_items(), {**REFS, "nobody": "x"}, MODELS, ["bleu", "chrf", "rougeL"],
                      samples=200)
    rows = {r["system"]: r for r in report["systems"]}
    assert set(rows) == {*MODELS, RANKER, FUSED, ORACLE}
    assert report["evaluated"] == 6 and report["references_unmatched"] == 1
    for m in ("bleu", "chrf", "rougeL"):
        assert rows["good"]["scores"][m] == pytest.approx(100.0)
        assert rows["empty"]["scores"][m] == 0.0
        assert rows["bad"]["scores"][m] < 30
        assert report["best_generator"][m] == "good"
        assert rows["good"]["vs_best_generator"][m] is None
        # Half the ranker's choices are the good answer.
        assert rows[RANKER]["scores"][m] == pytest.approx(
            (rows["good"]["scores"][m] + rows["bad"]["scores"][m]) / 2)
        for row in rows.values():
            assert rows[ORACLE]["scores"][m] >= row["scores"][m] - 1e-9
        diff = rows["bad"]["vs_best_generator"][m]
        assert diff["low"] <= diff["delta"] <= diff["high"] < 0
    assert rows["empty"]["answered"] == 0 and rows["good"]["answered"] == 6
    # Ranks exist on the three labelled requests only; the ranker chose the good answer
    # on two of them (ranks 1, 2.5, 1).
    assert report["labelled_requests"] == 3
    assert rows["good"]["scores"][RANK] == 1.0 and rows["good"]["ranked_requests"] == 3
    assert rows[RANKER]["scores"][RANK] == pytest.approx(4.5 / 3)
    assert rows[ORACLE]["scores"][RANK] == 1.0
    assert rows[FUSED]["scores"][RANK] is None  # never word for word a candidate
    assert report["best_generator"][RANK] == "good"
    assert "oracle" in render_table(report) and "(best)" in render_table(report)


def test_bertscore_over_the_local_minilm() -> None:
    report = evaluate(_items()[:2], REFS, MODELS, ["bertscore"], samples=100)
    rows = {r["system"]: r for r in report["systems"]}
    assert rows["good"]["scores"]["bertscore"] == pytest.approx(100.0, abs=0.01)
    assert 0 < rows["bad"]["scores"]["bertscore"] < 95
    assert rows["empty"]["scores"]["bertscore"] == 0.0


def test_bootstrap_interval() -> None:
    assert paired_bootstrap([1.0], [0.0]) is None
    same = paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same is not None and same.delta == same.low == same.high == 0.0
    shifted = paired_bootstrap([float(i) + 1 for i in range(50)], [float(i) for i in range(50)])
    assert shifted is not None and shifted.low == shifted.high == 1.0
    noisy = paired_bootstrap([float(i % 7) for i in range(40)], [3.0] * 40, samples=2000)
    assert noisy is not None and noisy.low < noisy.delta < noisy.high


def test_items_from_an_audit_export_line() -> None:
    line = {"id": "q1", "output": "fused", "candidates": [
        {"model": "good", "candidate_id": 1, "text": "A", "scores": {"ranker_rank": 2,
                                                                      "human": 1.0}},
        {"model": "bad", "candidate_id": 2, "text": "B", "scores": {"ranker_rank": 1,
                                                                     "human": -1.0}}],
        "labels": [{"verdict": "a", "candidate_a": 1, "candidate_b": 2, "ranking": None}]}
    (item,) = items_from_export([line], MODELS)
    assert item.answers == {"good": "A", "bad": "B", "empty": ""}
    assert item.chosen == "B" and item.fused == "fused"
    assert item.human_rank == {"good": 1.0, "bad": 2.0}
    partial = {**line, "labels": [{"verdict": "ranking", "ranking": [1],
                                   "candidate_a": None, "candidate_b": None}]}
    assert items_from_export([partial], MODELS)[0].human_rank is None


def test_chart_is_a_png(tmp_path) -> None:
    report = evaluate(_items(), REFS, MODELS, ["bleu", "rougeL"], samples=100)
    out = tmp_path / "eval.png"
    write_chart({**report, "job_id": "job_x"}, out)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
