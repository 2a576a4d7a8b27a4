"""Generation backends and the aggregator fuser, on real tiny models and real sockets."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from orchestration.registry import ModelEntry, parse_registry
from orchestration.settings import Settings
from workers.fusion.aggregator import SYSTEM_PROMPT, AggregatorFuser
from workers.generation.openai_backend import OpenAIGenerator
from workers.generation.transformers_backend import TransformersGenerator
from workers.model_store import ModelLoadError, get_model

HELLO = [[{"role": "user", "content": "Hello there, how are you today?"}]]


def test_vllm_missing_names_the_extra(tmp_path: Path) -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - a GPU machine with the extra installed
        pytest.fail("vllm is installed; this test checks the error when it is not")
    entry = ModelEntry(name="big", role="generator", backend="vllm", path=str(tmp_path))
    with pytest.raises(ModelLoadError) as raised:
        get_model(entry, Settings(model_cache=tmp_path))
    assert "pip install 'blendq[gpu]'" in str(raised.value)
    assert "'big'" in str(raised.value)


def test_registry_accepts_every_backend_and_refuses_others() -> None:
    text = """
[[models]]
name = "a"
role = "generator"
backend = "openai"
path = "http://127.0.0.1:8000/v1"
params = { model = "served", concurrency = 2 }

[[models]]
name = "f"
role = "fuser"
backend = "aggregator"
path = "/models/chat"
"""
    registry = parse_registry(text, "test")
    assert registry.get("a").backend == "openai"
    with pytest.raises(ValueError,
                       match="backend 'openai' is not one of genfuser, aggregator, null"):
        parse_registry(text.replace('backend = "aggregator"', 'backend = "openai"'), "test")


def test_overflow_fail_refuses_long_prompts_per_request(tiny_models: dict[str, Path]) -> None:
    generator = TransformersGenerator(str(tiny_models["tiny-a"]), max_context=40,
                                      overflow="fail")
    long = [{"role": "user", "content": "word " * 200}]
    results = generator.generate([long, HELLO[0]], max_new_tokens=4)
    assert results[0].error is not None and "overflow = fail" in results[0].error
    assert results[0].text == ""
    assert results[1].error is None and results[1].completion_tokens > 0


def test_overflow_truncate_keeps_the_end_of_long_prompts(tiny_models: dict[str, Path]) -> None:
    generator = TransformersGenerator(str(tiny_models["tiny-a"]), max_context=40)
    long = [{"role": "user", "content": "word " * 200}]
    result = generator.generate([long], max_new_tokens=4)[0]
    assert result.error is None
    assert result.prompt_tokens == 36


def test_seeded_sampling_repeats(tiny_models: dict[str, Path]) -> None:
    generator = TransformersGenerator(str(tiny_models["tiny-b"]))
    first = generator.generate(HELLO * 3, max_new_tokens=12, temperature=1.0, seed=7)
    again = generator.generate(HELLO * 3, max_new_tokens=12, temperature=1.0, seed=7)
    other = generator.generate(HELLO * 3, max_new_tokens=12, temperature=1.0, seed=8)
    assert [r.text for r in first] == [r.text for r in again]
    assert [r.text for r in first] != [r.text for r in other]


def test_aggregator_prompt_numbers_the_candidates() -> None:
    conversation = AggregatorFuser.build_conversation(
        "Name a colour.", "one word", ["Red.", "Blue is nice.", "x" * 50],
        max_candidate_chars=10)
    assert conversation[0] == {
        "role": "system",
        "content": f"{SYSTEM_PROMPT}\n1. Red.\n2. Blue is ni\n3. xxxxxxxxxx"}
    assert conversation[1] == {"role": "user", "content": "Name a colour.\n\none word"}


def test_aggregator_fuses_with_a_causal_model(tiny_models: dict[str, Path]) -> None:
    fuser = AggregatorFuser(str(tiny_models["tiny-c"]))
    outputs = fuser.fuse([("Say hi.", "", ["hi", "hello"]), ("Count.", "", ["1 2 3"])],
                         max_new_tokens=6)
    assert len(outputs) == 2 and all(isinstance(o, str) and o for o in outputs)
    assert fuser.revision == TransformersGenerator(str(tiny_models["tiny-c"])).revision


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_openai_backend_records_an_unreachable_server_per_request() -> None:
    port = _closed_port()
    generator = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", model="m", max_retries=1,
                                timeout=2)
    results = generator.generate(HELLO * 2, max_new_tokens=4)
    assert len(results) == 2
    for result in results:
        assert result.text == ""
        assert result.error is not None
        assert f"http://127.0.0.1:{port}/v1/chat/completions" in result.error
        assert "ConnectError" in result.error


def test_openai_backend_needs_the_named_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLENDQ_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="BLENDQ_TEST_KEY"):
        OpenAIGenerator("http://127.0.0.1:1/v1", model="m", api_key_env="BLENDQ_TEST_KEY")
