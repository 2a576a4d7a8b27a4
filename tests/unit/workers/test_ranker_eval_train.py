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


def test_train_register_adds_the_new_revision_as_the_default_ranker(
        tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestration.registry import forget_cached, get_registry
    from orchestration.settings import reset_settings
    from tests.conftest import fresh_database

    train_file = tmp_path / "train.jsonl"
    train_file.write_text("\n".join(_pair_lines(random.Random(1), 8)) + "\n")
    runner = CliRunner()

    def manage(*args: str) -> tuple[int, str]:
        out = runner.invoke(cli, list(args))
        return out.exit_code, out.output

    with fresh_database("_ranker_register") as url:
        monkeypatch.setenv("BLENDQ_DATABASE_URL", url)
        monkeypatch.delenv("BLENDQ_REGISTRY_PATH", raising=False)
        reset_settings()
        forget_cached()
        try:
            train = ["ranker", "train", str(train_file), "--device", "cpu", "--register",
                     "ranker-v2"]
            # An empty database registry is refused before training: registering one
            # ranker there would take the built-in models from every process.
            code, output = manage(*train, "--path", str(tiny_models["tiny-ranker"]),
                                  "-o", str(tmp_path / "refused"))
            assert code != 0 and "database registry is empty" in output
            assert not (tmp_path / "refused").exists()
            code, output = manage("ranker", "train", str(train_file), "--default",
                                  "-o", str(tmp_path / "x"))
            assert code != 0 and "--default and --replace go with --register" in output

            code, output = manage("models", "register", "base", "--role", "ranker",
                                  "--backend", "pairranker", "--path",
                                  str(tiny_models["tiny-ranker"]), "--param",
                                  "token_budget=2048", "--default")
            assert code == 0, output
            code, output = manage(*train, "--ranker", "base", "--default",
                                  "-o", str(tmp_path / "v2"))
            assert code == 0, output
            assert "registered ranker ranker-v2" in output
            forget_cached()
            registry = get_registry(None, url)
            new = registry.default("ranker")
            assert new is not None and new.name == "ranker-v2"
            assert new.path == str((tmp_path / "v2").resolve())
            assert new.params == {"token_budget": 2048} and new.backend == "pairranker"
            assert new.revision and new.revision in output  # the revision it trained

            # The name is taken now: refused before training, the directory untouched.
            code, output = manage(*train, "--ranker", "base", "-o", str(tmp_path / "v3"))
            assert code != 0 and "already registered (--replace" in output
            assert not (tmp_path / "v3").exists()
        finally:
            reset_settings()
            forget_cached()
