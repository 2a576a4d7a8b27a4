"""Device and dtype choice shared by every model wrapper."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


# The device a worker was pinned to (``manage.py worker ... --device``); models that name
# none in the registry load there.
DEVICE_ENV = "BLENDQ_DEVICE"
# What ``workers list`` shows: the device as the admin named it (cuda:3), while the process
# itself sees only that GPU, as cuda:0.
DEVICE_LABEL_ENV = "BLENDQ_DEVICE_LABEL"


def pin_device(device: str) -> None:
    """Pin this process to ``device`` ("cpu", "cuda", "cuda:N") before torch loads.

    cuda:N becomes CUDA_VISIBLE_DEVICES=N, so every library in the process (torch, vLLM,
    its NCCL) sees that one GPU and nothing else.
    """
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    os.environ[DEVICE_LABEL_ENV] = device
    kind, _, index = device.partition(":")
    if index:
        if not index.isdigit():
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
        os.environ["CUDA_VISIBLE_DEVICES"] = index
    os.environ[DEVICE_ENV] = kind


def device_label() -> str:
    """The device this worker was pinned to, or "auto" when none was named."""
    return os.environ.get(DEVICE_LABEL_ENV) or os.environ.get(DEVICE_ENV) or "auto"


def pick_device(preferred: str | None = None) -> str:
    """The caller's device if given, else the worker's pinned device, else "cuda" when one
    is visible, else "cpu"."""
    preferred = preferred or os.environ.get(DEVICE_ENV)
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
