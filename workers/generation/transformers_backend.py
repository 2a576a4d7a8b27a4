"""Candidate generation with Hugging Face ``generate`` (the backend that needs no vLLM).

``generate_prompts`` takes every prompt a worker gathered (many chunks at once), sorts them
by length and cuts them into sub-batches under a token budget, so padding stays small and
each ``generate`` call is as full as memory allows. Prompts are left-padded so every row's
new tokens start at the same column; with ``row_sampling.RowSampler`` each row decodes
with its own parameters, so a prompt's output does not depend on what else was in its
batch (up to kernel numerics on GPU), and mixed parameters still share one call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.devices import pick_device, pick_dtype, weights_revision
from workers.generation.prompts import (
    Conversation,
    GenerationResult,
    Prompt,
    fit_prompt,
    prompt_ids,
    prompts_for,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["Conversation", "GenerationResult", "Prompt", "TransformersGenerator"]

# Used only when neither the caller nor the model config states a context length.
_FALLBACK_CONTEXT = 2048
# Tokens a sub-batch may hold (rows x (padded prompt + new tokens)) when neither the call
# nor the registry says: a few hundred MB of KV cache for a 0.5B model, and on CPU past
# the point where larger batches stop paying.
DEFAULT_TOKEN_BUDGET = 16384
# What one more sub-batch costs, in rows per decoding step (see _sub_batches).
DEFAULT_STEP_ROWS_CPU = 8
DEFAULT_STEP_ROWS_GPU = 512


class TransformersGenerator:
    def __init__(
        self,
        path: str,
        revision: str | None = None,
        device: str | None = None,
        max_context: int | None = None,
        overflow: str = "truncate",
        token_budget: int | None = None,
        step_rows: int | None = None,
    ) -> None:
        if overflow not in ("truncate", "fail"):
            raise ValueError(f"overflow must be 'truncate' or 'fail', got {overflow!r}")
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {token_budget!r}")
        self.path = path
        self.overflow = overflow
        self._revision = revision
        self.device = pick_device(device)
        self.max_context = max_context
        self.token_budget = token_budget or DEFAULT_TOKEN_BUDGET
        if step_rows is not None and step_rows < 0:
            raise ValueError(f"step_rows must be >= 0, got {step_rows!r}")
        # Measured: SmolLM2 on one CPU core, a decoding step costs about what 8 more rows
        # cost; a 0.5B model on an H200 runs batch 32 in the time of batch 1.
        self.step_rows = step_rows if step_rows is not None else (
            DEFAULT_STEP_ROWS_GPU if self.device.startswith("cuda") else DEFAULT_STEP_ROWS_CPU)
        self.model: Any = None
        self.tokenizer: Any = None

    @property
    def revision(self) -> str:
        if self._revision is None:
            self._revision = weights_revision(self.path)
        return self._revision

    def load(self) -> None:
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"generator model directory not found: {self.path}")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(self.path, dtype=pick_dtype(self.device))
        model.to(self.device)
        model.eval()
        self.tokenizer, self.model = tokenizer, model

    def warm_up(self) -> None:
        self.generate_prompts([Prompt([{"role": "user", "content": "Hello"}], max_new_tokens=1)])

    def _context_limit(self) -> int:
        if self.max_context is not None:
            return self.max_context
        limit = getattr(self.model.config, "max_position_embeddings", None)
        return int(limit) if limit else _FALLBACK_CONTEXT

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, list) else {int(eos)}

    def generate(
        self,
        conversations: list[Conversation],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[GenerationResult]:
        """One set of parameters for every conversation, at most ``batch_size`` a call."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        prompts = prompts_for(conversations, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, seed=seed)
        return self._generate(prompts, self.token_budget, max_rows=batch_size)

    def generate_prompts(self, prompts: list[Prompt], *,
                         token_budget: int | None = None) -> list[GenerationResult]:
        """One result per prompt, in order; a prompt that cannot run gets its own error."""
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {token_budget!r}")
        return self._generate(prompts, token_budget or self.token_budget, max_rows=None)

    def _generate(self, prompts: list[Prompt], token_budget: int,
                  max_rows: int | None) -> list[GenerationResult]:
        if self.model is None:
            self.load()
        context = self._context_limit()
        results: list[GenerationResult | None] = [None] * len(prompts)
        ready: list[tuple[int, list[int]]] = []
        for idx, prompt in enumerate(prompts):
            problem = prompt.problem()
            if problem is not None:
                results[idx] = GenerationResult("", 0, 0, problem)
                continue
            try:
                ids = prompt_ids(self.tokenizer, prompt.conversation)
            except Exception as exc:  # a bad template or message must not sink the batch
                results[idx] = GenerationResult("", 0, 0, f"prompt: {exc}")
                continue
            fitted, error = fit_prompt(ids, context, prompt.max_new_tokens, self.overflow)
            if fitted is None:
                overlong = error is not None and error.endswith("(overflow = fail)")
                results[idx] = GenerationResult("", len(ids) if overlong else 0, 0, error)
                continue
            ready.append((idx, fitted))
        ids_of = dict(ready)
        for batch in _sub_batches(ready, prompts, token_budget, max_rows, self.step_rows):
            for idx, res in zip(batch, self._run_safely(batch, ids_of, prompts), strict=True):
                results[idx] = res
        return [r if r is not None else GenerationResult("", 0, 0, "not run") for r in results]

    def _run_safely(self, batch: list[int], ids_of: dict[int, list[int]],
                    prompts: list[Prompt]) -> list[GenerationResult]:
        try:
            return self._run_batch([ids_of[i] for i in batch], [prompts[i] for i in batch])
        except Exception as exc:
            if len(batch) == 1:
                return [GenerationResult("", len(ids_of[batch[0]]), 0, f"generate: {exc}")]
            # Find which prompt broke the batch instead of failing all of them.
            log.warning("batch generate failed, retrying one by one: %s", exc)
            return [self._run_safely([i], ids_of, prompts)[0] for i in batch]

    def _run_batch(self, batch: list[list[int]], prompts: list[Prompt]) -> list[GenerationResult]:
        import torch

        from workers.generation.row_sampling import RowSampler

        pad_id = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
        eos = self._eos_ids()
        sampler = RowSampler(prompts, width, min(eos) if eos else None, self.device)
        # Always greedy for generate itself: RowSampler makes each sampled row's choice.
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(p.max_new_tokens for p in prompts), "pad_token_id": pad_id,
            "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if sampler.needed:
            kwargs["logits_processor"] = [sampler]
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                **kwargs,
            )
        return self._decode(out[:, width:], batch, prompts, eos)

    def _decode(self, new_tokens: torch.Tensor, batch: list[list[int]], prompts: list[Prompt],
                eos: set[int]) -> list[GenerationResult]:
        results = []
        for row, ids in enumerate(batch):
            toks = new_tokens[row].tolist()[: prompts[row].max_new_tokens]
            # Rows that finish early are padded (often with eos); count up to the first eos.
            stop = next((k + 1 for k, t in enumerate(toks) if t in eos), None)
            cut = stop if stop is not None else len(toks)
            text = self.tokenizer.decode(toks[:cut], skip_special_tokens=True)
            results.append(GenerationResult(text, len(ids), cut,
                                            finish_reason="stop" if stop else "length"))
        return results


