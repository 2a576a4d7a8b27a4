"""In-process vLLM (``vllm.LLM``), from the ``[gpu]`` extra and imported only when used.

Prompts are templated and tokenised here, with the model's own tokenizer, and sent as
token ids: ``LLM.chat`` ignores ``truncate_prompt_tokens``, and vLLM refuses a whole call
when one prompt is longer than the context. So a long prompt is cut from the left here
(overflow = "truncate") or fails alone (overflow = "fail"). Every prompt carries its own
``SamplingParams`` and all of them go to vLLM in one ``generate`` call, which schedules
its own batches.
"""

from __future__ import annotations

import logging
from typing import Any

from workers.devices import weights_revision
from workers.generation.prompts import (
    Conversation,
    GenerationResult,
    Prompt,
    fit_prompt,
    prompt_ids,
    prompts_for,
)

log = logging.getLogger(__name__)

MISSING = ("the vllm backend needs the vllm package, which is not installed: "
           "pip install 'blendq[gpu]' on a machine with a CUDA GPU")


class MissingExtraError(ImportError):
    pass


class VLLMGenerator:
    def __init__(self, path: str, revision: str | None = None, max_context: int | None = None,
                 overflow: str = "truncate", gpu_memory_utilization: float = 0.85,
                 tensor_parallel_size: int = 1, dtype: str = "auto") -> None:
        if overflow not in ("truncate", "fail"):
            raise ValueError(f"overflow must be 'truncate' or 'fail', got {overflow!r}")
        if not 0 < float(gpu_memory_utilization) <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1] (the fraction of the "
                             f"GPU this entry's engine takes), got {gpu_memory_utilization!r}")
        self.path = path
        self._revision = revision
        self.max_context = max_context
        self.overflow = overflow
        # Each engine takes this fraction of the GPU; entries (or workers) sharing one GPU
        # need fractions that sum below 1.
        self.engine_args = {"gpu_memory_utilization": float(gpu_memory_utilization),
                            "tensor_parallel_size": tensor_parallel_size, "dtype": dtype}
        self.llm: Any = None

    @property
    def revision(self) -> str:
        if self._revision is None:
            self._revision = weights_revision(self.path)
        return self._revision

    def load(self) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise MissingExtraError(MISSING) from exc
        self.llm = vllm.LLM(model=self.path, max_model_len=self.max_context,
                            **self.engine_args)

    def warm_up(self) -> None:
        self.generate_prompts([Prompt([{"role": "user", "content": "Hello"}], max_new_tokens=1)])

    def _context_limit(self) -> int:
        if self.max_context is not None:
            return int(self.max_context)
        # The engine's own limit, from the model config, when the registry names none.
        return int(self.llm.llm_engine.model_config.max_model_len)

    def generate(self, conversations: list[Conversation], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 batch_size: int = 8) -> list[GenerationResult]:
        # vLLM schedules its own batches; batch_size is the transformers backend's knob.
        return self.generate_prompts(prompts_for(
            conversations, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed))

    def generate_prompts(self, prompts: list[Prompt], *,
                         token_budget: int | None = None) -> list[GenerationResult]:
        """One result per prompt, in order. ``token_budget`` is not used: vLLM's scheduler
        bounds its batches itself (``max_num_batched_tokens``)."""
        if self.llm is None:
            self.load()
        import vllm

        tokenizer = self.llm.get_tokenizer()
        context = self._context_limit()
        results: list[GenerationResult | None] = [None] * len(prompts)
        slots: list[int] = []
        inputs: list[dict[str, list[int]]] = []
        params: list[Any] = []
        for idx, prompt in enumerate(prompts):
            problem = prompt.problem()
            if problem is not None:
                results[idx] = GenerationResult("", 0, 0, problem)
                continue
            try:
                ids = prompt_ids(tokenizer, prompt.conversation)
                fitted, error = fit_prompt(ids, context, prompt.max_new_tokens, self.overflow)
                if fitted is None:
                    overlong = error is not None and error.endswith("(overflow = fail)")
                    results[idx] = GenerationResult("", len(ids) if overlong else 0, 0, error)
                    continue
                sampling = vllm.SamplingParams(
                    max_tokens=prompt.max_new_tokens, temperature=float(prompt.temperature),
                    top_p=float(prompt.top_p), seed=prompt.seed)
            except Exception as exc:  # a bad template or a refused parameter: this prompt only
                results[idx] = GenerationResult("", 0, 0, f"prompt: {exc}")
                continue
            slots.append(idx)
            inputs.append({"prompt_token_ids": fitted})
            params.append(sampling)
        for idx, result in zip(slots, self._run(inputs, params), strict=True):
            results[idx] = result
        return [r if r is not None else GenerationResult("", 0, 0, "not run") for r in results]

    def _run(self, inputs: list[dict[str, list[int]]], params: list[Any]) -> list[GenerationResult]:
        if not inputs:
            return []
        try:
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
        except Exception as exc:
            if len(inputs) == 1:
                return [GenerationResult("", len(inputs[0]["prompt_token_ids"]), 0,
                                         f"generate: {type(exc).__name__}: {exc}")]
            # vLLM validates a whole call before it starts: find the prompt it refused.
            log.warning("vllm generate failed, retrying one by one: %s", exc)
            return [self._run([one], [p])[0] for one, p in zip(inputs, params, strict=True)]
        results = []
        for output in outputs:
            completion = output.outputs[0]
            results.append(GenerationResult(
                completion.text, len(output.prompt_token_ids), len(completion.token_ids),
                finish_reason=completion.finish_reason))
        return results
