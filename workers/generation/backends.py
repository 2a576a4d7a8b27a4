"""Generation backends behind one small interface, chosen by the registry's ``backend``."""

from __future__ import annotations

from typing import Protocol

from orchestration.registry import ModelEntry
from workers.generation.backend_params import backend_options
from workers.generation.transformers_backend import Conversation, GenerationResult


class Generator(Protocol):
    @property
    def revision(self) -> str: ...

    def load(self) -> None: ...

    def warm_up(self) -> None: ...

    def generate(self, conversations: list[Conversation], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 batch_size: int = 8) -> list[GenerationResult]: ...


def create_generator(entry: ModelEntry, path: str) -> Generator:
    """A loaded generator for ``entry``; ``path`` is the resolved weights path or URL."""
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