def _sub_batches(ready: list[tuple[int, list[int]]], prompts: list[Prompt], token_budget: int,
                 max_rows: int | None, step_rows: int = 0) -> list[list[int]]:
    """Prompt indices cut into the sub-batches that cost least in all, each within
    ``token_budget`` (rows x (longest prompt + most new tokens), what the KV cache holds at
    the end; a prompt over it alone runs alone).

    Prompts are sorted by new-token limit, then length, and cut where padding would cost
    more than another ``generate`` call: a sub-batch costs its rows x (width + steps) plus
    ``step_rows`` x steps, the per-step work that does not grow with rows (the weights read
    once a step, generate's own bookkeeping), so one huge batch does not pad every prompt
    to the longest. Exact by dynamic programming over the sorted order."""
    order = sorted(ready, key=lambda item: (prompts[item[0]].max_new_tokens, len(item[1])))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[i]: least cost of the first i prompts
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        # Sorted ascending, so the last prompt of a sub-batch sets its width and steps.
        width, steps = len(order[end - 1][1]), prompts[order[end - 1][0]].max_new_tokens
        for start in range(end - 1, -1, -1):
            rows = end - start
            if rows > 1 and (rows * (width + steps) > token_budget
                             or (max_rows is not None and rows > max_rows)):
                break
            cost = best[start] + rows * (width + steps) + step_rows * steps
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches: list[list[int]] = []
    end = n
    while end > 0:
        batches.append([idx for idx, _ in order[cut[end]:end]])
        end = cut[end]
    return batches[::-1]
