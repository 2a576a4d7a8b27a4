"""Device and dtype choice shared by every model wrapper."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(preferred: str | None = None) -> str:
    """The caller's device if given, else "cuda" when one is visible, else "cpu"."""
    if preferred:
        return preferred
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str) -> torch.dtype:
    """bf16 on GPUs (halves memory, no fp16 overflow); fp32 on CPU, where bf16 is slow."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def weights_revision(path: str | Path, length: int = 12) -> str:
    """Short sha256 over a model directory's weight files (names and bytes, sorted).

    Stands in for a hub commit when a model has none, so stored rows still say which
    weights produced them.
    """
    import hashlib

    root = Path(path)
    files = (
        [root]
        if root.is_file()
        else sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    )
    if not files:
        raise FileNotFoundError(f"no weight files under {root}")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() if f != root else f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]
