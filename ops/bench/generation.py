"""Generated tokens/s of the transformers backend: prompts gathered from many waiting chunks
in one ``generate_prompts`` call, against one chunk per call (the worker before gathering),
in one run.

    python -m ops.bench.generation                        # tiny + demo SmolLM2, on CPU
    python -m ops.bench.generation --models smollm2 --repeats 2 --threads 1
    python -m ops.bench.generation --device cuda --models smollm2,random-0.5b   # a GPU host

The workload is ``--chunks`` chunks (16) of ``--chunk-size`` prompts (8) of mixed lengths,
greedy, ``--new-tokens`` each. "per chunk" calls the backend once per chunk, as a worker
that takes one chunk a task does; "gathered" hands all of them to one call, which sorts
them by length and packs sub-batches under ``--token-budget``. Both produce the same texts
(greedy output does not depend on batching; "texts differ" counts any that did not
match), so the ratio is what gathering buys. The two are interleaved ``--repeats`` times,
because this machine is shared.
On CUDA (bf16) the baseline is batch 1, a prompt per call, and peak memory is printed.
Models: ``tiny`` (the built-in tiny random generator), ``smollm2`` (the demo model, built
into the model cache by ``python manage.py models install-demo`` when missing, minutes),
``random-0.5b`` (random weights in Qwen2.5-0.5B's shape; meant for a GPU). The table comes
last; the target on CPU at 16 chunks of 8 is >= 2x.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from workers.generation.prompts import Prompt

# Qwen2.5-0.5B-Instruct's published config, for a GPU figure without downloaded weights.
SHAPE_05B: dict[str, Any] = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
    tie_word_embeddings=True)
WORDS = ["river", "mountain", "ledger", "invoice", "harbour", "engine", "garden", "winter",
         "contract", "signal", "library", "market", "theory", "planet", "kitchen", "bridge",
         "letter", "window", "station", "history"]


def workload(chunks: int, chunk_size: int, new_tokens: int, seed: int = 0) -> list[list[Prompt]]:
    """Chunks of prompts from 4 to about 120 words: what a job of mixed requests brings."""
    rng = random.Random(seed)
    out = []
    for c in range(chunks):
        chunk = []
        for i in range(chunk_size):
            body = " ".join(rng.choice(WORDS) for _ in range(rng.choice((4, 12, 30, 60, 120))))
            text = f"Request {c}.{i}: summarise the following notes in one sentence. {body}"
            chunk.append(Prompt([{"role": "user", "content": text}], max_new_tokens=new_tokens))
        out.append(chunk)
    return out


def model_path(name: str, scratch: Path) -> Path:
    from orchestration.settings import Settings

    settings = Settings()
    if name == "tiny":
        from workers.tiny_models import ensure_tiny_models

        return ensure_tiny_models(settings.model_cache / "tiny")["tiny-a"]
    if name == "smollm2":
        path = settings.model_cache / "demo" / "smollm2-135m-instruct"
        if not path.is_dir():
            from ops.demo.models import install_demo

            print(f"building the demo models into {settings.model_cache / 'demo'} (minutes)")
            install_demo(settings.model_cache, log=print)
        return path
    if name == "random-0.5b":
        return build_random_05b(scratch)
    raise SystemExit(f"unknown model {name!r}: tiny, smollm2 or random-0.5b")


def build_random_05b(folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from workers.tiny_models import build_tiny_generator

    # The tiny generator's tokenizer: all its ids fall inside the model's vocabulary.
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_generator(folder / "tok", seed=0))
    config = Qwen2Config(**SHAPE_05B, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    out = folder / "random-0.5b"
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def timed(generator: Any, calls: list[list[Prompt]], budget: int | None,
          cuda: bool) -> tuple[float, list[str]]:
    """Generated tokens/s over ``calls`` (each one backend call) and the texts in order."""
    import torch

    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    results = [r for call in calls for r in generator.generate_prompts(call, token_budget=budget)]
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    errors = [r.error for r in results if r.error]
    assert not errors, errors[:1]
    return sum(r.completion_tokens for r in results) / elapsed, [r.text for r in results]


def bench(name: str, path: Path, device: str, chunks: list[list[Prompt]], budget: int | None,
          repeats: int) -> dict[str, Any]:
    import torch

    from workers.generation.transformers_backend import TransformersGenerator

    cuda = device.startswith("cuda")
    generator = TransformersGenerator(str(path), device=device)
    generator.load()
    everything = [p for chunk in chunks for p in chunk]
    # The worker before gathering: a chunk a call on CPU; on a GPU the batch-1 floor.
    baseline = chunks if not cuda else [[p] for p in everything]
    generator.generate_prompts(chunks[0], token_budget=budget)  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base_rates, gathered_rates, differ = [], [], 0
    for _ in range(repeats):
        rate, base_texts = timed(generator, baseline, budget, cuda)
        base_rates.append(rate)
        rate, texts = timed(generator, [everything], budget, cuda)
        gathered_rates.append(rate)
        # Expected 0 on CPU; kernels chosen by batch shape may flip a near-tie on a GPU.
        differ = max(differ, sum(a != b for a, b in zip(texts, base_texts, strict=True)))
    base, gathered = max(base_rates), max(gathered_rates)
    return {"model": name, "device": device, "baseline": "batch 1" if cuda else "chunk/call",
            "base": base, "gathered": gathered, "ratio": gathered / base, "differ": differ,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--models", default="tiny,smollm2",
                        help="comma-separated: tiny, smollm2, random-0.5b")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--token-budget", type=int, default=None,
                        help="of the gathered call; default: the backend's")
    parser.add_argument("--repeats", type=int, default=1, help="best of N interleaved runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; 1 on a crowded machine, where threads that "
                             "wait on each other cost more than they compute")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from workers.generation.transformers_backend import DEFAULT_TOKEN_BUDGET

    devices = [args.device]
    if args.device == "cpu" and torch.cuda.is_available():
        devices.append("cuda")  # a GPU is here: its figure too
    chunks = workload(args.chunks, args.chunk_size, args.new_tokens)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            path = model_path(name.strip(), Path(scratch))
            for device in devices:
                if name == "random-0.5b" and device == "cpu" and len(devices) > 1:
                    continue  # random-0.5b is a GPU shape; skip its slow CPU half
                print(f"{name} on {device} ...", flush=True)
                rows.append(bench(name, path, device, chunks, args.token_budget, args.repeats))
    budget = args.token_budget or DEFAULT_TOKEN_BUDGET
    print(f"\n{args.chunks} chunks of {args.chunk_size} prompts, {args.new_tokens} new tokens "
          f"each, greedy; gathered: one call, token budget {budget}; best of {args.repeats}; "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'model':<12} {'device':<6} {'baseline':<11} {'base tok/s':>11} "
          f"{'gathered tok/s':>15} {'ratio':>7} {'peak GiB':>9} {'texts differ':>13}")
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"{r['model']:<12} {r['device']:<6} {r['baseline']:<11} {r['base']:>11.1f} "
              f"{r['gathered']:>15.1f} {r['ratio']:>6.1f}x {peak:>9} {r['differ']:>13}")


if __name__ == "__main__":
    main()
