"""generate_prompts on the transformers backend, on real tiny models: prompts gathered from
many chunks, each with its own decoding parameters, in one call."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.generation.prompts import GenerationResult, Prompt
from workers.generation.transformers_backend import TransformersGenerator, _sub_batches

TOPICS = ["the sea", "a red bicycle", "why the sky is blue, in detail and with care",
          "hi", "three prime numbers", "a long walk home through the quiet city at night",
          "tea", "how a compiler turns source text into machine code, step by step"]


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell me about {text}."}]


@pytest.fixture(scope="module")
def gen(tiny_models: dict[str, Path]) -> TransformersGenerator:
    g = TransformersGenerator(str(tiny_models["tiny-a"]), device="cpu")
    g.load()
    return g


def test_gathered_prompts_match_each_prompt_alone(gen: TransformersGenerator) -> None:
    # Greedy and seeded sampled prompts, several lengths and limits, mixed in one call whose
    # small budget forces several sub-batches: each output is what the prompt gives alone.
    prompts = []
    for i, topic in enumerate(TOPICS * 2):
        if i % 3 == 0:
            prompts.append(Prompt(conv(topic), max_new_tokens=10, temperature=1.0, top_p=0.9,
                                  seed=i))
        else:
            prompts.append(Prompt(conv(topic), max_new_tokens=4 + i % 9))
    gathered = gen.generate_prompts(prompts, token_budget=200)
    alone = [gen.generate_prompts([p])[0] for p in prompts]
    assert [r.text for r in gathered] == [r.text for r in alone]
    assert [r.completion_tokens for r in gathered] == [r.completion_tokens for r in alone]
    for prompt, result in zip(prompts, gathered, strict=True):
        assert result.error is None and result.text
        assert 0 < result.completion_tokens <= prompt.max_new_tokens
        assert result.finish_reason in ("stop", "length")
        if result.finish_reason == "length":
            assert result.completion_tokens == prompt.max_new_tokens


def test_a_greedy_prompt_ignores_its_batch_mates(gen: TransformersGenerator) -> None:
    target = Prompt(conv("a lighthouse keeper"), max_new_tokens=12)
    alone = gen.generate_prompts([target])[0]
    mates = [Prompt(conv(t), max_new_tokens=20, temperature=0.8, seed=3) for t in TOPICS]
    with_mates = gen.generate_prompts([*mates, target, *mates])[8]
    assert with_mates.text == alone.text
    assert with_mates.completion_tokens == alone.completion_tokens


def test_seeds_are_per_prompt(gen: TransformersGenerator) -> None:
    same = [Prompt(conv("the moon"), max_new_tokens=12, temperature=1.0, seed=s)
            for s in (5, 5, 6)]
    first, again, other = gen.generate_prompts(same)
    assert first.text == again.text
    assert first.text != other.text


def test_one_bad_prompt_fails_alone_and_order_is_kept(tiny_models: dict[str, Path]) -> None:
    g = TransformersGenerator(str(tiny_models["tiny-a"]), device="cpu", max_context=48,
                              overflow="fail")
    prompts = [Prompt(conv("x " * 200), max_new_tokens=4),       # over the context
               Prompt(conv("hi"), max_new_tokens=4),
               Prompt(conv("hi"), max_new_tokens=4, top_p=0.0),  # refused parameter
               Prompt(conv("hi"), max_new_tokens=48),            # no room at all
               Prompt(conv("tea"), max_new_tokens=3)]
    results = g.generate_prompts(prompts)
    assert len(results) == 5
    assert results[0].error is not None and "overflow = fail" in results[0].error
    assert results[0].prompt_tokens > 48
    assert results[2].error is not None and "top_p" in results[2].error
    assert results[3] == GenerationResult("", 0, 0, results[3].error) and results[3].error
    assert results[1].error is None and results[4].error is None
    assert results[1].text == g.generate([conv("hi")], max_new_tokens=4)[0].text
    assert results[4].completion_tokens <= 3


def _cost(batch: list[int], lengths: list[int], new: int, step_rows: int) -> int:
    return len(batch) * (max(lengths[i] for i in batch) + new) + step_rows * new


def test_sub_batches_stay_under_the_budget_and_sort_by_length() -> None:
    lengths = [50, 3, 20, 7, 90, 7, 33, 12]
    prompts = [Prompt([], max_new_tokens=10) for _ in lengths]
    ready = [(i, [0] * n) for i, n in enumerate(lengths)]
    batches = _sub_batches(ready, prompts, token_budget=200, max_rows=None, step_rows=8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)
    for batch in batches:
        assert _cost(batch, lengths, 10, 0) <= 200 or len(batch) == 1
    assert [4] in batches  # over the budget on its own: it still runs, alone
    assert _sub_batches(ready, prompts, token_budget=10**6, max_rows=3,
                        step_rows=1000)[0] == [1, 3, 5]


def test_a_large_budget_does_not_pad_every_prompt_to_the_longest() -> None:
    lengths = [10] * 7 + [500]
    prompts = [Prompt([], max_new_tokens=10) for _ in lengths]
    ready = [(i, [0] * n) for i, n in enumerate(lengths)]
    assert _sub_batches(ready, prompts, 10**6, None, step_rows=8) == [list(range(7)), [7]]
    # When a step costs as much as hundreds of rows (a GPU), one call takes them all.
    assert _sub_batches(ready, prompts, 10**6, None, step_rows=512) == [list(range(8))]


def test_sub_batches_are_the_cheapest_cut() -> None:
    import itertools
    import random

    rng = random.Random(1)
    for _ in range(40):
        lengths = sorted(rng.randint(1, 120) for _ in range(rng.randint(1, 7)))
        step_rows, budget = rng.choice((0, 4, 16, 64)), rng.choice((150, 400, 10**6))
        prompts = [Prompt([], max_new_tokens=16) for _ in lengths]
        ready = [(i, [0] * n) for i, n in enumerate(lengths)]
        got = _sub_batches(ready, prompts, budget, None, step_rows)
        n, cheapest = len(lengths), float("inf")
        for cuts in itertools.product((False, True), repeat=n - 1):  # every contiguous split
            bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
            split = [list(range(a, b)) for a, b in itertools.pairwise(bounds)]
            if all(len(b) == 1 or _cost(b, lengths, 16, 0) <= budget for b in split):
                cheapest = min(cheapest, sum(_cost(b, lengths, 16, step_rows) for b in split))
        assert sum(_cost(b, lengths, 16, step_rows) for b in got) == cheapest


def test_generate_keeps_its_old_call_shape(gen: TransformersGenerator) -> None:
    conversations = [conv(t) for t in TOPICS[:3]]
    old = gen.generate(conversations, max_new_tokens=6, batch_size=2)
    new = gen.generate_prompts([Prompt(c, max_new_tokens=6) for c in conversations])
    assert [r.text for r in old] == [r.text for r in new]
    assert all(r.finish_reason in ("stop", "length") for r in old)
