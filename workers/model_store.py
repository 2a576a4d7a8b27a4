"""Models loaded once per process, keyed by registry entry."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog

from orchestration.registry import ModelEntry
from orchestration.settings import Settings
from workers.generation.backend_params import backend_options

log = structlog.get_logger(__name__)
_lock = threading.Lock()
_loaded: dict[tuple[str, ...], Any] = {}


class ModelLoadError(RuntimeError):
    pass


def resolve_path(entry: ModelEntry, settings: Settings) -> str:
    if entry.builtin is not None:
        from workers.tiny_models import ensure_tiny_models

        built = ensure_tiny_models(settings.model_cache / "tiny")
        if entry.builtin not in built:
            raise ModelLoadError(f"no built-in model named {entry.builtin!r}")
        return str(built[entry.builtin])
    return entry.path


def get_model(entry: ModelEntry, settings: Settings) -> Any:
    """The loaded model for ``entry``; entries with the same weights share one copy.

    The key leaves out decoding parameters, which are passed per call: one model with three
    decoding settings (three registry entries, three queues) is loaded once per process.
    An aggregator fuser over the same weights as a generator still loads its own copy.
    """
    key = (entry.role, entry.backend, entry.path, entry.revision,
           repr(sorted(backend_options(entry).items())))
    with _lock:
        model = _loaded.get(key)
        if model is None:
            model = _load(entry, settings)
            _loaded[key] = model
        return model


def _load(entry: ModelEntry, settings: Settings) -> Any:
    path = resolve_path(entry, settings)
    if entry.backend == "null":
        from workers.null_models import create

        return create(entry.role, float(entry.params.get("latency_ms", 0.0)))
    remote = entry.backend == "openai"
    if not remote and entry.builtin is None and not Path(path).exists() \
            and not _looks_like_hub_id(path):
        raise ModelLoadError(f"model {entry.name!r}: path {path} does not exist")
    log.info("model.loading", model=entry.name, role=entry.role, backend=entry.backend,
             path=path)
    try:
        if entry.role == "generator":
            from workers.generation.backends import create_generator

            return create_generator(entry, path)
        if entry.role == "ranker":
            from workers.ranking.pairranker import PairRanker

            return PairRanker.from_pretrained(path)
        if entry.backend == "aggregator":
            from workers.fusion.aggregator import AggregatorFuser

            return AggregatorFuser(path, revision=entry.revision or None)
        from workers.fusion.genfuser import GenFuser

        return GenFuser.from_pretrained(path)
    except ImportError as exc:
        # A missing optional extra: the message says which one to install.
        raise ModelLoadError(f"model {entry.name!r}: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"model {entry.name!r} could not be loaded from {path}: {type(exc).__name__}: {exc}"
        ) from exc


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~"))


def revision_of(model: Any, entry: ModelEntry) -> str:
    return entry.revision or str(getattr(model, "revision", "") or "unknown")
