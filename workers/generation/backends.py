"""Generation backends behind one small interface, chosen by the registry's ``backend``."""

from __future__ import annotations

from typing import Protocol

from orchestration.registry import ModelEntry, RegistryError
from workers.generation.backend_params import backend_options
from workers.generation.prompts import Conversation, GenerationResult, Prompt


class Generator(Protocol):
    @property
    def revision(self) -> str: ...

    def load(self) -> None: ...

    def warm_up(self) -> None: ...

    def generate(self, conversations: list[Conversation], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 batch_size: int = 8) -> list[GenerationResult]: ...

    def generate_prompts(self, prompts: list[Prompt], *,
                         token_budget: int | None = None) -> list[GenerationResult]:
        """One result per prompt, in input order; each prompt decodes with its own
        parameters and a prompt that cannot run gets ``error`` without failing the others.
        ``token_budget`` bounds one in-process batch (rows x (prompt + new tokens))."""
        ...


def check_entry(entry: ModelEntry) -> None:
    """Refuse registry params no prompt could run with, naming the entry and fields."""
    params = entry.params
    where = f"model {entry.name!r} params"
    for key in ("max_context", "max_new_tokens", "token_budget"):
        value = params.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise RegistryError(f"{where}: {key} must be a whole number >= 1, got {value!r}")
    context, new = params.get("max_context"), params.get("max_new_tokens")
    if context is not None and new is not None and context - new <= 0:
        raise RegistryError(
            f"{where}: max_context ({context}) - max_new_tokens ({new}) leaves no room for "
            "a prompt; raise max_context or lower max_new_tokens")
    fraction = params.get("gpu_memory_utilization")
    if fraction is not None and (not isinstance(fraction, int | float)
                                 or not 0 < fraction <= 1):
        raise RegistryError(f"{where}: gpu_memory_utilization must be in (0, 1], "
                            f"got {fraction!r}")


def create_generator(entry: ModelEntry, path: str) -> Generator:
    """A loaded generator for ``entry``; ``path`` is the resolved weights path or URL."""
    check_entry(entry)
    options = backend_options(entry)
    revision = entry.revision or None
    generator: Generator
    if entry.backend == "transformers":
        from workers.generation.transformers_backend import TransformersGenerator

        generator = TransformersGenerator(path, revision=revision, **options)
    elif entry.backend == "vllm":
        from workers.generation.vllm_backend import VLLMGenerator

        generator = VLLMGenerator(path, revision=revision, **options)
    elif entry.backend == "openai":
        from workers.generation.openai_backend import OpenAIGenerator

        generator = OpenAIGenerator(path, revision=revision, **options)
    else:
        raise ValueError(f"unknown generation backend {entry.backend!r}")
    generator.load()
    return generator
