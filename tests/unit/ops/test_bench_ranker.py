"""The ranker benchmark runs end to end on the tiny ranker and checks its own outputs."""

from __future__ import annotations

import pytest

from ops.bench import ranker as bench


def test_tiny_benchmark_prints_the_table_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--shape", "tiny", "--requests", "6", "--candidates", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("tiny     speed-up")
    assert "identical within" in lines[-1]
    assert "72" in lines[-3]  # 6 requests x 12 ordered pairs, both ways


def test_pairrm_shape_is_deberta_v3_large() -> None:
    from transformers import DebertaV2Config

    config = DebertaV2Config(**bench.DEBERTA_V3_LARGE)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size, config.vocab_size) == (1024, 24, 16, 4096, 128005)
    assert config.relative_attention and not config.position_biased_input
