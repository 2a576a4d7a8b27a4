"""The vLLM backend's own logic: truncation with the model's tokenizer, overflow = "fail"
per prompt, one SamplingParams per prompt in one call, finish_reason, the registry guard.

vllm cannot be installed on this machine (CUDA only, it pins its own torch), so the one
thing stubbed is the ``vllm`` module itself, at the import boundary: a fake ``LLM`` that
records what it is given and answers in vLLM's output shape, and a ``SamplingParams`` that
keeps its arguments. The tokenizer and chat template are the real tiny model's. What vLLM
then does with the requests is checked only on a GPU host.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest

from orchestration.registry import ModelEntry, RegistryError
from workers.generation.backends import create_generator
from workers.generation.prompts import Prompt
from workers.generation.vllm_backend import VLLMGenerator


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("max_tokens", 1) < 1:  # as vLLM's own check
            raise ValueError(f"max_tokens must be at least 1, got {kwargs['max_tokens']}")
        self.kwargs = kwargs


class FakeLLM:
    created: ClassVar[list[dict[str, Any]]] = []
    refuse_max_tokens: ClassVar[int | None] = None  # a whole call fails when a prompt asks this

    def __init__(self, model: str, **kwargs: Any) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.kwargs = kwargs
        self.calls: list[tuple[list[dict[str, list[int]]], list[FakeSamplingParams]]] = []
        model_len = kwargs.get("max_model_len") or 2048
        self.llm_engine = types.SimpleNamespace(
            model_config=types.SimpleNamespace(max_model_len=model_len))
        FakeLLM.created.append({"model": model, **kwargs})

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: list[dict[str, list[int]]], params: list[FakeSamplingParams],
                 use_tqdm: bool = True) -> list[Any]:
        assert isinstance(params, list) and len(params) == len(prompts)
        self.calls.append((prompts, params))
        limit = self.llm_engine.model_config.max_model_len
        outputs = []
        for prompt, p in zip(prompts, params, strict=True):
            ids = prompt["prompt_token_ids"]
            if len(ids) + p.kwargs["max_tokens"] > limit:  # vLLM refuses the whole call
                raise ValueError(f"prompt of {len(ids)} tokens is longer than {limit}")
            if p.kwargs["max_tokens"] == self.refuse_max_tokens:
                raise ValueError("refused")
            n = min(p.kwargs["max_tokens"], 3)
            completion = types.SimpleNamespace(
                text=f"seed={p.kwargs['seed']} t={p.kwargs['temperature']}",
                token_ids=list(range(n)),
                finish_reason="length" if n == p.kwargs["max_tokens"] else "stop")
            outputs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[completion]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeLLM]:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.created = []
    FakeLLM.refuse_max_tokens = None
    return FakeLLM


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_long_prompts_are_cut_from_the_left_with_the_models_tokenizer(
        fake_vllm: type[FakeLLM], tiny_models: dict[str, Path]) -> None:
    generator = VLLMGenerator(str(tiny_models["tiny-a"]), max_context=64)
    generator.load()
    long = conv("the quick brown fox " * 60)
    results = generator.generate_prompts([Prompt(long, max_new_tokens=16),
                                          Prompt(conv("hi"), max_new_tokens=16)])
    assert [r.error for r in results] == [None, None]
    (prompts, _), = generator.llm.calls
    full = generator.llm.get_tokenizer().apply_chat_template(
        long, add_generation_prompt=True, tokenize=False)
    full_ids = generator.llm.get_tokenizer()(full, add_special_tokens=False)["input_ids"]
    assert prompts[0]["prompt_token_ids"] == full_ids[-48:]  # the end, incl. the gen prompt
    assert results[0].prompt_tokens == 48
    assert len(prompts[1]["prompt_token_ids"]) == results[1].prompt_tokens < 48


def test_overflow_fail_fails_only_the_long_prompt(fake_vllm: type[FakeLLM],
                                                  tiny_models: dict[str, Path]) -> None:
    generator = VLLMGenerator(str(tiny_models["tiny-a"]), max_context=64, overflow="fail")
    generator.load()
    results = generator.generate_prompts([
        Prompt(conv("hi"), max_new_tokens=4),
        Prompt(conv("word " * 100), max_new_tokens=4),
        Prompt(conv("no room"), max_new_tokens=64),
        Prompt(conv("tea"), max_new_tokens=2)])
    assert results[1].error is not None and "overflow = fail" in results[1].error
    assert results[1].prompt_tokens > 60 and results[1].text == ""
    assert results[2].error is not None and "leaves no room" in results[2].error
    assert results[0].error is None and results[3].error is None
    (prompts, _), = generator.llm.calls  # the others went in one call
    assert len(prompts) == 2


def test_each_prompt_keeps_its_own_params_in_one_call(fake_vllm: type[FakeLLM],
                                                      tiny_models: dict[str, Path]) -> None:
    generator = VLLMGenerator(str(tiny_models["tiny-a"]))
    prompts = [Prompt(conv("a"), max_new_tokens=2),
               Prompt(conv("b"), max_new_tokens=8, temperature=0.7, top_p=0.9, seed=1),
               Prompt(conv("c"), max_new_tokens=5, temperature=1.0, top_p=0.95, seed=2),
               Prompt(conv("d"), max_new_tokens=2)]
    results = generator.generate_prompts(prompts)
    assert len(generator.llm.calls) == 1
    _, params = generator.llm.calls[0]
    assert [p.kwargs for p in params] == [
        {"max_tokens": 2, "temperature": 0.0, "top_p": 1.0, "seed": None},
        {"max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 1},
        {"max_tokens": 5, "temperature": 1.0, "top_p": 0.95, "seed": 2},
        {"max_tokens": 2, "temperature": 0.0, "top_p": 1.0, "seed": None}]
    assert [r.text for r in results] == ["seed=None t=0.0", "seed=1 t=0.7", "seed=2 t=1.0",
                                         "seed=None t=0.0"]
    assert [r.finish_reason for r in results] == ["length", "stop", "stop", "length"]
    assert [r.completion_tokens for r in results] == [2, 3, 3, 2]
    # The old call shape goes the same way.
    old = generator.generate([conv("a")], max_new_tokens=2, batch_size=1)
    assert old[0].text == results[0].text


def test_a_call_vllm_refuses_is_retried_prompt_by_prompt(fake_vllm: type[FakeLLM],
                                                         tiny_models: dict[str, Path]) -> None:
    generator = VLLMGenerator(str(tiny_models["tiny-a"]))
    fake_vllm.refuse_max_tokens = 13
    results = generator.generate_prompts([Prompt(conv("a"), max_new_tokens=4),
                                          Prompt(conv("b"), max_new_tokens=13),
                                          Prompt(conv("c"), max_new_tokens=4, top_p=2.0)])
    assert results[0].error is None and results[0].text
    assert results[1].error == "generate: ValueError: refused"
    assert results[2].error is not None and "top_p" in results[2].error


def test_registry_guards_and_per_entry_gpu_fraction(fake_vllm: type[FakeLLM],
                                                    tiny_models: dict[str, Path]) -> None:
    path = str(tiny_models["tiny-a"])
    full = ModelEntry(name="big", role="generator", backend="vllm", path=path,
                      params={"max_context": 256, "max_new_tokens": 256})
    with pytest.raises(RegistryError, match=r"'big'.*max_context \(256\) - max_new_tokens"):
        create_generator(full, path)
    shared = ModelEntry(name="half", role="generator", backend="vllm", path=path,
                        params={"gpu_memory_utilization": 1.5})
    with pytest.raises(RegistryError, match="gpu_memory_utilization"):
        create_generator(shared, path)
    for name, fraction in (("a", 0.4), ("b", 0.45)):
        entry = ModelEntry(name=name, role="generator", backend="vllm", path=path,
                           params={"gpu_memory_utilization": fraction, "max_context": 512,
                                   "max_new_tokens": 64})
        create_generator(entry, path)
    assert [(c["gpu_memory_utilization"], c["max_model_len"]) for c in fake_vllm.created] == [
        (0.4, 512), (0.45, 512)]
