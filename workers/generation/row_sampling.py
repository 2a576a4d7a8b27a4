"""Per-row decoding inside one HF ``generate`` call (imports torch; load it lazily).

HF ``generate`` takes one temperature, one top_p and one global random stream for the
whole batch, so a sampled row's text would depend on what else was batched with it. This
processor samples every sampled row itself, with the row's own temperature, top_p and a
generator seeded from the row's seed, and hands ``generate`` a one-hot choice; the call
then runs greedy. Greedy rows pass through untouched. So prompts with any mix of decoding
parameters share one call, and a row's draw depends only on its own prompt and params.
It also ends rows that reached their own ``max_new_tokens`` (shorter than the call's) by
forcing end-of-sequence, so the call can stop once every row is done.
"""

from __future__ import annotations

import random

import torch
from transformers import LogitsProcessor

from workers.generation.prompts import Prompt


class RowSampler(LogitsProcessor):
    def __init__(self, prompts: list[Prompt], prompt_width: int, eos_id: int | None,
                 device: str | torch.device) -> None:
        self.width = prompt_width
        self.eos_id = eos_id
        self.sampled = [i for i, p in enumerate(prompts) if not p.greedy]
        self.limits = [p.max_new_tokens for p in prompts]
        self.uneven = len(set(self.limits)) > 1 and eos_id is not None
        self.rows = torch.tensor(self.sampled, dtype=torch.long, device=device)
        self.temperature = torch.tensor([[float(prompts[i].temperature)] for i in self.sampled],
                                        device=device)
        # top_p 1 keeps every token; inf so rounding in the cumulative sum drops none.
        self.top_p = torch.tensor([[float(prompts[i].top_p) if prompts[i].top_p < 1
                                    else float("inf")] for i in self.sampled], device=device)
        self.generators = []
        for i in self.sampled:
            seed = prompts[i].seed
            # No seed asked for: a fresh draw each call, as unseeded sampling means.
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else random.getrandbits(63))
            self.generators.append(generator)

    @property
    def needed(self) -> bool:
        return bool(self.sampled) or self.uneven

    def __call__(self, input_ids: torch.LongTensor,
                 scores: torch.FloatTensor) -> torch.FloatTensor:
        out: torch.Tensor = scores
        if self.sampled:
            out = scores.clone()
            logits = scores[self.rows].float() / self.temperature
            probs = torch.softmax(logits, dim=-1)
            if bool((self.top_p < 1).any()):
                probs = _nucleus(probs, self.top_p)
            picks = torch.cat([torch.multinomial(probs[k], 1, generator=g)
                               for k, g in enumerate(self.generators)])
            out[self.rows] = float("-inf")
            out[self.rows, picks] = 0.0
        if self.uneven:
            step = input_ids.shape[1] - self.width
            done = [r for r, limit in enumerate(self.limits) if step >= limit]
            if done:
                if out is scores:
                    out = scores.clone()
                out[done] = float("-inf")
                out[done, self.eos_id] = 0.0
        return out  # type: ignore[return-value]  # a FloatTensor: scores' dtype and shape


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep, per row, the most likely tokens whose mass reaches top_p (always the first)."""
    ordered, order = probs.sort(dim=-1, descending=True)
    before = ordered.cumsum(dim=-1) - ordered  # mass of the tokens ranked above each
    ordered = ordered.masked_fill(before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, ordered)
