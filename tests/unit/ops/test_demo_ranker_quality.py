"""The demo ranker that ``models install-demo`` trains beats chance on prompts it never
saw: held out by question, a whole family held out, and the hand-written held-out set
(``ops/bench/data/ranker_heldout.jsonl``). It is the ranker the demo pipeline uses, so
the check is on the installed weights, not on a copy trained apart (``test_demo_models``
builds the same cache; whichever runs first pays the training).

The hand-written set's targets: pairwise 0.70 is reached (0.726 with recipe v3) and the
PairRanker ties the pointwise baseline (0.728); top-1 0.45 is not (0.238, between 0.24
and 0.48 along the learning curve): the figures and the curve are in the README ("The
demo ranker"). What is asserted is what the recipe reaches, with a margin for the curve's
swing: well above chance, off-topic answers mostly rejected, cut-off ones always.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ops.bench import ranker_heldout
from ops.bench.ranker_pointwise import RandomComparer
from ops.bench.ranker_quality import measure
from ops.cli import cli
from ops.demo.models import DEMO_RANKER, install_demo, spare_cpu_threads
from orchestration.registry import load_registry
from tests.conftest import MODEL_CACHE
from workers.ranking.pairranker import PairRanker

# On a fresh cache the first test here builds the demo models and trains the demo ranker
# (about 6 minutes on 2 busy cores), past the suite's default 600 s timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


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


def test_the_installed_demo_ranker_on_the_hand_written_set(demo_ranker_path: Path) -> None:
    items = ranker_heldout.load()
    assert len(items) >= 80
    ranker = PairRanker.from_pretrained(str(demo_ranker_path), device="cpu")
    with spare_cpu_threads():
        trained = ranker_heldout.measure(ranker, items)
    coin = ranker_heldout.measure(RandomComparer(0), items)
    print(f"hand-written: trained {trained}, random {coin}")
    assert abs(coin["accuracy"] - 0.5) < 0.06
    # Measured with recipe v3: 0.726 against random 0.486 (v2 0.593, v1 0.512); along
    # the epoch it moved between 0.66 and 0.77.
    assert trained["accuracy"] > 0.65
    assert trained["correct_vs_off_topic"] > 0.6  # v2: 0.458, v3: 0.729
    assert trained["correct_vs_cut_off"] > 0.9

