import re
from pathlib import Path

import pytest

from workers.generation.transformers_backend import GenerationResult, TransformersGenerator
from workers.tiny_models import build_tiny_generator

CONVS = [
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France? Explain how you know."},
    ],
]


@pytest.fixture(scope="module")
def gen(tiny_models: dict[str, Path]) -> TransformersGenerator:
    g = TransformersGenerator(str(tiny_models["tiny-a"]), device="cpu")
    g.load()
    g.warm_up()
    return g


def test_greedy_outputs_are_non_empty_and_repeat(gen: TransformersGenerator) -> None:
    first = gen.generate(CONVS, max_new_tokens=12)
    second = gen.generate(CONVS, max_new_tokens=12)
    assert [r.text for r in first] == [r.text for r in second]
    for r in first:
        assert r.error is None
        assert r.text
        assert r.prompt_tokens > 0
        assert 0 < r.completion_tokens <= 12


def test_left_padding_gives_same_text_alone_and_batched(gen: TransformersGenerator) -> None:
    batched = gen.generate(CONVS, max_new_tokens=12, batch_size=8)
    alone = [gen.generate([c], max_new_tokens=12)[0] for c in CONVS]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in alone]


def test_sampling_repeats_with_a_seed(gen: TransformersGenerator) -> None:
    a = gen.generate(CONVS, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    b = gen.generate(CONVS, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    assert [r.text for r in a] == [r.text for r in b]


def test_models_with_different_seeds_differ(tiny_models: dict[str, Path]) -> None:
    texts = []
    for name in ("tiny-a", "tiny-b", "tiny-c"):
        g = TransformersGenerator(str(tiny_models[name]), device="cpu")
        g.load()
        texts.append(tuple(r.text for r in g.generate(CONVS, max_new_tokens=8)))
        assert re.fullmatch(r"[0-9a-f]{12}", g.revision)
    assert len(set(texts)) == 3


def test_long_prompts_are_cut_from_the_left(tiny_models: dict[str, Path]) -> None:
    g = TransformersGenerator(str(tiny_models["tiny-a"]), device="cpu", max_context=40)
    g.load()
    long = [{"role": "user", "content": "the quick brown fox " * 50}]
    res = g.generate([long, CONVS[1]], max_new_tokens=10)
    assert res[0].error is None
    assert res[0].prompt_tokens == 30
    assert res[1].prompt_tokens < 30
    # No room left for any prompt: a per-prompt error, not an exception.
    (bad,) = g.generate([CONVS[1]], max_new_tokens=40)
    assert bad == GenerationResult("", 0, 0, bad.error) and bad.error


def test_missing_model_dir_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        TransformersGenerator(str(missing)).load()


def test_revision_given_wins(tiny_models: dict[str, Path]) -> None:
    assert TransformersGenerator(str(tiny_models["tiny-b"]), revision="v1").revision == "v1"


def test_generator_without_chat_template_joins_messages(tmp_path: Path) -> None:
    path = build_tiny_generator(tmp_path / "plain", seed=5)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    g = TransformersGenerator(str(path), device="cpu")
    g.load()
    if g.tokenizer.chat_template:
        pytest.skip("tokenizer keeps its template in tokenizer_config.json")
    (r,) = g.generate([CONVS[2]], max_new_tokens=4)
    expected = len(g.tokenizer("Answer briefly.\n" + CONVS[2][1]["content"])["input_ids"])
    assert r.error is None and r.prompt_tokens == expected
