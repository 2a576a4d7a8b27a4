"""Tiny random-weight models for tests and offline demos (no model hub here).

Each builder trains a small tokenizer on the corpus below with ``tokenizers``, builds a
model from a config with weights drawn under ``torch.manual_seed(seed)`` and saves it in
the normal Hugging Face layout, so the production loaders read it unchanged. Outputs are
gibberish but deterministic: the same seed gives the same files and the same generations.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Please summarize the following article in three sentences.",
    "Write a short poem about the sea and the wind.",
    "Translate the sentence into French and explain the grammar.",
    "What is the capital of France? The capital of France is Paris.",
    "Explain how a binary search works on a sorted list.",
    "The invoice was paid on time and the customer was satisfied.",
    "Our quarterly report shows revenue growth in every region.",
    "A good answer is accurate, helpful, concise and polite.",
    "The model compares two candidate answers and picks the better one.",
    "Rank the responses from best to worst for the given instruction.",
    "Fuse the best candidates into one answer that keeps their strengths.",
    "Python is a programming language that is easy to read.",
    "Databases store rows in tables, and queries read them back.",
    "The weather today is sunny with a light breeze from the west.",
    "She opened the window, and the morning light filled the room.",
    "Numbers like 1, 2, 3, 42 and 2024 appear in many documents.",
    "Customers ask about refunds, shipping times and order status.",
    "The assistant answered the question with a clear example.",
    "Instruction: describe the process. Input: a cup of tea.",
    "Boil the water, add the tea leaves, wait three minutes, then pour.",
    "Large language models generate text one token at a time.",
    "An ensemble of models often beats any single model alone.",
    "Check the facts before you publish the final summary.",
    "The meeting is scheduled for Monday at ten in the morning.",
    "He wrote a letter to the bank asking for a new card.",
    "Security reviews look for leaked keys and weak passwords.",
    "Please list three benefits of regular exercise.",
    "Exercise improves sleep, mood and heart health.",
    "Candidate answers may be long, short, wrong or partly right.",
    "The train leaves the station at noon and arrives at six.",
    "Which of these two replies is more helpful to the user?",
    "Thank you for your patience while we process your request.",
    "Summarize candidates into a better one for the given instruction.",
    "Error messages should say what went wrong and how to fix it.",
    "The library closes early on Sundays and public holidays.",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _corpus() -> list[str]:
    # Lower-cased copies too, so uncased and cased text both tokenize into real pieces.
    return CORPUS + [s.lower() for s in CORPUS]


def _train_bpe_bytelevel(vocab_size: int, specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def build_tiny_generator(path: Path, seed: int) -> Path:
    """A 2-layer LlamaForCausalLM with a byte-level BPE tokenizer and a chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe_bytelevel(640, specials),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
        # Wider init than the default 0.02 so different seeds clearly disagree.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def build_tiny_ranker(path: Path, seed: int) -> Path:
    """A PairRanker over a 2-layer BertModel with an uncased WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from workers.ranking.pairranker import PREFIX_TOKENS, PairRanker

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # The WordPiece trainer numbers "##" pieces in hash order, so two builds would differ;
    # a vocabulary of characters plus whole words, in a fixed order, is reproducible.
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter(
        w for line in _corpus() for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(line))
    )
    chars = sorted({c for w in counts for c in w})
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    pieces = specials + chars + [f"##{c}" for c in chars] + words
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.add_tokens(list(PREFIX_TOKENS))
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    backbone = BertModel(config)
    ranker_config = {
        "model_name": "blendq/tiny-bert",
        "source_maxlength": 128,
        "candidate_maxlength": 128,
        "n_tasks": 1,
        "drop_out": 0.05,
        "loss_type": "instructgpt",
    }
    PairRanker(backbone, fast, ranker_config, device="cpu").save_pretrained(path)
    return path


def build_tiny_fuser(path: Path, seed: int) -> Path:
    """A 2-layer T5ForConditionalGeneration with a T5-style tokenizer (sentinels included)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    extra = [f"<extra_id_{i}>" for i in range(10)]
    specials = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials + extra, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # T5 appends </s> to every encoded text, as the real tokenizer does.
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=extra,
        model_max_length=2048,
    )
    config = T5Config(
        vocab_size=len(fast),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        initializer_factor=5.0,
    )
    # T5 starts decoding from the pad token.
    config.decoder_start_token_id = fast.pad_token_id
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


TINY_MODELS: dict[str, tuple[Callable[[Path, int], Path], int]] = {
    "tiny-a": (build_tiny_generator, 1),
    "tiny-b": (build_tiny_generator, 2),
    "tiny-c": (build_tiny_generator, 3),
    "tiny-ranker": (build_tiny_ranker, 11),
    "tiny-fuser": (build_tiny_fuser, 21),
}


def ensure_tiny_models(cache_dir: Path) -> dict[str, Path]:
    """Build whichever tiny models are missing under cache_dir; return name -> directory.

    Each model is built in a private temporary directory and renamed into place, so a
    directory under its final name is always complete; when two processes race, the
    second rename fails and its copy is thrown away.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, (builder, seed) in TINY_MODELS.items():
        final = cache_dir / name
        if not final.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir))
            try:
                builder(tmp / "model", seed)
                try:
                    os.rename(tmp / "model", final)
                except OSError:
                    if not final.is_dir():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        paths[name] = final
    return paths
