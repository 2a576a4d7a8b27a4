"""PairRM (llm-blender's cross-encoding pairwise ranker) over any Hugging Face encoder.

Checkpoint layout (a directory, the layout of ``llm-blender/PairRM``):

- ``config.json``: the ranker config (``source_maxlength``, ``candidate_maxlength``,
  ``model_name`` of the backbone, ``n_tasks``, ``drop_out``, ``loss_type``, optional
  ``revision``). ``*_max_length`` spellings are accepted. If a ``ranker_config.json`` is
  present it is the ranker config instead, and ``config.json`` may then be the backbone's.
- ``backbone_config.json``: the backbone's own Hugging Face config (``model_type`` etc.),
  written by blendq so a checkpoint loads with no hub access. Without it the backbone
  config comes from ``config.json`` when that is a backbone config, else from
  ``AutoConfig.from_pretrained(model_name)`` (hub or local cache).
- tokenizer files, holding the added tokens ``<|source|>`` ``<|candidate1|>``
  ``<|candidate2|>`` ``<|candidate|>``.
- ``model.safetensors`` (preferred) or ``pytorch_model.bin`` with keys
  ``pretrained_model.*`` (backbone), ``head_layer.1.*`` and ``head_layer.4.*``.

Input building (what is reproduced from llm-blender's ``CrossCompareCollator``, and where
it differs on purpose):

- every segment is ``cls + tokens(prefix + text) + sep``, with ``cls``/``sep`` falling back
  to ``bos``/``eos``; a literal sep token string (``[SEP]`` for DeBERTa/BERT) in the text is
  replaced by a space before tokenizing, as the reference does;
- the source segment is cut to ``source_maxlength`` tokens (specials included); each
  candidate segment to ``candidate_maxlength + (source_maxlength - len(source)) // 2``;
  truncation drops tokens from the end of the text, keeping cls/sep;
- candidates are tokenized with ``<|candidate|>`` and that prefix id is swapped for
  ``<|candidate1|>``/``<|candidate2|>``, as the reference does (token-identical to
  tokenizing with those prefixes);
- differences: the unused source budget is that of this pair's own source (the reference
  uses the longest source in the batch, so its results change with batching; at batch
  size 1 the two agree); the three prefix positions are taken from the layout rather than
  by searching for the prefix ids, so prefix strings inside user text cannot misalign the
  head (the reference would crash or pick the wrong token).

``candidate_attention`` in the ranker config: ``"joint"`` (the default, PairRM's: every
token sees the whole input) or ``"separate"``: the same input and head, but the tokens of
each candidate see the source and their own candidate only, and the second candidate takes
the first one's position ids; the source still sees both. The candidates then never read
each other directly, so a small encoder judges each against the question instead of
learning shortcuts from comparing the two texts token by token; with the two candidate
prefix embeddings equal, the logit is antisymmetric (A over B = -(B over A)). The demo
MiniLM ranker uses it; it needs a backbone whose forward takes ``position_ids`` and a 4-D
additive attention mask (BERT-like models in transformers do).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.devices import pick_device, pick_dtype, weights_revision
from workers.metrics import observe_batches
from workers.ranking.batching import DEFAULT_BATCH_COST, DEFAULT_TOKEN_BUDGET, pack

if TYPE_CHECKING:
    import torch

SOURCE_PREFIX = "<|source|>"
CAND1_PREFIX = "<|candidate1|>"
CAND2_PREFIX = "<|candidate2|>"
CAND_PREFIX = "<|candidate|>"
PREFIX_TOKENS = (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX)

_RANKER_CONFIG_DEFAULTS: dict[str, Any] = {
    "ranker_type": "pairranker",
    "source_maxlength": 1224,
    "candidate_maxlength": 412,
    "n_tasks": 1,
    "drop_out": 0.05,
    "loss_type": "instructgpt",
}


def _config_int(config: Mapping[str, Any], name: str) -> int:
    alt = name.replace("maxlength", "max_length")
    value = config.get(name, config.get(alt, _RANKER_CONFIG_DEFAULTS.get(name)))
    if value is None:
        raise ValueError(f"ranker config lacks {name}")
    return int(value)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def checkpoint_dir(path: str) -> Path:
    """A local checkpoint directory, or the snapshot of a hub id such as
    ``llm-blender/PairRM`` (downloaded when the hub is reachable, else from the local
    hub cache)."""
    root = Path(path).expanduser()
    if root.is_dir():
        return root
    if root.exists() or not HUB_ID.match(path):
        raise FileNotFoundError(f"ranker checkpoint directory not found: {path}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=path))
    except Exception as exc:
        raise FileNotFoundError(
            f"ranker checkpoint {path}: not a local directory, and the hub id could not be "
            f"fetched or found in the hub cache ({type(exc).__name__}: {exc})") from exc


class PairRanker:
    """Scores "is candidate A better than B for this source" as a logit (positive: A)."""

    def __init__(
        self,
        backbone: Any,
        tokenizer: Any,
        config: Mapping[str, Any],
        device: str | None = None,
        weights_file: Path | None = None,
    ) -> None:
        from torch import nn

        self.config: dict[str, Any] = {**_RANKER_CONFIG_DEFAULTS, **config}
        self.source_maxlength = _config_int(self.config, "source_maxlength")
        self.candidate_maxlength = _config_int(self.config, "candidate_maxlength")
        self.tokenizer = tokenizer
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)
        drop = float(self.config.get("drop_out", 0.05))
        self.head_layer = nn.Sequential(
            nn.Dropout(drop),
            nn.Linear(2 * hidden, hidden),
            nn.Tanh(),
            nn.Dropout(drop),
            nn.Linear(hidden, int(self.config.get("n_tasks", 1))),
        )
        self.candidate_attention = str(self.config.get("candidate_attention", "joint"))
        if self.candidate_attention not in ("joint", "separate"):
            raise ValueError(f"candidate_attention {self.candidate_attention!r}: "
                             "joint or separate")
        self._weights_file = weights_file
        self._set_special_ids()
        self.device = pick_device(device)
        self.dtype: torch.dtype = pick_dtype(self.device)
        self.backbone.to(self.device, self.dtype).eval()
        self.head_layer.to(self.device, self.dtype).eval()

    def _set_special_ids(self) -> None:
        tok = self.tokenizer
        ids = {t: tok.convert_tokens_to_ids(t) for t in PREFIX_TOKENS}
        missing = [t for t, i in ids.items() if i is None or i == tok.unk_token_id]
        if missing:
            raise ValueError(f"tokenizer lacks the added tokens {missing}")
        self.source_prefix_id = ids[SOURCE_PREFIX]
        self.cand1_prefix_id = ids[CAND1_PREFIX]
        self.cand2_prefix_id = ids[CAND2_PREFIX]
        self.cand_prefix_id = ids[CAND_PREFIX]
        self.sep_token: str | None = tok.sep_token or tok.eos_token
        cls_token = tok.cls_token or tok.bos_token
        if self.sep_token is None:
            raise ValueError("tokenizer has neither a sep nor an eos token")
        self.sep_id: int = tok.convert_tokens_to_ids(self.sep_token)
        self.cls_id: int | None = tok.convert_tokens_to_ids(cls_token) if cls_token else None
        self.pad_id: int = tok.pad_token_id if tok.pad_token_id is not None else self.sep_id

    # ---- loading and saving -------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str, device: str | None = None) -> PairRanker:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        root = checkpoint_dir(path)
        ranker_cfg_file = root / "ranker_config.json"
        if not ranker_cfg_file.exists():
            ranker_cfg_file = root / "config.json"
        if not ranker_cfg_file.exists():
            raise FileNotFoundError(f"no config.json in ranker checkpoint {path}")
        config = json.loads(ranker_cfg_file.read_text())

        weights_file = _find_weights(root)
        state = _load_state(weights_file)

        backbone_cfg = _read_backbone_config(root, ranker_cfg_file)
        if backbone_cfg is not None:
            model_type = backbone_cfg.pop("model_type")
            hf_config = AutoConfig.for_model(model_type, **backbone_cfg)
        elif config.get("model_name"):
            hf_config = AutoConfig.from_pretrained(config["model_name"])
        else:
            raise ValueError(f"ranker checkpoint {path} names no backbone config")
        # The reference resizes embeddings to the tokenizer (added prefix tokens), so the
        # stored matrix, not the hub config, says how many rows there are.
        emb = state.get("pretrained_model.embeddings.word_embeddings.weight")
        if emb is not None:
            hf_config.vocab_size = int(emb.shape[0])

        tokenizer = AutoTokenizer.from_pretrained(str(root))
        backbone = AutoModel.from_config(hf_config)
        ranker = cls(backbone, tokenizer, config, device="cpu", weights_file=weights_file)
        ranker.load_state_dict(state)
        ranker.to(pick_device(device))
        return ranker

    def to(self, device: str) -> PairRanker:
        self.device = device
        self.dtype = pick_dtype(device)
        self.backbone.to(device, self.dtype)
        self.head_layer.to(device, self.dtype)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"pretrained_model.{k}": v for k, v in self.backbone.state_dict().items()}
        state.update({f"head_layer.{k}": v for k, v in self.head_layer.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict: any missing or unexpected key is an error naming the keys.

        Keys of non-persistent buffers (e.g. ``embeddings.position_ids``, which older
        transformers versions saved) are skipped: they hold no trained values.
        """
        expected = self.state_dict()
        buffers = {f"pretrained_model.{n}" for n, _ in self.backbone.named_buffers()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected) - buffers)
        if missing or unexpected:
            raise ValueError(
                f"ranker weights do not match the model: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        backbone_state = {
            k.removeprefix("pretrained_model."): v
            for k, v in state.items()
            if k.startswith("pretrained_model.") and k in expected
        }
        head_state = {
            k.removeprefix("head_layer."): v
            for k, v in state.items()
            if k.startswith("head_layer.")
        }
        self.backbone.load_state_dict(backbone_state, strict=True)
        self.head_layer.load_state_dict(head_state, strict=True)

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        # A stated revision named the weights it came with; saved weights get their hash.
        config = {k: v for k, v in self.config.items() if k != "revision"}
        (root / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (root / "backbone_config.json").write_text(self.backbone.config.to_json_string())
        self.tokenizer.save_pretrained(str(root))
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})

    @property
    def revision(self) -> str:
        rev = self.config.get("revision")
        if rev:
            return str(rev)
        if self._weights_file is None:
            raise ValueError("ranker has no revision: it was not loaded from a checkpoint")
        return weights_revision(self._weights_file)

    # ---- inputs -----------------------------------------------------------------------

    def _segment(self, prefix: str, text: str, max_len: int) -> list[int]:
        if self.sep_token:
            text = text.replace(self.sep_token, " ")
        content = list(
            self.tokenizer(prefix + text, add_special_tokens=False, verbose=False)["input_ids"]
        )
        head = [self.cls_id] if self.cls_id is not None else []
        keep = max(max_len - len(head) - 1, 1)  # the prefix token always survives
        return head + content[:keep] + [self.sep_id]

    def _encode(self, source: str, cand_a: str, cand_b: str) -> tuple[list[int], list[int]]:
        src = self._segment(SOURCE_PREFIX, source, self.source_maxlength)
        cand_len = self.candidate_maxlength + (self.source_maxlength - len(src)) // 2
        c1 = self._segment(CAND_PREFIX, cand_a, cand_len)
        c2 = self._segment(CAND_PREFIX, cand_b, cand_len)
        at = 1 if self.cls_id is not None else 0
        if src[at] != self.source_prefix_id or c1[at] != self.cand_prefix_id:
            raise ValueError("tokenizer split a prefix token; its added tokens are broken")
        c1[at] = self.cand1_prefix_id
        c2[at] = self.cand2_prefix_id
        positions = [at, len(src) + at, len(src) + len(c1) + at]
        return src + c1 + c2, positions

    def encode_pair(self, source: str, cand_a: str, cand_b: str) -> list[int]:
        """The input ids for one comparison; its length is what batching should sort by."""
        return self._encode(source, cand_a, cand_b)[0]

    # ---- scoring ----------------------------------------------------------------------

    def _forward(self, batch: list[tuple[list[int], list[int]]]) -> list[float]:
        return [float(x) for x in self.logits_tensor(batch).float().cpu().tolist()]

    def logits_tensor(self, batch: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Logits of one encoded batch as a tensor, with gradients when not in inference
        mode (training uses it; scoring goes through ``compare``)."""
        import torch

        input_ids, mask = padded(batch, self.pad_id)
        positions = torch.tensor([pos for _, pos in batch], dtype=torch.long, device=self.device)
        if self.candidate_attention == "separate":
            attention, position_ids = separate_candidates(batch, input_ids.shape[1], self.dtype)
            out = self.backbone(input_ids=input_ids.to(self.device),
                                attention_mask=attention.to(self.device),
                                position_ids=position_ids.to(self.device))
        else:
            out = self.backbone(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
            )
        hidden = out.last_hidden_state
        rows = torch.arange(len(batch), device=self.device).unsqueeze(-1)
        picked = hidden[rows, positions]  # [batch, 3, hidden]: source, cand1, cand2
        left = self.head_layer(torch.cat([picked[:, 0], picked[:, 1]], dim=-1))
        right = self.head_layer(torch.cat([picked[:, 0], picked[:, 2]], dim=-1))
        return (left - right).mean(dim=-1)

    def compare(self, pairs: list[tuple[str, str, str]], batch_size: int | None = None,
                token_budget: int = DEFAULT_TOKEN_BUDGET,
                batch_cost: int = DEFAULT_BATCH_COST) -> list[float]:
        """Logit of A over B for each (source, A, B), in the order given.

        ``token_budget`` bounds each batch's padded size (rows x longest row);
        ``batch_size`` optionally caps its rows too; ``batch_cost`` trades padding for
        fewer batches (``batching.pack``). None of them changes any logit.
        """
        results = [0.0] * len(pairs)
        for idxs, logits in self.iter_compare(pairs, batch_size, token_budget, batch_cost):
            for i, logit in zip(idxs, logits, strict=True):
                results[i] = logit
        return results

    def iter_compare(self, pairs: list[tuple[str, str, str]], batch_size: int | None = None,
                     token_budget: int = DEFAULT_TOKEN_BUDGET,
                     batch_cost: int = DEFAULT_BATCH_COST,
                     ) -> Iterator[tuple[list[int], list[float]]]:
        """(indices into ``pairs``, their logits) per batch, as each batch finishes, so a
        caller can store each batch before the next runs and keep what finished if a later
        batch fails. Batches are packed longest first under ``token_budget``."""
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        encoded = [self._encode(s, a, b) for s, a, b in pairs]
        lengths = [len(ids) for ids, _ in encoded]
        batches = pack(lengths, token_budget, batch_size, batch_cost)
        # blendq_batch_padding_ratio{stage="rank", model=<the backbone's name>}
        observe_batches("rank", Path(str(getattr(self.backbone.config, "_name_or_path", "")))
                        .name, lengths, batches)
        for idxs in batches:
            yield idxs, self.forward_encoded([encoded[i] for i in idxs])

    def encode(self, source: str, cand_a: str, cand_b: str) -> tuple[list[int], list[int]]:
        """Input ids and the three head positions of one comparison (training and
        benchmarks batch these themselves)."""
        return self._encode(source, cand_a, cand_b)

    def forward_encoded(self, batch: list[tuple[list[int], list[int]]]) -> list[float]:
        """One batch as given, padded to its longest row only (no fixed max length)."""
        import torch

        self.backbone.eval()
        self.head_layer.eval()
        # Entered per batch, not around a generator's yields, so the caller's code
        # between batches does not run in inference mode.
        with torch.inference_mode():
            return self._forward(batch)


def _find_weights(root: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {root}")


def _load_state(weights_file: Path) -> dict[str, torch.Tensor]:
    if weights_file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(weights_file))
    import torch

    state = torch.load(str(weights_file), map_location="cpu", weights_only=True)
    return dict(state)


def _read_backbone_config(root: Path, ranker_cfg_file: Path) -> dict[str, Any] | None:
    candidates = [root / "backbone_config.json"]
    if ranker_cfg_file.name != "config.json":
        candidates.append(root / "config.json")
    for f in candidates:
        if f.is_file():
            data: dict[str, Any] = json.loads(f.read_text())
            if "model_type" in data:
                return data
    return None


def padded(batch: Sequence[tuple[list[int], list[int]]],
           pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of encoded rows, right-padded to the longest row."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask


def separate_candidates(batch: Sequence[tuple[list[int], list[int]]], width: int,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive attention mask ([rows, 1, width, width]) and position ids of
    ``candidate_attention = "separate"``: the source sees all three segments, each
    candidate the source and itself, the second candidate at the first one's positions."""
    import torch

    allow = torch.zeros((len(batch), width, width), dtype=torch.bool)
    position_ids = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, pos) in enumerate(batch):
        # A segment starts one token before its prefix (cls), or at it without a cls.
        at = pos[0]
        first, second, end = pos[1] - at, pos[2] - at, len(ids)
        allow[row, :first, :end] = True
        allow[row, first:second, :second] = True
        allow[row, second:end, :first] = True
        allow[row, second:end, second:end] = True
        allow[row, end:, :end] = True  # padding rows: attend anywhere, never read
        position_ids[row, :second] = torch.arange(second)
        position_ids[row, second:end] = torch.arange(first, first + end - second)
    mask = torch.zeros((len(batch), 1, width, width), dtype=dtype)
    return mask.masked_fill(~allow[:, None], torch.finfo(dtype).min), position_ids
