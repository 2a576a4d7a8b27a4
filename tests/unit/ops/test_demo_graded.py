"""The demo recipe's open questions: four quality levels written from one table row, the
levels differing exactly where they should, and no overlap with the hand-written
held-out set the ranker is judged on."""

from __future__ import annotations

import re

from ops.bench import ranker_heldout
from ops.demo import ranker_graded
from ops.demo.ranker_data import ALL_FAMILIES, GRADED_FAMILIES, make_prompts, split


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=\.) ", text)


def test_each_open_question_has_the_four_levels() -> None:
    prompts = [p for p in make_prompts(900, seed=0, families=ALL_FAMILIES)
               if p.family in GRADED_FAMILIES]
    assert {p.family for p in prompts} == set(GRADED_FAMILIES) and len(prompts) > 200
    for p in prompts:
        by_kind = {c.kind: c for c in p.candidates}
        assert sorted(p.quality(c) for c in p.candidates) == [0, 0, 0, 1, 2, 3], p.source
        correct, flaw, wrong = by_kind["correct"], by_kind["one_flaw"], by_kind["fluent_wrong"]
        thing = p.key.split(":", 1)[1]
        assert thing.lower() in correct.text.lower() and p.is_correct(correct)
        ours, flawed, wrongs = (_sentences(c.text) for c in (correct, flaw, wrong))
        assert len(ours) == len(flawed) == len(wrongs)
        # One flaw: one detail changed, the asked fact (first sentence) kept.
        assert sum(a != b for a, b in zip(ours, flawed, strict=True)) == 1
        assert ours[0] == flawed[0]
        # Fluent but wrong: the asked fact itself is another row's.
        assert ours[0] != wrongs[0]
        cut = by_kind["cut_off"].text
        assert correct.text.startswith(cut) and len(cut) < len(correct.text)
        assert thing.lower() not in by_kind["off_topic"].text.lower()
        assert len({c.text for c in p.candidates}) == len(p.candidates)


def test_the_table_facts_are_the_correct_answers() -> None:
    rows = {(f, r[0]): r for f, fam in ranker_graded.FAMILIES.items() for r in fam.rows}
    for p in make_prompts(250, seed=3, families=GRADED_FAMILIES):
        row = rows[(p.family, p.key.split(":", 1)[1])]
        correct = next(c.text for c in p.candidates if p.quality(c) == 3)
        stated = [fact for fact in row[1:] if fact in correct]
        assert len(stated) >= 2, (p.source, correct)


def test_splits_of_open_questions_share_no_question() -> None:
    train, test, _ = split(make_prompts(900, seed=0, families=ALL_FAMILIES), 0.2, "convert")
    assert {p.family for p in test} >= set(GRADED_FAMILIES)
    assert not {(p.family, p.key) for p in train} & {(p.family, p.key) for p in test}


def test_the_hand_written_set_is_nothing_the_recipe_writes() -> None:
    items = ranker_heldout.load()
    assert len(items) >= 80
    assert all(sorted(it.quality(i) for i in range(4)) == [0, 1, 2, 3] for it in items)
    generated = make_prompts(1500, seed=0, families=ALL_FAMILIES)
    sources = {p.source for p in generated}
    texts = {c.text for p in generated for c in p.candidates}
    things = [r[0].lower() for fam in ranker_graded.FAMILIES.values() for r in fam.rows]
    for it in items:
        assert it.source not in sources and not set(it.texts) & texts
        instruction = it.source.split("\n", 1)[0].lower()
        assert not [t for t in things if re.search(rf"\b{re.escape(t)}\b", instruction)]


def test_an_open_question_is_off_topic_with_another_open_questions_answer() -> None:
    prompts = make_prompts(400, seed=0, families=ALL_FAMILIES)
    graded = [p for p in prompts if p.family in GRADED_FAMILIES]
    correct = {c.text for p in graded for c in p.candidates if c.kind == "correct"}
    for p in graded:
        off = next(c.text for c in p.candidates if c.kind == "off_topic")
        own = next(c.text for c in p.candidates if c.kind == "correct")
        # As fluent as the prompt's own answer: only relevance tells them apart.
        assert off in correct and off != own
