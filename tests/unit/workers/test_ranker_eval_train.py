"""``ranker eval`` metrics (hand-checked values) and ``ranker train`` on exported-style
pairs: the new revision scores higher than the one it started from (real tiny ranker)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from ops.cli import cli
from workers.ranking.evaluation import average_ranks, evaluate, parse_lines, pearson, spearman
from workers.ranking.training import parse_pairs
from workers.tiny_models import CORPUS


def test_rank_correlations_match_hand_computed_values() -> None:
    assert average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    # 1 - 6 * sum(d^2) / (n (n^2 - 1)) with d = (-1, 1, -1, 1, 0): 1 - 24/120.
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Monotone but not linear: Spearman 1, Pearson below it.
    cubes = [1, 8, 27, 64]
    assert spearman([1, 2, 3, 4], cubes) == pytest.approx(1.0)
    assert 0.9 < (pearson([1, 2, 3, 4], cubes) or 0) < 0.99
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    assert spearman([5], [1]) is None


class LengthRanker:
    def compare(self, pairs: list[tuple[str, str, str]]) -> list[float]:
        return [float(len(a) - len(b)) for _, a, b in pairs]


def test_evaluate_counts_agreement_on_lists_and_pairs() -> None:
    lines = [
        json.dumps({"instruction": "q", "candidates": [
            {"text": "aaa", "scores": {"bleu": 3}}, {"text": "a", "scores": {"bleu": 1}},
            {"text": "aa", "scores": {"bleu": 2}}]}),
        # The reference disagrees with length on one of three pairs: b > c but len(c) > len(b).
        json.dumps({"instruction": "q", "candidates": [
            {"text": "xxxx", "rank": 1}, {"text": "x", "rank": 2}, {"text": "xx", "rank": 3}]}),
        json.dumps({"source": "q", "candidate_a": "long", "candidate_b": "s", "label": 1.0}),
        json.dumps({"source": "q", "candidate_a": "long", "candidate_b": "s", "label": 0.0}),
        json.dumps({"source": "q", "candidate_a": "x", "candidate_b": "y", "label": 0.5}),
    ]
    lists, pairs = parse_lines(lines)
    assert (len(lists), len(pairs)) == (2, 2)
    result = evaluate(LengthRanker(), lists, pairs)
    assert result["judged_pairs"] == 8
    assert result["pairwise_accuracy"] == pytest.approx(6 / 8)
    assert result["top1_agreement"] == 1.0
    assert result["spearman"] == pytest.approx((1.0 + 0.5) / 2)


def _pair_lines(rng: random.Random, n: int) -> list[str]:
    """The better answer is the one about Paris; the other is any unrelated sentence."""
    good = [s for s in CORPUS if "Paris" in s or "France" in s]
    bad = [s for s in CORPUS if s not in good]
    lines = []
    for _ in range(n):
        better, worse = rng.choice(good), rng.choice(bad)
        a_better = rng.random() < 0.5
        a, b = (better, worse) if a_better else (worse, better)
        lines.append(json.dumps({"source": "What is the capital of France?",
                                 "candidate_a": a, "candidate_b": b,
                                 "label": 1.0 if a_better else 0.0, "origin": "label"}))
    return lines


def test_eval_and_train_input_errors_name_the_line() -> None:
    pair = '{"source": "q", "candidate_a": "x", "candidate_b": "y", "label": 1}'
    assert len(parse_lines([pair])[1]) == 1 and len(parse_pairs([pair])) == 1
    for lines, message in [
        ([pair, "not json"], "line 2: not JSON"),
        ([pair, '"candidates"'], "line 2: not a JSON object"),
        (["", '{"source": "q", "candidate_a": "x", "label": 1}'],
         "line 2: 'candidate_a' without 'candidate_b'"),
    ]:
        for parse in (parse_lines, parse_pairs):
            with pytest.raises(ValueError, match=message):
                parse(lines)


def test_train_then_eval_scores_the_new_revision_higher(tiny_models: dict[str, Path],
                                                        tmp_path: Path) -> None:
    rng = random.Random(0)
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train_file.write_text("\n".join(_pair_lines(rng, 48)) + "\n")
    test_file.write_text("\n".join(_pair_lines(rng, 24)) + "\n")
    runner = CliRunner()
    base = tiny_models["tiny-ranker"]

    def accuracy(path: Path) -> float:
        out = runner.invoke(cli, ["ranker", "eval", str(test_file), "--path", str(path),
                                  "--device", "cpu", "--json"])
        assert out.exit_code == 0, out.output
        return float(json.loads(out.stdout)["pairwise_accuracy"])

    trained = tmp_path / "v2"
    out = runner.invoke(cli, ["ranker", "train", str(train_file), "--path", str(base),
                              "--device", "cpu", "-o", str(trained), "--lr", "1e-3",
                              "--epochs", "3"])
    assert out.exit_code == 0, out.output
    assert "new revision" in out.stdout and (trained / "model.safetensors").is_file()
    before, after = accuracy(base), accuracy(trained)
    print(f"pairwise accuracy before {before:.3f} after {after:.3f}")
    assert after > before and after >= 0.9, (before, after)
    # A second train into the same directory is refused rather than overwriting it.
    again = runner.invoke(cli, ["ranker", "train", str(train_file), "--path", str(base),
                                "-o", str(trained)])
    assert again.exit_code != 0 and "not empty" in again.output
