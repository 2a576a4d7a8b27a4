"""The demo ranker that ``models install-demo`` trains beats chance on prompts it never
saw: held out by question, and a whole family held out. It is the ranker the demo
pipeline uses, so the check is on the installed weights, not on a copy trained apart
(``test_demo_models`` builds the same cache; whichever runs first pays the training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ops.bench.ranker_pointwise import RandomComparer
from ops.bench.ranker_quality import measure
from ops.cli import cli
from orchestration.registry import load_registry
from tests.conftest import MODEL_CACHE
from workers.demo_models import DEMO_RANKER, install_demo, spare_cpu_threads
from workers.ranking.pairranker import PairRanker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_ranker_path() -> Path:
    entry = load_registry(install_demo(MODEL_CACHE)).default("ranker")
    assert entry is not None and entry.name == "minilm-ranker"
    return Path(entry.path)


def test_the_installed_demo_ranker_is_better_than_chance(demo_ranker_path: Path) -> None:
    assert (demo_ranker_path / "demo_training.json").is_file()
    ranker = PairRanker.from_pretrained(str(demo_ranker_path), device="cpu")
    _, heldout, unseen = DEMO_RANKER.data()
    with spare_cpu_threads():
        trained = measure(ranker, heldout[:60])
        unseen_family = measure(ranker, unseen)
    coin = measure(RandomComparer(0), heldout[:60])
    print(f"held-out: trained {trained}, random {coin}; unseen family {unseen_family}")
    assert abs(coin["accuracy"] - 0.5) < 0.06
    assert trained["accuracy"] > 0.62 and trained["accuracy"] > coin["accuracy"] + 0.1
    # Failures any model shows (no answer, a restated question, ...) are learnt best.
    assert trained["generic"] > 0.75
    assert unseen_family["accuracy"] > 0.55


def test_ranker_eval_on_exported_demo_data_agrees(demo_ranker_path: Path,
                                                   tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["ranker", "demo-data", "-o", str(tmp_path)])
    assert out.exit_code == 0, out.output
    lines = (tmp_path / "heldout.jsonl").read_text().splitlines()
    (tmp_path / "some.jsonl").write_text("\n".join(lines[:15]) + "\n")
    out = runner.invoke(cli, ["ranker", "eval", str(tmp_path / "some.jsonl"), "--path",
                              str(demo_ranker_path), "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    ranker = PairRanker.from_pretrained(str(demo_ranker_path), device="cpu")
    with spare_cpu_threads():
        expected = measure(ranker, DEMO_RANKER.data()[1][:15])["accuracy"]
    assert json.loads(out.stdout)["pairwise_accuracy"] == pytest.approx(expected)
