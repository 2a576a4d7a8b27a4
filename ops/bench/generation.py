"""New tokens per second of the transformers backend at batch 1 and batch 32, in one run.

    python -m ops.bench.generation --device cuda --shape 0.5b   # the GPU check (bf16)
    python -m ops.bench.generation --device cpu --shape tiny    # a smoke run anywhere

The model has random weights in the shape of Qwen2.5-0.5B (or a tiny one); the tokenizer
is the tiny generator's, whose ids all fall inside the model's vocabulary. Prompts are the
same for both batch sizes. The ratio batch-32 / batch-1 is what batching buys; on a GPU
expect more than 20x. Peak GPU memory is printed when on CUDA. The table comes last.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen2.5-0.5B-Instruct's published config.
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                 max_position_embeddings=32768, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                 max_position_embeddings=2048, tie_word_embeddings=True),
}


def build(shape: str, folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from workers.tiny_models import build_tiny_generator

    tiny = build_tiny_generator(folder / "tokenizer-source", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = Qwen2Config(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    out = folder / f"random-{shape}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def measure(path: Path, device: str, batch: int, new_tokens: int, prompts: int) -> float:
    import torch

    from workers.generation.transformers_backend import TransformersGenerator

    generator = TransformersGenerator(str(path), device=device)
    generator.load()
    # Never stop early at eos: every row must produce new_tokens for a fair count.
    generator.model.generation_config.eos_token_id = None
    generator._eos_ids = lambda: set()  # type: ignore[method-assign]  # count every token
    conversations = [[{"role": "user", "content": f"Tell me about item {i} in detail."}]
                     for i in range(prompts)]
    generator.generate(conversations[:batch], max_new_tokens=2, batch_size=batch)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    results = generator.generate(conversations, max_new_tokens=new_tokens, batch_size=batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in results)
    assert not any(r.error for r in results), [r.error for r in results if r.error][:1]
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as folder:
        path = build(args.shape, Path(folder))
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        one = measure(path, args.device, 1, args.new_tokens, min(args.prompts, 8))
        many = measure(path, args.device, 32, args.new_tokens, args.prompts)
        peak = (torch.cuda.max_memory_allocated() / 2**30
                if args.device.startswith("cuda") else float("nan"))
    dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    print(f"\nshape {args.shape}, {dtype} on {args.device}, {args.new_tokens} new tokens a prompt")
    print(f"{'batch':>6} {'new tokens/s':>14}")
    print(f"{1:>6} {one:>14.1f}")
    print(f"{32:>6} {many:>14.1f}")
    print(f"batch 32 / batch 1: {many / one:.1f}x   peak GPU memory: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
