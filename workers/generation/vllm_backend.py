"""In-process vLLM (``vllm.LLM``), from the ``[gpu]`` extra and imported only when used."""

from __future__ import annotations

from typing import Any

from workers.devices import weights_revision
from workers.generation.transformers_backend import Conversation, GenerationResult

MISSING = ("the vllm backend needs the vllm package, which is not installed: "
           "pip install 'blendq[gpu]' on a machine with a CUDA GPU")


class MissingExtraError(ImportError):
    pass


class VLLMGenerator:
    def __init__(self, path: str, revision: str | None = None, max_context: int | None = None,
                 overflow: str = "truncate", gpu_memory_utilization: float = 0.85,
                 tensor_parallel_size: int = 1, dtype: str = "auto") -> None:
        self.path = path
        self._revision = revision
        self.max_context = max_context
        self.overflow = overflow
        self.engine_args = {"gpu_memory_utilization": gpu_memory_utilization,
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
        self.generate([[{"role": "user", "content": "Hello"}]], max_new_tokens=1)

    def generate(self, conversations: list[Conversation], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 batch_size: int = 8) -> list[GenerationResult]:
        # vLLM schedules its own batches; batch_size is the transformers backend's knob.
        import vllm

        params = vllm.SamplingParams(
            max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            truncate_prompt_tokens=(self.max_context - max_new_tokens
                                    if self.max_context and self.overflow == "truncate"
                                    else None))
        results = []
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        for output in outputs:
            completion = output.outputs[0]
            results.append(GenerationResult(completion.text, len(output.prompt_token_ids),
                                            len(completion.token_ids)))
        return results
