import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.ranking.pairranker import PairRanker

SOURCE = "What is the capital of France? Please explain briefly."
PAIRS = [
    (SOURCE, "The capital of France is Paris.", "Paris."),
    (SOURCE, "Paris.", "The capital of France is Paris."),
    ("hi", "Thank you for your patience while we process your request.", "hello " * 30),
    ("summarize the report " * 40, "revenue grew", "The quarterly report shows growth."),
    (SOURCE, "", "London is the capital."),
] * 4


@pytest.fixture(scope="module")
def ranker(tiny_models: dict[str, Path]) -> PairRanker:
    return PairRanker.from_pretrained(str(tiny_models["tiny-ranker"]), device="cpu")


def test_logits_do_not_depend_on_batch_size(ranker: PairRanker) -> None:
    one = ranker.compare(PAIRS, batch_size=1)
    many = ranker.compare(PAIRS, batch_size=16)
    three = ranker.compare(PAIRS, batch_size=3)
    assert len(one) == len(PAIRS)
    assert max(abs(a - b) for a, b in zip(one, many, strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(one, three, strict=True)) < 1e-4
    assert one[0] != one[1]  # the ranker is order sensitive, so both orders are run


def test_save_load_round_trip_gives_identical_logits(ranker: PairRanker, tmp_path: Path) -> None:
    ranker.save_pretrained(tmp_path / "copy")
    names = {p.name for p in (tmp_path / "copy").iterdir()}
    assert {"config.json", "backbone_config.json", "model.safetensors"} <= names
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["source_maxlength"] == 128 and config["candidate_maxlength"] == 128
    again = PairRanker.from_pretrained(str(tmp_path / "copy"), device="cpu")
    assert again.compare(PAIRS[:5]) == ranker.compare(PAIRS[:5])
    assert again.revision == ranker.revision
    assert re.fullmatch(r"[0-9a-f]{12}", ranker.revision)


def test_weight_keys_follow_the_reference_layout(ranker: PairRanker) -> None:
    keys = set(ranker.state_dict())
    assert {k.split(".")[0] for k in keys} == {"pretrained_model", "head_layer"}
    assert {k for k in keys if k.startswith("head_layer")} == {
        "head_layer.1.weight",
        "head_layer.1.bias",
        "head_layer.4.weight",
        "head_layer.4.bias",
    }


def _copy_with_state(src: Path, dst: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_strict_loading_names_missing_key(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    path = _copy_with_state(
        tiny_models["tiny-ranker"], tmp_path / "broken", lambda s: s.pop("head_layer.4.bias")
    )
    with pytest.raises(ValueError, match=r"missing keys \['head_layer.4.bias'\]"):
        PairRanker.from_pretrained(str(path))


def test_strict_loading_names_unexpected_key(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import torch

    def add(state: dict[str, Any]) -> None:
        state["head_layer.7.weight"] = torch.zeros(1)

    path = _copy_with_state(tiny_models["tiny-ranker"], tmp_path / "extra", add)
    with pytest.raises(ValueError, match=r"unexpected keys \['head_layer.7.weight'\]"):
        PairRanker.from_pretrained(str(path))


def test_revision_from_config_wins(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "named"
    shutil.copytree(tiny_models["tiny-ranker"], path)
    config = json.loads((path / "config.json").read_text())
    config["revision"] = "pairrm-2024"
    (path / "config.json").write_text(json.dumps(config))
    assert PairRanker.from_pretrained(str(path), device="cpu").revision == "pairrm-2024"


def test_missing_checkpoint_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PairRanker.from_pretrained(str(tmp_path / "nowhere"))


def _segments(ranker: PairRanker, ids: list[int]) -> list[list[int]]:
    cls_id = ranker.cls_id
    starts = [i for i, t in enumerate(ids) if t == cls_id]
    assert len(starts) == 3
    return [ids[a:b] for a, b in zip(starts, [*starts[1:], len(ids)], strict=True)]


def test_encode_pair_layout(ranker: PairRanker) -> None:
    ids = ranker.encode_pair("what is tea", "boil water", "add tea leaves")
    src, c1, c2 = _segments(ranker, ids)
    tok = ranker.tokenizer
    for seg, prefix in ((src, "<|source|>"), (c1, "<|candidate1|>"), (c2, "<|candidate2|>")):
        assert seg[0] == tok.cls_token_id
        assert seg[1] == tok.convert_tokens_to_ids(prefix)
        assert seg[-1] == tok.sep_token_id
    assert tok.decode(src[2:-1]) == "what is tea"
    assert tok.decode(c2[2:-1]) == "add tea leaves"
    # Same content tokens as the tokenizer gives on its own.
    assert c1[2:-1] == tok("boil water", add_special_tokens=False)["input_ids"]


def test_encode_pair_shares_unused_source_budget(ranker: PairRanker) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 60
    # Long source: source cut to 128, candidates get exactly their own 128.
    src, c1, c2 = _segments(ranker, ranker.encode_pair(long_text, long_text, long_text))
    assert (len(src), len(c1), len(c2)) == (128, 128, 128)
    # Short source: candidates get half of the unused source budget each.
    src, c1, c2 = _segments(ranker, ranker.encode_pair("tea", long_text, "the answer"))
    assert len(src) == 4  # [CLS] <|source|> tea [SEP]
    assert len(c1) == 128 + (128 - 4) // 2
    assert c1[-1] == ranker.tokenizer.sep_token_id
    assert len(c2) == 5
    # Odd leftover: integer halving, as the reference does.
    src, c1, _ = _segments(ranker, ranker.encode_pair("the tea", long_text, "x"))
    assert (len(src), len(c1)) == (5, 128 + 123 // 2)


def test_encode_pair_does_not_depend_on_other_pairs(ranker: PairRanker) -> None:
    pair = ("hi", "the answer " * 100, "another")
    before = ranker.encode_pair(*pair)
    ranker.compare([("long source " * 200, "a", "b"), pair], batch_size=2)
    assert ranker.encode_pair(*pair) == before


def test_literal_sep_in_text_becomes_a_space(ranker: PairRanker) -> None:
    with_sep = ranker.encode_pair("tea [SEP] time", "a[SEP]b", "c")
    with_space = ranker.encode_pair("tea   time", "a b", "c")
    assert with_sep == with_space
    assert with_sep.count(ranker.tokenizer.sep_token_id) == 3


def test_prefix_text_inside_user_text_does_not_move_the_head(ranker: PairRanker) -> None:
    (logit,) = ranker.compare([("<|candidate2|> odd", "<|source|>", "<|candidate1|>")])
    assert logit == logit  # finite, no crash


def test_a_hub_id_loads_from_the_hub_cache(ranker: PairRanker, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    # The layout huggingface_hub keeps: refs/main names the snapshot of that commit.
    repo = tmp_path / "hub" / "models--llm-blender--PairRM"
    commit = "0" * 40
    ranker.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = PairRanker.from_pretrained("llm-blender/PairRM", device="cpu")
    assert loaded.compare(PAIRS[:3]) == ranker.compare(PAIRS[:3])
    with pytest.raises(FileNotFoundError, match="llm-blender/pair-ranker: not a local dir"):
        PairRanker.from_pretrained("llm-blender/pair-ranker", device="cpu")


def test_separate_candidate_attention_is_antisymmetric_and_not_the_default(
        tiny_models: dict[str, Path]) -> None:
    import torch

    path = str(tiny_models["tiny-ranker"])
    joint = PairRanker.from_pretrained(path, device="cpu")
    assert joint.candidate_attention == "joint"
    separate = PairRanker(PairRanker.from_pretrained(path, device="cpu").backbone, joint.tokenizer,
                          {**joint.config, "candidate_attention": "separate"}, device="cpu")
    separate.head_layer.load_state_dict(joint.head_layer.state_dict())
    # Swapping the candidates swaps their prefix tokens too; with the two prefixes equal
    # (as the demo MiniLM ranker's are) nothing else tells the slots apart.
    rows = separate.backbone.get_input_embeddings().weight
    with torch.no_grad():
        rows[separate.cand2_prefix_id] = rows[separate.cand1_prefix_id]
    a, b = "The capital of France is Paris.", "London is the capital, a much longer answer."
    forward, backward = separate.compare([(SOURCE, a, b), (SOURCE, b, a)])
    assert forward == pytest.approx(-backward, abs=1e-5) and forward != 0
    # Batched with longer rows (padding) or alone: the same logits.
    alone = separate.compare(PAIRS[:5], batch_size=1)
    batched = separate.compare(PAIRS[:5], batch_size=5)
    assert max(abs(x - y) for x, y in zip(alone, batched, strict=True)) < 1e-4
    assert joint.compare([(SOURCE, a, b)]) != separate.compare([(SOURCE, a, b)])
    with pytest.raises(ValueError, match="candidate_attention"):
        PairRanker(joint.backbone, joint.tokenizer,
                   {**joint.config, "candidate_attention": "both"}, device="cpu")
