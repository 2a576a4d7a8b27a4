"""Candidate generation with Hugging Face ``generate`` (the backend that needs no vLLM).

Prompts are left-padded so every row's new tokens start at the same column, which lets
a batch be decoded by slicing; greedy output for a prompt then does not depend on what
else was in its batch (up to kernel numerics on GPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.devices import pick_device, pick_dtype, weights_revision

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]

# Used only when neither the caller nor the model config states a context length.
_FALLBACK_CONTEXT = 2048


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None  # per-prompt failure reason; text is "" then


class TransformersGenerator:
    def __init__(
        self,
        path: str,
        revision: str | None = None,
        device: str | None = None,
        max_context: int | None = None,
        overflow: str = "truncate",
    ) -> None:
        if overflow not in ("truncate", "fail"):
            raise ValueError(f"overflow must be 'truncate' or 'fail', got {overflow!r}")
        self.path = path
        self.overflow = overflow
        self._revision = revision
        self.device = pick_device(device)
        self.max_context = max_context
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
        self.generate([[{"role": "user", "content": "Hello"}]], max_new_tokens=1)

    def _context_limit(self) -> int:
        if self.max_context is not None:
            return self.max_context
        limit = getattr(self.model.config, "max_position_embeddings", None)
        return int(limit) if limit else _FALLBACK_CONTEXT

    def _prompt_ids(self, conversation: Conversation) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            # The template already carries bos and role markers.
            ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        else:
            text = "\n".join(m.get("content", "") for m in conversation)
            ids = tok(text, verbose=False)["input_ids"]
        return list(ids)

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
        if self.model is None:
            self.load()
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        budget = self._context_limit() - max_new_tokens
        results: list[GenerationResult | None] = [None] * len(conversations)
        prompts: list[tuple[int, list[int]]] = []
        for idx, conv in enumerate(conversations):
            try:
                ids = self._prompt_ids(conv)
            except Exception as exc:  # a bad template or message must not sink the batch
                results[idx] = GenerationResult("", 0, 0, f"prompt: {exc}")
                continue
            if budget < 1:
                results[idx] = GenerationResult(
                    "", 0, 0, f"max_new_tokens {max_new_tokens} leaves no room for the prompt"
                )
                continue
            if len(ids) > budget and self.overflow == "fail":
                results[idx] = GenerationResult(
                    "", len(ids), 0,
                    f"prompt is {len(ids)} tokens; the context leaves room for {budget} "
                    f"(overflow = fail)")
                continue
            # Keep the end: the latest turns and the generation prompt matter most.
            prompts.append((idx, ids[-budget:]))

        def run(batch: list[list[int]]) -> list[GenerationResult]:
            return self._run_batch(
                batch,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )

        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            try:
                outs = run([ids for _, ids in chunk])
            except Exception as exc:
                if len(chunk) == 1:
                    idx, ids = chunk[0]
                    results[idx] = GenerationResult("", len(ids), 0, f"generate: {exc}")
                    continue
                # Find which prompt broke the batch instead of failing all of them.
                log.warning("batch generate failed, retrying one by one: %s", exc)
                outs = []
                for _, ids in chunk:
                    try:
                        outs.extend(run([ids]))
                    except Exception as one_exc:
                        outs.append(GenerationResult("", len(ids), 0, f"generate: {one_exc}"))
            for (idx, _), res in zip(chunk, outs, strict=True):
                results[idx] = res
        return [r if r is not None else GenerationResult("", 0, 0, "not run") for r in results]

    def _run_batch(
        self,
        batch: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> list[GenerationResult]:
        import torch

        pad_id = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                **kwargs,
            )
        return self._decode(out[:, width:], batch)

    def _decode(self, new_tokens: torch.Tensor, batch: list[list[int]]) -> list[GenerationResult]:
        eos = self._eos_ids()
        results = []
        for row, ids in enumerate(batch):
            toks = new_tokens[row].tolist()
            # Rows that finish early are padded (often with eos); count up to the first eos.
            cut = next((k + 1 for k, t in enumerate(toks) if t in eos), len(toks))
            text = self.tokenizer.decode(toks[:cut], skip_special_tokens=True)
            results.append(GenerationResult(text, len(ids), cut))
        return results
