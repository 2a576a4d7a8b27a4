from pathlib import Path

import pytest

from workers.fusion.genfuser import GenFuser


@pytest.fixture(scope="module")
def fuser(tiny_models: dict[str, Path]) -> GenFuser:
    return GenFuser.from_pretrained(str(tiny_models["tiny-fuser"]), device="cpu")


def test_prompt_format_is_exact(fuser: GenFuser) -> None:
    prompt = fuser.build_prompt("Explain tea.", "a cup", ["Boil water.", "Add tea leaves."])
    assert prompt == (
        "Instruction: Explain tea.</s>Input: a cup</s>"
        "Candidate 0: <extra_id_0>:Boil water.</s>"
        "Candidate 1: <extra_id_1>:Add tea leaves.</s>"
        "Summarize candidates into a better one for the given instruction:"
    )


def test_prompt_uses_sentinel_and_eos_tokens(fuser: GenFuser) -> None:
    prompt = fuser.build_prompt("i", "x", ["a", "b", "c"])
    tokens = fuser.tokenizer.convert_ids_to_tokens(
        fuser.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    )
    assert tokens.count("</s>") == 5
    assert {"<extra_id_0>", "<extra_id_1>", "<extra_id_2>"} <= set(tokens)


def test_long_candidates_and_source_are_cut_before_the_prompt(fuser: GenFuser) -> None:
    long = "the quick brown fox jumps over the lazy dog " * 100
    prompt = fuser.build_prompt("explain", long, [long, "short"])
    assert prompt.endswith("Summarize candidates into a better one for the given instruction:")
    cand0 = prompt.split("<extra_id_0>:")[1].split("</s>")[0]
    assert cand0.endswith("...")
    assert len(fuser._ids(cand0[:-3])) <= 128
    source = prompt.split("Input: ")[1].split("</s>")[0]
    assert len(fuser._ids(source)) <= 1024 - len(fuser._ids("explain"))
    assert "Candidate 1: <extra_id_1>:short</s>" in prompt


def test_fuse_returns_one_string_per_item(fuser: GenFuser) -> None:
    items = [
        ("Explain tea.", "a cup", ["Boil water.", "Add tea leaves.", "Wait."]),
        ("Say hi.", "", ["hello"]),
    ]
    out = fuser.fuse(items, num_beams=2, max_new_tokens=8, batch_size=2)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert fuser.fuse(items, num_beams=2, max_new_tokens=8, batch_size=2) == out
    assert len(fuser.revision) == 12
